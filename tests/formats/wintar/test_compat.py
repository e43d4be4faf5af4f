"""Compatibility with the tools that make and read Windows layer tars.

* Go's archive/tar (hcsshim's tar library, via tests/formats/wintar/gotar): our writer's bytes
  equal Go's for the headers go-winio/hcsshim build; Go parses our output; we parse Go's.
* GNU tar and Python's tarfile read our output (names, sizes, link targets, PAX records).
* Layers written by Python's tarfile and by GNU tar (independent producers) parse correctly.
"""

from __future__ import annotations

import base64
import hashlib
import io
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from cimsnap.formats.wintar import (
    EntryKind,
    ExtendedAttribute,
    FileTimes,
    WinMetadata,
    WinTarReader,
    WinTarWriter,
    encode_reparse_point,
    sddl_to_sd,
)
from tests.conftest import require_tool
from tests.formats.wintar import hcsshim_layout as hl
from tests.formats.wintar.conftest import GoTar, read_layer

# 2022-06-18 with 100-ns digits, so every PAX time carries a fraction.
T = (
    133_000_000_000_000_001,
    133_000_000_012_345_670,
    133_000_000_020_000_000,
    133_000_000_030_000_001,
)
TIMES = FileTimes(*T)
SD_FILE = sddl_to_sd("O:BAG:SYD:PAI(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;;0x1200a9;;;BU)")
SD_TI = sddl_to_sd(
    "O:S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464"
    "G:S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464"
    "D:P(A;CIIO;GA;;;CO)(A;;FA;;;S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464)"
)
EAS = {"$KERNEL.PURGE.ESBCACHE": bytes(range(40)), "$CI.CATALOGHINT": b"\x01\x00hint"}
LONG_DIR = "Files/" + "d" * 94 + "/tail-component-that-crosses-100"  # '/' at byte 100
UNICODE_NAME = "Files/Überprüfung-日本語.txt"
DIR = 0x10
ARCHIVE = 0x20
SYSTEM_HIDDEN = 0x6


def _layer_entries() -> list[tuple[str, Any]]:
    """(kind, args) of a realistic layer; used by both writers."""
    win_dir = "Files\\Windows\\System32\\config"
    return [
        ("dir", ("Files", DIR, SD_TI)),
        ("dir", ("Files\\Windows", DIR, SD_TI)),
        ("dir", ("Files\\Windows\\System32", DIR, SD_TI)),
        ("dir", (win_dir, DIR, SD_TI)),
        ("file", (win_dir + "\\SYSTEM", b"regf" + bytes(5000), ARCHIVE, SD_FILE, {})),
        ("file", ("Files\\notepad.exe", b"MZ" * 700, ARCHIVE, SD_FILE, EAS)),
        ("stream", ("Zone.Identifier", b"[ZoneTransfer]\r\nZoneId=3\r\n")),
        ("stream", ("empty", b"")),
        ("file", ("Files\\empty.txt", b"", ARCHIVE | SYSTEM_HIDDEN, None, {})),
        ("symlink", ("Files\\link.txt", "notepad.exe", ARCHIVE, False)),
        ("symlink", ("Files\\Documents", "C:\\Users\\Public\\Documents", DIR, True)),
        ("symlink", ("Files\\dirlink", "..\\Windows", DIR, False)),
        ("hardlink", ("Files\\notepad2.exe", "Files\\notepad.exe", ARCHIVE)),
        ("whiteout", ("Files\\ProgramData\\old.log",)),
        ("dir", (LONG_DIR.replace("/", "\\"), DIR, None)),
        ("file", (LONG_DIR.replace("/", "\\") + "\\x.bin", b"x" * 513, ARCHIVE, None, {})),
        ("file", (UNICODE_NAME.replace("/", "\\"), "ü".encode(), ARCHIVE, None, {})),
        ("dir", ("Hives", DIR, None)),
        ("file", ("Hives\\System_Delta", b"regf" + bytes(100), ARCHIVE, None, {})),
        ("dir", ("UtilityVM", DIR, None)),
        ("dir", ("UtilityVM\\Files", DIR, None)),
        ("file", ("UtilityVM\\Files\\bootmgr", b"boot", ARCHIVE, None, {})),
        ("hardlink", ("UtilityVM\\Files\\bootmgr2", "UtilityVM\\Files\\bootmgr", ARCHIVE)),
    ]


def _write_ours() -> bytes:
    out = io.BytesIO()
    with WinTarWriter(out) as w:
        last_file = ""
        for kind, args in _layer_entries():
            if kind == "dir":
                path, attrs, sd = args
                w.add_directory(path, WinMetadata(attrs, TIMES, sd))
                last_file = path
            elif kind == "file":
                path, data, attrs, sd, eas = args
                ea_list = tuple(ExtendedAttribute(k, v) for k, v in eas.items())
                w.add_file(path, WinMetadata(attrs, TIMES, sd, ea_list), data)
                last_file = path
            elif kind == "stream":
                w.add_stream(last_file, args[0], args[1])
            elif kind == "symlink":
                path, target, attrs, mount = args
                w.add_symlink(path, WinMetadata(attrs, TIMES), target, mount_point=mount)
            elif kind == "hardlink":
                path, target, attrs = args
                w.add_hardlink(path, target, WinMetadata(attrs, TIMES))
            else:
                w.add_whiteout(args[0])
    return out.getvalue()


def _hcsshim_specs() -> list[dict[str, Any]]:
    specs: list[dict[str, Any]] = []
    last: dict[str, Any] | None = None
    for kind, args in _layer_entries():
        if kind == "dir":
            path, attrs, sd = args
            last = hl.dir_header(path, attrs, T, sd)
            specs.append(last)
        elif kind == "file":
            path, data, attrs, sd, eas = args
            last = hl.file_header(path, data, attrs, T, sd, eas)
            specs.append(last)
        elif kind == "stream":
            assert last is not None
            specs.append(hl.stream_header(last, args[0], args[1]))
        elif kind == "symlink":
            path, target, attrs, mount = args
            # The exporter reports the reparse attribute of a symlink.
            specs.append(hl.symlink_header(path, target, attrs | 0x400, T, mount))
        elif kind == "hardlink":
            path, target, attrs = args
            specs.append(hl.hardlink_header(path, target, attrs, T))
        else:
            specs.append(hl.whiteout_header(args[0]))
    return specs


def test_writer_output_equals_go_archive_tar_for_hcsshim_headers(gotar: GoTar) -> None:
    """Same entries through hcsshim's header logic + Go's archive/tar and through our writer."""
    ours = _write_ours()
    theirs = gotar("write", _hcsshim_specs())
    assert len(ours) == len(theirs)
    for offset in range(0, len(ours), 512):
        assert ours[offset : offset + 512] == theirs[offset : offset + 512], f"block at {offset}"


def test_reader_parses_go_written_hcsshim_layer(gotar: GoTar) -> None:
    entries = read_layer(gotar("write", _hcsshim_specs()), "go.tar")
    by_path = {(e.path, e.kind, e.stream_name): (e, data) for e, data in entries}
    system, data = by_path[("Files\\Windows\\System32\\config\\SYSTEM", EntryKind.FILE, None)]
    assert data == b"regf" + bytes(5000)
    assert system.security_descriptor == SD_FILE
    assert system.times == TIMES
    assert system.attributes == ARCHIVE
    exe, _ = by_path[("Files\\notepad.exe", EntryKind.FILE, None)]
    assert dict((ea.name, ea.value) for ea in exe.eas) == EAS
    _, zone_data = by_path[("Files\\notepad.exe", EntryKind.STREAM, "Zone.Identifier")]
    assert zone_data == b"[ZoneTransfer]\r\nZoneId=3\r\n"
    assert by_path[("Files\\notepad.exe", EntryKind.STREAM, "empty")][1] == b""
    link, _ = by_path[("Files\\link.txt", EntryKind.SYMLINK, None)]
    assert link.link_target == "notepad.exe" and not link.is_mount_point
    assert link.reparse == encode_reparse_point("notepad.exe")
    assert link.attributes == ARCHIVE | 0x400
    junction, _ = by_path[("Files\\Documents", EntryKind.SYMLINK, None)]
    assert junction.is_mount_point and junction.link_target == "C:\\Users\\Public\\Documents"
    hard, _ = by_path[("Files\\notepad2.exe", EntryKind.HARDLINK, None)]
    assert hard.link_target == "Files\\notepad.exe"
    assert ("Files\\ProgramData\\old.log", EntryKind.WHITEOUT, None) in by_path
    assert (LONG_DIR.replace("/", "\\") + "\\x.bin", EntryKind.FILE, None) in by_path
    assert by_path[(UNICODE_NAME.replace("/", "\\"), EntryKind.FILE, None)][1] == "ü".encode()
    assert [e.kind for e, _ in entries].count(EntryKind.DIRECTORY) == 8


def test_go_archive_tar_reads_our_output(gotar: GoTar) -> None:
    ours = _write_ours()
    headers = gotar("dump", ours)
    names = [h["name"] for h in headers]
    assert names[:5] == [
        "Files",
        "Files/Windows",
        "Files/Windows/System32",
        "Files/Windows/System32/config",
        "Files/Windows/System32/config/SYSTEM",
    ]
    assert "Files/notepad.exe:Zone.Identifier" in names
    assert LONG_DIR + "/x.bin" in names and UNICODE_NAME in names
    exe = headers[names.index("Files/notepad.exe")]
    assert exe["pax"]["MSWINDOWS.rawsd"] == base64.b64encode(SD_FILE).decode()
    assert exe["pax"]["MSWINDOWS.fileattr"] == str(ARCHIVE)
    assert exe["pax"]["LIBARCHIVE.creationtime"] == hl.pax_time(hl.unix_ns(T[0]))
    assert exe["mtime_ns"] == hl.unix_ns(T[1])
    assert exe["ctime_ns"] == hl.unix_ns(T[2])
    assert exe["atime_ns"] == hl.unix_ns(T[3])
    assert exe["sha256"] == hashlib.sha256(b"MZ" * 700).hexdigest()
    for name, value in EAS.items():
        assert base64.b64decode(exe["pax"]["MSWINDOWS.xattr." + name]) == value
    junction = headers[names.index("Files/Documents")]
    assert (
        junction["typeflag"] == ord("2") and junction["linkname"] == "C:\\Users\\Public\\Documents"
    )
    assert junction["pax"]["MSWINDOWS.mountpoint"] == "1"
    hard = headers[names.index("Files/notepad2.exe")]
    assert hard["typeflag"] == ord("1") and hard["linkname"] == "Files/notepad.exe"
    assert headers[names.index("Files/ProgramData/.wh.old.log")]["format"] == "USTAR"


def test_stream_data_suffix_option_names_streams_as_the_cim_importer_expects(gotar: GoTar) -> None:
    def build(w: WinTarWriter) -> None:
        w.add_directory("Files", WinMetadata(DIR, TIMES))
        w.add_file("Files\\a", WinMetadata(ARCHIVE, TIMES), b"a")
        w.add_stream("Files\\a", "s", b"stream")

    out = io.BytesIO()
    with WinTarWriter(out, stream_data_suffix=True) as w:
        build(w)
    names = [h["name"] for h in gotar("dump", out.getvalue())]
    assert names == ["Files", "Files/a", "Files/a:s:$DATA"]
    entries = read_layer(out.getvalue())
    assert (entries[2][0].kind, entries[2][0].stream_name, entries[2][1]) == (
        EntryKind.STREAM,
        "s",
        b"stream",
    )


def test_gnu_tar_lists_our_output(tmp_path: Path) -> None:
    tar = require_tool("tar")
    path = tmp_path / "layer.tar"
    path.write_bytes(_write_ours())
    proc = subprocess.run(
        [tar, "--list", "--verbose", "--numeric-owner", "-f", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    # GNU tar only notes the vendor records it does not interpret.
    for line in proc.stderr.splitlines():
        assert "Ignoring unknown extended header keyword" in line, line
    lines = proc.stdout.splitlines()
    listing = {line.split(None, 5)[5]: line.split(None, 5) for line in lines}
    assert listing["Files/Windows/System32/config/SYSTEM"][2] == "5004"
    assert listing["Files/notepad.exe:Zone.Identifier"][2] == "26"
    assert "Files/link.txt -> notepad.exe" in listing
    assert "Files/notepad2.exe link to Files/notepad.exe" in listing
    assert LONG_DIR + "/x.bin" in listing and UNICODE_NAME in listing
    assert lines[0].startswith("d") and listing["Files/link.txt -> notepad.exe"][0].startswith("l")


def test_gnu_tar_extracts_our_output(tmp_path: Path) -> None:
    tar = require_tool("tar")
    path = tmp_path / "layer.tar"
    path.write_bytes(_write_ours())
    dest = tmp_path / "out"
    dest.mkdir()
    proc = subprocess.run(
        [tar, "-xf", str(path), "-C", str(dest), "--warning=no-unknown-keyword"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert (dest / "Files/notepad.exe").read_bytes() == b"MZ" * 700
    assert (dest / "Files/notepad.exe:Zone.Identifier").read_bytes().startswith(b"[Zone")
    assert (dest / "Files/notepad2.exe").stat().st_ino == (dest / "Files/notepad.exe").stat().st_ino
    assert (dest / LONG_DIR / "x.bin").read_bytes() == b"x" * 513
    assert (dest / "Files/link.txt").readlink() == Path("notepad.exe")


def test_python_tarfile_reads_our_pax_records() -> None:
    with tarfile.open(fileobj=io.BytesIO(_write_ours())) as tf:
        members = {m.name: m for m in tf}
        exe = members["Files/notepad.exe"]
        assert exe.pax_headers["MSWINDOWS.rawsd"] == base64.b64encode(SD_FILE).decode()
        assert exe.pax_headers["MSWINDOWS.fileattr"] == "32"
        assert float(exe.pax_headers["mtime"]) == pytest.approx(hl.unix_ns(T[1]) / 1e9)
        assert tf.extractfile(exe).read() == b"MZ" * 700  # type: ignore[union-attr]
        assert members["Files/Documents"].issym()
        assert members["Files/Documents"].linkname == "C:\\Users\\Public\\Documents"
        assert members["Files/notepad2.exe"].islnk()
        assert members[UNICODE_NAME].size == 2
        assert members[LONG_DIR].isdir()


def test_reader_parses_layer_written_by_python_tarfile() -> None:
    """An independent PAX producer (Python's tarfile), Windows records set by hand."""
    sd_b64 = base64.b64encode(SD_FILE).decode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:

        def add(info: tarfile.TarInfo, data: bytes = b"") -> None:
            info.size = len(data) if info.isfile() else 0
            tf.addfile(info, io.BytesIO(data) if info.isfile() else None)

        files = tarfile.TarInfo("Files")
        files.type = tarfile.DIRTYPE
        files.pax_headers = {"MSWINDOWS.fileattr": "16"}
        add(files)
        info = tarfile.TarInfo("Files/app.exe")
        info.mtime = 1_600_000_000.25  # type: ignore[assignment]
        info.pax_headers = {
            "MSWINDOWS.fileattr": "33",
            "MSWINDOWS.rawsd": sd_b64,
            "LIBARCHIVE.creationtime": "1500000000.5",
            "MSWINDOWS.xattr.TEST": base64.b64encode(b"ea").decode(),
        }
        add(info, b"binary")
        stream = tarfile.TarInfo("Files/app.exe:Zone.Identifier:$DATA")
        add(stream, b"zone")
        link = tarfile.TarInfo("Files/junction")
        link.type = tarfile.SYMTYPE
        link.linkname = "C:\\ProgramData"
        link.pax_headers = {"MSWINDOWS.fileattr": "1040", "MSWINDOWS.mountpoint": "1"}
        add(link)
        white = tarfile.TarInfo("Files/.wh.gone")
        add(white)
    entries = read_layer(out.getvalue())
    assert [(e.kind, e.path) for e, _ in entries] == [
        (EntryKind.DIRECTORY, "Files"),
        (EntryKind.FILE, "Files\\app.exe"),
        (EntryKind.STREAM, "Files\\app.exe"),
        (EntryKind.SYMLINK, "Files\\junction"),
        (EntryKind.WHITEOUT, "Files\\gone"),
    ]
    app, data = entries[1]
    assert data == b"binary" and app.attributes == 33 and app.security_descriptor == SD_FILE
    assert app.times.last_write == 116_444_736_000_000_000 + 16_000_000_002_500_000
    assert app.times.creation == 116_444_736_000_000_000 + 15_000_000_005_000_000
    assert app.eas == (ExtendedAttribute("TEST", b"ea"),)
    assert entries[2][0].stream_name == "Zone.Identifier" and entries[2][1] == b"zone"
    junction = entries[3][0]
    assert junction.is_mount_point and junction.reparse == encode_reparse_point(
        "C:\\ProgramData", True
    )


@pytest.mark.parametrize("fmt", ["gnu", "pax", "ustar"])
def test_tar_layer_reads_gnu_tar_archives(tmp_path: Path, fmt: str) -> None:
    """GNU tar as an independent producer: long names (GNU 'L' records, PAX path, ustar
    prefix), trailing-slash directory names, hard links, padding to 10 KiB records."""
    tar = require_tool("tar")
    root = tmp_path / "src"
    deep = root / "Files" / ("a" * 60) / ("b" * 60)
    deep.mkdir(parents=True)
    (deep / "file.txt").write_bytes(b"deep data")
    (root / "Files" / "plain.txt").write_bytes(b"p" * 1000)
    (root / "Files" / "hard.txt").hardlink_to(root / "Files" / "plain.txt")
    archive = tmp_path / "layer.tar"
    subprocess.run(
        [tar, f"--format={fmt}", "-cf", str(archive), "-C", str(root), "--sort=name", "Files"],
        check=True,
    )
    with archive.open("rb") as f:
        reader = WinTarReader(f)
        entries = [(e.kind, e.path, e.link_target, e.data.read()) for e in reader]
        # GNU tar pads to 10 KiB records; drain() consumes the padding after the marker.
        padding = reader.drain()
        assert reader.position == archive.stat().st_size
        assert archive.stat().st_size % 10240 == 0 and padding >= 0
    deep_path = "Files\\" + "a" * 60 + "\\" + "b" * 60
    assert (EntryKind.FILE, deep_path + "\\file.txt", None, b"deep data") in entries
    assert (EntryKind.DIRECTORY, deep_path, None, b"") in entries
    links = [e for e in entries if e[0] is EntryKind.HARDLINK]
    files = [e for e in entries if e[1] in ("Files\\plain.txt", "Files\\hard.txt")]
    assert len(links) == 1 and len(files) == 2
    assert {links[0][1], links[0][2]} == {"Files\\plain.txt", "Files\\hard.txt"}


def test_reading_and_rewriting_an_hcsshim_tar_reproduces_its_bytes(gotar: GoTar) -> None:
    original = gotar("write", _hcsshim_specs())
    copy = io.BytesIO()
    with WinTarWriter(copy) as writer:
        for entry in WinTarReader(io.BytesIO(original), "go.tar"):
            writer.add_entry(entry)
    assert copy.getvalue() == original
