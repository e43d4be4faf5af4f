// gotar reads and writes tar streams with Go's archive/tar, the library hcsshim uses, so the
// tests can compare cimsnap's tar encoding with Go's byte for byte and check that Go parses
// what cimsnap writes.  Test tool only; stdlib only, so it builds offline.
//
//	gotar dump  < in.tar    > headers.jsonl   one JSON object per header, then {"end":true}
//	gotar write < spec.json > out.tar         spec: JSON array of headers (see spec below)
package main

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"
)

type spec struct {
	Name     string            `json:"name"`
	Typeflag int               `json:"typeflag"`
	Mode     int64             `json:"mode"`
	Size     int64             `json:"size"`
	Linkname string            `json:"linkname"`
	MtimeNs  *int64            `json:"mtime_ns"`
	AtimeNs  *int64            `json:"atime_ns"`
	CtimeNs  *int64            `json:"ctime_ns"`
	PAX      map[string]string `json:"pax"`
	FormatPAX bool             `json:"format_pax"`
	Data     string            `json:"data"` // base64
}

type dumped struct {
	Name     string            `json:"name"`
	Typeflag int               `json:"typeflag"`
	Mode     int64             `json:"mode"`
	Size     int64             `json:"size"`
	Linkname string            `json:"linkname"`
	MtimeNs  *int64            `json:"mtime_ns"`
	AtimeNs  *int64            `json:"atime_ns"`
	CtimeNs  *int64            `json:"ctime_ns"`
	PAX      map[string]string `json:"pax"`
	Format   string            `json:"format"`
	SHA256   string            `json:"sha256"`
}

func nsOf(t time.Time) *int64 {
	if t.IsZero() {
		return nil
	}
	v := t.UnixNano()
	return &v
}

func timeOf(ns *int64) time.Time {
	if ns == nil {
		return time.Time{}
	}
	return time.Unix(0, *ns)
}

func dump() error {
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	enc := json.NewEncoder(out)
	tr := tar.NewReader(bufio.NewReader(os.Stdin))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return enc.Encode(map[string]bool{"end": true})
		}
		if err != nil {
			return err
		}
		h := sha256.New()
		if _, err := io.Copy(h, tr); err != nil {
			return err
		}
		d := dumped{hdr.Name, int(hdr.Typeflag), hdr.Mode, hdr.Size, hdr.Linkname,
			nsOf(hdr.ModTime), nsOf(hdr.AccessTime), nsOf(hdr.ChangeTime), hdr.PAXRecords,
			hdr.Format.String(), hex.EncodeToString(h.Sum(nil))}
		if err := enc.Encode(d); err != nil {
			return err
		}
	}
}

func write() error {
	var specs []spec
	if err := json.NewDecoder(os.Stdin).Decode(&specs); err != nil {
		return err
	}
	out := bufio.NewWriter(os.Stdout)
	tw := tar.NewWriter(out)
	for _, s := range specs {
		hdr := &tar.Header{
			Name: s.Name, Typeflag: byte(s.Typeflag), Mode: s.Mode, Size: s.Size,
			Linkname: s.Linkname, ModTime: timeOf(s.MtimeNs), AccessTime: timeOf(s.AtimeNs),
			ChangeTime: timeOf(s.CtimeNs), PAXRecords: s.PAX,
		}
		if s.FormatPAX {
			hdr.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		data, err := base64.StdEncoding.DecodeString(s.Data)
		if err != nil {
			return err
		}
		if _, err := tw.Write(data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return out.Flush()
}

func main() {
	var err error
	switch {
	case len(os.Args) == 2 && os.Args[1] == "dump":
		err = dump()
	case len(os.Args) == 2 && os.Args[1] == "write":
		err = write()
	default:
		err = fmt.Errorf("usage: gotar dump|write")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gotar:", err)
		os.Exit(1)
	}
}
