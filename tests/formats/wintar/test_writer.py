"""The writer refuses what the reader would refuse, and stops after an error."""

from __future__ import annotations

import io

import pytest

from cimsnap.formats.wintar import (
    ExtendedAttribute,
    FileTimes,
    WinMetadata,
    WinTarError,
    WinTarReader,
    WinTarWriter,
)
from cimsnap.formats.wintar.tarstream import TarHeaderSpec, TarReader, TarWriter

TIMES = FileTimes.all_at(133_000_000_000_000_000)
DIR = WinMetadata(0x10, TIMES)
FILE = WinMetadata(0x20, TIMES)


def writer() -> WinTarWriter:
    w = WinTarWriter(io.BytesIO())
    w.add_directory("Files", DIR)
    return w


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("C:\\Files\\x", "drive letter"),
        ("\\Files\\x", "absolute path"),
        ("Files\\..\\x", "'..' component"),
        ("Windows\\x", "outside the layer's top-level"),
        ("Files\\a:b", "':' in a path component"),
        ("Files", "Files must be a directory"),
    ],
)
def test_unsafe_file_paths(path: str, message: str) -> None:
    with pytest.raises(WinTarError, match=message):
        writer().add_file(path, FILE, b"x")


def test_stream_must_follow_its_file() -> None:
    w = writer()
    w.add_file("Files\\a", FILE, b"a")
    w.add_file("Files\\b", FILE, b"b")
    with pytest.raises(WinTarError, match="directly follow its file"):
        w.add_stream("Files\\a", "s", b"x")


def test_stream_name_rules() -> None:
    w = writer()
    w.add_file("Files\\a", FILE, b"a")
    with pytest.raises(WinTarError, match="stream name contains"):
        w.add_stream("Files\\a", "x:y", b"")


def test_hard_link_rules() -> None:
    with pytest.raises(WinTarError, match="hard link target outside"):
        writer().add_hardlink("Files\\l", "Hives\\h", FILE)
    with pytest.raises(WinTarError, match="hard link to itself"):
        writer().add_hardlink("Files\\l", "Files\\l", FILE)


def test_whiteout_rules() -> None:
    with pytest.raises(WinTarError, match="whiteout outside"):
        writer().add_whiteout("Hives\\System_Delta")
    with pytest.raises(WinTarError, match=r"starting with \.wh\."):
        writer().add_whiteout("Files\\.wh.x")
    with pytest.raises(WinTarError, match="opaque whiteout outside"):
        writer().add_opaque_whiteout("Hives")


def test_attribute_consistency() -> None:
    with pytest.raises(WinTarError, match="without FILE_ATTRIBUTE_DIRECTORY"):
        writer().add_directory("Files\\d", FILE)
    with pytest.raises(WinTarError, match="with FILE_ATTRIBUTE_DIRECTORY"):
        writer().add_file("Files\\f", DIR, b"")


def test_metadata_is_checked() -> None:
    with pytest.raises(WinTarError, match="security descriptor"):
        writer().add_file("Files\\f", WinMetadata(0x20, TIMES, b"\x01\x00\x00\x80"), b"")
    eas = (ExtendedAttribute("A", b""), ExtendedAttribute("a", b""))
    with pytest.raises(WinTarError, match="given twice"):
        writer().add_file("Files\\f", WinMetadata(0x20, TIMES, None, eas), b"")
    with pytest.raises(WinTarError, match="not a valid FILETIME"):
        writer().add_file("Files\\f", WinMetadata(0x20, FileTimes.all_at(-1)), b"")


def test_pax_header_over_go_limit() -> None:
    eas = tuple(ExtendedAttribute(f"EA{i}", bytes(60000)) for i in range(20))
    with pytest.raises(WinTarError, match="PAX header"):
        writer().add_file("Files\\f", WinMetadata(0x20, TIMES, None, eas), b"")


def test_short_data_stops_the_writer() -> None:
    w = writer()
    with pytest.raises(WinTarError, match="ended 5 bytes short"):
        w.add_file("Files\\f", FILE, io.BytesIO(b"abc"), 8)  # type: ignore[arg-type]
    with pytest.raises(WinTarError, match="earlier error"):
        w.add_file("Files\\g", FILE, b"")
    w.close()  # writes nothing more after an error


def test_size_must_match_bytes() -> None:
    with pytest.raises(WinTarError, match="does not match"):
        writer().add_file("Files\\f", FILE, b"abc", 4)


def test_sizes_beyond_ustar_get_a_pax_size_record() -> None:
    """8 GiB and more do not fit the 11 octal digits: Go writes a PAX size record and 0."""
    out = io.BytesIO()
    tw = TarWriter(out)
    tw.write_header(TarHeaderSpec("Files/big", size=1 << 33, format_pax=True))
    header = out.getvalue()
    assert b"size=8589934592\n" in header
    assert header[-512 + 124 : -512 + 136] == b"00000000000\x00"
    reader = TarReader(io.BytesIO(header + bytes(512)))
    member = reader.next()
    assert member is not None and member.size == 1 << 33


def test_forward_slashes_are_accepted_by_the_writer() -> None:
    out = io.BytesIO()
    with WinTarWriter(out) as w:
        w.add_directory("Files/", DIR)
        w.add_file("Files/x", FILE, b"1")
    assert [e.path for e in WinTarReader(io.BytesIO(out.getvalue()))] == ["Files", "Files\\x"]
