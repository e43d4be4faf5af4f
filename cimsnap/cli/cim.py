"""``cimsnap cim``: inspect, build, extract, mount and destroy CimFS images.

    cimsnap cim ls IMAGE.cim [PATH] [-l] [--json]      list a directory (or one file)
    cimsnap cim stat IMAGE.cim [PATH] [--json]         attributes, times, size, SD, EAs,
                                                       reparse buffer, alternate streams
    cimsnap cim cat IMAGE.cim PATH[:STREAM]            file (or alternate stream) data to stdout
    cimsnap cim usage IMAGE.cim [PATH] [--json]        bytes of the image's files (GetCimUsage),
                                                       or logical bytes under PATH
    cimsnap cim create IMAGE.cim SRCDIR [--parent P.cim] [--deterministic] [--force]
    cimsnap cim extract IMAGE.cim DESTDIR [--no-xattrs]
    cimsnap cim mount IMAGE.cim MOUNTPOINT [--foreground]   read-only FUSE; `fusermount -u` ends it
    cimsnap cim destroy IMAGE.cim [--force]            remove the image's files (not while forked)
    cimsnap cim check IMAGE.cim [--json]               walk everything, verify object-ID tables

PATH is a path inside the image: ``\\`` or ``/`` separators, case-insensitive.  Windows metadata
on host trees and in the mount lives in ``user.cimfs.*`` extended attributes and alternate
streams in ``FILE:STREAM`` sibling files (see ``cimsnap.formats.cim.hostfs``).
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from cimsnap.cli.common import human_size, print_json
from cimsnap.errors import CimsnapError
from cimsnap.formats.cim import CimImage, CimStat
from cimsnap.formats.cim.format import (
    FILE_ATTRIBUTE_ARCHIVE,
    FILE_ATTRIBUTE_DIRECTORY,
    FILE_ATTRIBUTE_HIDDEN,
    FILE_ATTRIBUTE_READONLY,
    FILE_ATTRIBUTE_REPARSE_POINT,
    FILE_ATTRIBUTE_SPARSE_FILE,
    FILE_ATTRIBUTE_SYSTEM,
    StreamType,
)
from cimsnap.formats.cim.metadata import ns_from_filetime

ATTRIBUTE_LETTERS = (
    (FILE_ATTRIBUTE_DIRECTORY, "d"),
    (FILE_ATTRIBUTE_READONLY, "r"),
    (FILE_ATTRIBUTE_HIDDEN, "h"),
    (FILE_ATTRIBUTE_SYSTEM, "s"),
    (FILE_ATTRIBUTE_ARCHIVE, "a"),
    (FILE_ATTRIBUTE_SPARSE_FILE, "p"),
    (FILE_ATTRIBUTE_REPARSE_POINT, "l"),
)
ATTRIBUTE_NAMES = {
    FILE_ATTRIBUTE_READONLY: "READONLY",
    FILE_ATTRIBUTE_HIDDEN: "HIDDEN",
    FILE_ATTRIBUTE_SYSTEM: "SYSTEM",
    FILE_ATTRIBUTE_DIRECTORY: "DIRECTORY",
    FILE_ATTRIBUTE_ARCHIVE: "ARCHIVE",
    FILE_ATTRIBUTE_SPARSE_FILE: "SPARSE_FILE",
    FILE_ATTRIBUTE_REPARSE_POINT: "REPARSE_POINT",
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "cim",
        help="inspect, build, extract, mount and destroy CimFS images",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="cim_command", metavar="SUBCOMMAND")
    sub.required = True

    ls = sub.add_parser("ls", help="list a directory of an image")
    ls.add_argument("image", type=Path)
    ls.add_argument("path", nargs="?", default="\\")
    ls.add_argument("-l", "--long", action="store_true", help="attributes, size, time, FileID")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_ls)

    st = sub.add_parser("stat", help="metadata of a file or directory")
    st.add_argument("image", type=Path)
    st.add_argument("path", nargs="?", default="\\")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_stat)

    cat = sub.add_parser("cat", help="write a file's data (or FILE:STREAM) to stdout")
    cat.add_argument("image", type=Path)
    cat.add_argument("path")
    cat.set_defaults(func=cmd_cat)

    usage = sub.add_parser("usage", help="disk usage of the image's own files (GetCimUsage)")
    usage.add_argument("image", type=Path)
    usage.add_argument(
        "path", nargs="?", help="instead: logical bytes of the files under this directory"
    )
    usage.add_argument("--json", action="store_true")
    usage.set_defaults(func=cmd_usage)

    create = sub.add_parser("create", help="build an image from a host directory")
    create.add_argument("image", type=Path)
    create.add_argument("source", type=Path, metavar="SRCDIR")
    create.add_argument("--parent", type=Path, help="fork this image (same directory)")
    create.add_argument(
        "--deterministic", action="store_true", help="byte-identical output for identical input"
    )
    create.add_argument("--force", action="store_true", help="replace an existing image")
    create.add_argument("--json", action="store_true")
    create.set_defaults(func=cmd_create)

    extract = sub.add_parser("extract", help="write an image's tree to a host directory")
    extract.add_argument("image", type=Path)
    extract.add_argument("destination", type=Path, metavar="DESTDIR")
    extract.add_argument(
        "--no-xattrs", action="store_true", help="do not store Windows metadata as user.cimfs.*"
    )
    extract.add_argument("--json", action="store_true")
    extract.set_defaults(func=cmd_extract)

    mount = sub.add_parser("mount", help="mount read-only with FUSE (fusermount -u to end)")
    mount.add_argument("image", type=Path)
    mount.add_argument("mountpoint", type=Path)
    mount.add_argument("--foreground", action="store_true", help="serve until unmounted")
    mount.set_defaults(func=cmd_mount)

    destroy = sub.add_parser("destroy", help="remove an image's .cim, region and objectid files")
    destroy.add_argument("image", type=Path)
    destroy.add_argument(
        "--force", action="store_true", help="even if forks depend on it (they break)"
    )
    destroy.add_argument("--json", action="store_true")
    destroy.set_defaults(func=cmd_destroy)

    check = sub.add_parser("check", help="read every file, verify the object-ID tables")
    check.add_argument("image", type=Path)
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=cmd_check)


# --- formatting -------------------------------------------------------------------------------


def attribute_letters(attributes: int) -> str:
    return "".join(letter if attributes & bit else "-" for bit, letter in ATTRIBUTE_LETTERS)


def attribute_names(attributes: int) -> list[str]:
    return [name for bit, name in ATTRIBUTE_NAMES.items() if attributes & bit]


def filetime_text(filetime: int) -> str:
    if filetime == 0:
        return "-"
    seconds, rest = divmod(ns_from_filetime(filetime), 10**9)
    try:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    except (OverflowError, OSError, ValueError):
        return str(filetime)
    return f"{stamp}.{rest // 100:07d}Z"


def stat_json(path: str, st: CimStat) -> dict[str, Any]:
    """The documented ``--json`` shape of ``cim stat`` (binary fields in base64)."""

    def b64(raw: bytes | None) -> str | None:
        return None if raw is None else base64.b64encode(raw).decode()

    return {
        "path": path,
        "file_id": st.file_id,
        "type": "directory" if st.is_dir else "file",
        "attributes": st.attributes,
        "attribute_names": attribute_names(st.attributes),
        "size": st.size,
        "creation_time": st.creation_time,
        "last_write_time": st.last_write_time,
        "change_time": st.change_time,
        "last_access_time": st.last_access_time,
        "security_descriptor": b64(st.security_descriptor),
        "extended_attributes": [
            {"name": ea.name.decode("latin-1"), "value": b64(ea.value), "flags": ea.flags}
            for ea in st.eas
        ],
        "reparse_tag": st.reparse_tag,
        "reparse_buffer": b64(st.reparse_buffer),
        "streams": [{"name": s.name, "size": s.size, "sparse": s.sparse} for s in st.streams],
        "stream_type": StreamType(st.stream_type).name.lower(),
        "sparse": st.sparse,
    }


# --- commands ---------------------------------------------------------------------------------


def cmd_ls(args: argparse.Namespace) -> int:
    with CimImage.open(args.image) as image:
        file_id = image.lookup(args.path)
        if image.is_dir(file_id):
            entries = [(e.name, e.file_id) for e in image.scandir(args.path)]
        else:
            entries = [(args.path.replace("/", "\\").rstrip("\\").rsplit("\\", 1)[-1], file_id)]
        rows = [(name, image.stat(fid)) for name, fid in entries]
    if args.json:
        print_json(
            [
                {
                    "name": name,
                    "file_id": st.file_id,
                    "type": "directory" if st.is_dir else "file",
                    "attributes": st.attributes,
                    "size": st.size,
                    "last_write_time": st.last_write_time,
                }
                for name, st in rows
            ]
        )
        return 0
    for name, st in rows:
        shown = name + ("\\" if st.is_dir else "")
        if args.long:
            print(
                f"{attribute_letters(st.attributes)} {st.size:>12} "
                f"{filetime_text(st.last_write_time):>28} {st.file_id:>8} {shown}"
            )
        else:
            print(shown)
    return 0


def cmd_stat(args: argparse.Namespace) -> int:
    with CimImage.open(args.image) as image:
        st = image.stat(args.path)
    if args.json:
        print_json(stat_json(args.path, st))
        return 0
    print(f"path:          {args.path}")
    print(f"file id:       {st.file_id}")
    print(
        f"type:          {'directory' if st.is_dir else 'file'}"
        f"{' (PE image stream)' if st.stream_type == StreamType.PE_IMAGE else ''}"
        f"{' (sparse stream)' if st.sparse else ''}"
    )
    print(f"attributes:    {st.attributes:#010x} {' '.join(attribute_names(st.attributes))}")
    print(f"size:          {st.size}")
    for label, value in (
        ("created", st.creation_time),
        ("last write", st.last_write_time),
        ("changed", st.change_time),
        ("last access", st.last_access_time),
    ):
        print(f"{label + ':':<15}{filetime_text(value)} ({value})")
    sd = st.security_descriptor
    print(f"security desc: {'-' if sd is None else f'{len(sd)} bytes ' + sd.hex()}")
    for ea in st.eas:
        print(
            f"EA:            {ea.name.decode('latin-1')} = {ea.value.hex()} (flags {ea.flags:#x})"
        )
    if st.reparse_buffer is not None:
        print(f"reparse:       tag {st.reparse_tag:#010x}, {st.reparse_buffer.hex()}")
    for stream in st.streams:
        sparse = " (sparse)" if stream.sparse else ""
        print(f"stream:        {stream.name} {stream.size} bytes{sparse}")
    return 0


def cmd_cat(args: argparse.Namespace) -> int:
    with CimImage.open(args.image) as image, image.open(args.path) as handle:
        out = sys.stdout.buffer
        try:
            while chunk := handle.read(1 << 20):
                out.write(chunk)
            out.flush()
        except BrokenPipeError:  # e.g. `| head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    if args.path is not None:
        return _subtree_usage(args)
    with CimImage.open(args.image) as image:
        usage = image.usage()
    data = {
        "total_bytes": usage.total,
        "region_bytes": usage.region_bytes,
        "objectid_bytes": usage.objectid_bytes,
        "image_file_bytes": usage.image_file_bytes,
        "allocated_bytes": usage.allocated_bytes,
        "region_files": list(usage.region_files),
        "objectid_files": list(usage.objectid_files),
    }
    if args.json:
        print_json(data)
    else:
        print(
            f"{usage.total} bytes ({human_size(usage.total)}) in "
            f"{len(usage.region_files)} region and {len(usage.objectid_files)} objectid files; "
            f"{human_size(usage.allocated_bytes)} allocated; .cim {usage.image_file_bytes} bytes"
        )
    return 0


def _subtree_usage(args: argparse.Namespace) -> int:
    """Files, directories and logical bytes (data + alternate streams, hard links once)."""
    seen: set[int] = set()
    files = directories = data = 0
    with CimImage.open(args.image) as image:
        if not image.is_dir(args.path):
            seen.add(image.lookup(args.path))
        else:
            for _, dirs, entries in image.walk(args.path):
                directories += len(dirs)
                seen.update(entry.file_id for entry in entries)
        for file_id in seen:
            st = image.stat(file_id)
            files += 1
            data += st.size + sum(stream.size for stream in st.streams)
    if args.json:
        print_json({"path": args.path, "files": files, "directories": directories, "bytes": data})
    else:
        print(
            f"{args.path}: {files} files, {directories} directories, {data} bytes "
            f"({human_size(data)})"
        )
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    from cimsnap.formats.cim.hostfs import create_from_directory

    started = time.perf_counter()
    stats = create_from_directory(
        args.image,
        args.source,
        parent=args.parent,
        deterministic=args.deterministic,
        overwrite=args.force,
    )
    elapsed = time.perf_counter() - started
    if args.json:
        print_json({"image": str(args.image), "seconds": round(elapsed, 3), **vars(stats)})
    else:
        print(
            f"{args.image}: {stats.files} files, {stats.directories} directories, "
            f"{stats.hard_links} hard links, {stats.streams} streams, "
            f"{human_size(stats.bytes)} in {elapsed:.2f}s"
        )
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from cimsnap.formats.cim.hostfs import extract_image

    started = time.perf_counter()
    with CimImage.open(args.image) as image:
        stats = extract_image(image, args.destination, xattrs=not args.no_xattrs)
    elapsed = time.perf_counter() - started
    if args.json:
        print_json(
            {"destination": str(args.destination), "seconds": round(elapsed, 3), **vars(stats)}
        )
    else:
        print(
            f"{args.destination}: {stats.files} files, {stats.directories} directories, "
            f"{stats.hard_links} hard links, {stats.streams} streams, "
            f"{human_size(stats.bytes)} in {elapsed:.2f}s"
        )
    return 0


def cmd_mount(args: argparse.Namespace) -> int:
    if shutil.which("fusermount3") is None and shutil.which("fusermount") is None:
        raise CimsnapError("fusermount is not installed (Debian package fuse3)")
    from cimsnap.formats.cim.mount import mount_image

    pid = mount_image(args.image, args.mountpoint, foreground=args.foreground)
    if not args.foreground:
        print(
            f"mounted {args.image} read-only at {args.mountpoint} (server pid {pid}); "
            f"unmount with: fusermount -u {args.mountpoint}"
        )
    return 0


def cmd_destroy(args: argparse.Namespace) -> int:
    from cimsnap.formats.cim import destroy_image

    removed = destroy_image(args.image, force=args.force)
    if args.json:
        print_json({"removed": [str(p) for p in removed]})
    else:
        print(f"removed {len(removed)} files of {args.image}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from cimsnap.formats.cim.check import check_object_ids

    files = 0
    data = 0
    with CimImage.open(args.image) as image:
        for _, _, entries in image.walk():
            for entry in entries:
                with image.open(entry.file_id) as handle:
                    while chunk := handle.read(1 << 20):
                        data += len(chunk)
                for stream in image.streams(entry.file_id):
                    data += len(image.read(entry.file_id, stream.name))
                files += 1
        problems = check_object_ids(image)
    if args.json:
        print_json({"files": files, "bytes": data, "problems": problems})
    else:
        for problem in problems:
            print(problem)
        print(
            f"{files} files, {data} bytes read; "
            f"{'object-ID tables OK' if not problems else f'{len(problems)} problems'}"
        )
    return 1 if problems else 0
