"""Reparse buffers, EA buffers, PAX times/FILETIMEs and path rules, against hand-derived
vectors (MS-FSCC 2.1.2.4/2.1.2.5/2.4.15, MS-DTYP 2.3.3, POSIX pax time format)."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cimsnap.formats.wintar import (
    ExtendedAttribute,
    WinTarError,
    decode_ea_buffer,
    decode_reparse_point,
    encode_ea_buffer,
    encode_reparse_point,
    paths,
)
from cimsnap.formats.wintar.reparse import ReparsePoint
from cimsnap.formats.wintar.times import (
    TimeRangeError,
    filetime_from_datetime,
    filetime_from_unix_ns,
    filetime_to_datetime,
    filetime_to_unix_ns,
    format_pax_time,
    parse_pax_time,
)


def u16z(text: str) -> bytes:
    return (text + "\x00").encode("utf-16-le")


# -- reparse buffers -----------------------------------------------------------------------


def test_relative_symlink_buffer() -> None:
    expected = (
        bytes.fromhex("0c0000a0 2400 0000")  # IO_REPARSE_TAG_SYMLINK, 36 data bytes
        + struct.pack("<HHHH", 0, 10, 12, 10)  # substitute at 0, print name after its NUL
        + struct.pack("<I", 1)  # SYMLINK_FLAG_RELATIVE
        + u16z("a.txt")
        + u16z("a.txt")
    )
    assert encode_reparse_point("a.txt") == expected


def test_absolute_symlink_buffer() -> None:
    expected = (
        bytes.fromhex("0c0000a0 2800 0000")
        + struct.pack("<HHHH", 0, 16, 18, 8)
        + struct.pack("<I", 0)
        + u16z("\\??\\C:\\x")
        + u16z("C:\\x")
    )
    assert encode_reparse_point("C:\\x") == expected


def test_mount_point_buffer_has_no_flags() -> None:
    expected = (
        bytes.fromhex("030000a0 3000 0000")  # IO_REPARSE_TAG_MOUNT_POINT, 48 data bytes
        + struct.pack("<HHHH", 0, 22, 24, 14)
        + u16z("\\??\\C:\\Data")
        + u16z("C:\\Data")
    )
    assert encode_reparse_point("C:\\Data", is_mount_point=True) == expected


@pytest.mark.parametrize(
    ("target", "substitute", "relative"),
    [
        ("\\\\srv\\share\\f", "\\??\\UNC\\srv\\share\\f", False),
        ("\\\\?\\Volume{1}\\", "\\??\\Volume{1}\\", False),
        ("d:rel", "\\??\\d:rel", False),
        ("\\rooted", "\\rooted", True),
        ("..\\up", "..\\up", True),
        ("ü\\日本", "ü\\日本", True),
    ],
)
def test_substitute_names(target: str, substitute: str, relative: bool) -> None:
    buf = encode_reparse_point(target)
    sub_off, sub_len, print_off, print_len = struct.unpack_from("<HHHH", buf, 8)
    (flags,) = struct.unpack_from("<I", buf, 16)
    names = buf[20:]
    assert names[sub_off : sub_off + sub_len].decode("utf-16-le") == substitute
    assert names[print_off : print_off + print_len].decode("utf-16-le") == target
    assert flags == (1 if relative else 0)
    assert decode_reparse_point(buf) == ReparsePoint(target, False)


def test_decode_buffer_in_create_symbolic_link_order() -> None:
    """CreateSymbolicLinkW puts the print name first and no NULs."""
    print_name, sub = "C:\\t".encode("utf-16-le"), "\\??\\C:\\t".encode("utf-16-le")
    body = struct.pack("<HHHH", len(print_name), len(sub), 0, len(print_name)) + struct.pack(
        "<I", 0
    )
    buf = struct.pack("<IHH", 0xA000000C, len(body) + len(print_name) + len(sub), 0)
    buf += body + print_name + sub
    assert decode_reparse_point(buf) == ReparsePoint("C:\\t", False)


def test_decode_junction_without_print_name() -> None:
    sub = "\\??\\C:\\Data".encode("utf-16-le")
    body = struct.pack("<HHHH", 0, len(sub), len(sub), 0) + sub
    buf = struct.pack("<IHH", 0xA0000003, len(body), 0) + body
    assert decode_reparse_point(buf) == ReparsePoint("C:\\Data", True)


@settings(deadline=None)
@given(
    st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
        min_size=1,
        max_size=200,
    ),
    st.booleans(),
)
def test_reparse_round_trip(target: str, mount: bool) -> None:
    assert decode_reparse_point(encode_reparse_point(target, mount)) == ReparsePoint(target, mount)


@pytest.mark.parametrize(
    ("buffer", "message"),
    [
        (b"\x0c\x00\x00\xa0", "too short"),
        (struct.pack("<IHH", 0x80000017, 8, 0) + bytes(8), "neither a symlink"),
        (struct.pack("<IHH", 0xA000000C, 100, 0) + bytes(12), "shorter than its"),
        (struct.pack("<IHHHHHH", 0xA0000003, 8, 0, 0, 0, 0, 40), "outside the buffer"),
        (struct.pack("<IHHHHHH", 0xA0000003, 10, 0, 0, 0, 0, 1) + b"xx", "outside the buffer"),
    ],
)
def test_malformed_reparse_buffers(buffer: bytes, message: str) -> None:
    with pytest.raises(WinTarError, match=message):
        decode_reparse_point(buffer)


def test_reparse_target_limits() -> None:
    with pytest.raises(WinTarError, match="too long"):
        encode_reparse_point("x" * 5000)
    with pytest.raises(WinTarError, match="empty or contains NUL"):
        encode_reparse_point("")


# -- EA buffers ----------------------------------------------------------------------------


def test_ea_buffer_layout() -> None:
    eas = [ExtendedAttribute("A", b"1"), ExtendedAttribute("BC", b"", flags=0x80)]
    assert encode_ea_buffer(eas) == bytes.fromhex(
        "0c000000 00 01 0100 41 00 31 00"  # next at 12 (11 bytes padded to 4), "A\0" "1", pad
        "00000000 80 02 0000 4243 00"  # last: next 0, no padding
    )
    assert decode_ea_buffer(encode_ea_buffer(eas)) == eas


@settings(deadline=None)
@given(
    st.lists(
        st.builds(
            ExtendedAttribute,
            st.text(
                st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=255
            ),
            st.binary(max_size=300),
            st.integers(0, 255),
        ),
        max_size=5,
    )
)
def test_ea_buffer_round_trip(eas: list[ExtendedAttribute]) -> None:
    eas = [ea for ea in eas if "=" not in ea.name]
    assert decode_ea_buffer(encode_ea_buffer(eas)) == eas


@pytest.mark.parametrize(
    ("buffer", "message"),
    [
        (b"\x00\x00", "truncated"),
        (struct.pack("<IBBH", 0, 0, 10, 0) + b"abc", "runs past"),
        (struct.pack("<IBBH", 6, 0, 1, 0) + b"a\x00" + bytes(8), "bad NextEntryOffset"),
    ],
)
def test_malformed_ea_buffers(buffer: bytes, message: str) -> None:
    with pytest.raises(WinTarError, match=message):
        decode_ea_buffer(buffer)


def test_ea_limits() -> None:
    with pytest.raises(WinTarError, match="65535"):
        encode_ea_buffer([ExtendedAttribute("X", bytes(70000))])
    with pytest.raises(WinTarError, match="1 to 255"):
        encode_ea_buffer([ExtendedAttribute("X" * 256, b"")])


# -- times ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0"),
        (1_500_000_000, "1.5"),
        (-1_500_000_000, "-1.5"),
        (-1, "-0.000000001"),
        (-2_000_000_000, "-2"),
        (1_350_244_992_023_960_108, "1350244992.023960108"),
        (1_350_244_992_002_396_010, "1350244992.00239601"),
    ],
)
def test_pax_time_format_and_parse(ns: int, text: str) -> None:
    assert format_pax_time(ns) == text
    assert parse_pax_time(text) == ns


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("+5", 5_000_000_000),
        ("5.", 5_000_000_000),
        ("1.1234567891", 1_123_456_789),
        ("-0.5", -500_000_000),
    ],
)
def test_pax_time_parse_variants(text: str, ns: int) -> None:
    assert parse_pax_time(text) == ns


@pytest.mark.parametrize("text", ["", ".5", "1e5", "1.5.5", "abc", "1,5", "1.-5", " 1"])
def test_pax_time_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        parse_pax_time(text)


@settings(deadline=None)
@given(st.integers(-(10**20), 10**20))
def test_pax_time_round_trip(ns: int) -> None:
    assert parse_pax_time(format_pax_time(ns)) == ns


def test_filetime_epochs() -> None:
    assert filetime_from_unix_ns(0) == 116_444_736_000_000_000
    assert filetime_from_datetime(datetime(2000, 1, 1, tzinfo=UTC)) == 125_911_584_000_000_000
    assert filetime_to_datetime(125_911_584_000_000_000) == datetime(2000, 1, 1, tzinfo=UTC)
    assert filetime_from_datetime(datetime(1601, 1, 1)) == 0
    assert filetime_to_unix_ns(0) == -11_644_473_600_000_000_000


def test_filetime_truncates_toward_zero_like_go() -> None:
    assert filetime_from_unix_ns(-150) == 116_444_736_000_000_000 - 1
    assert filetime_from_unix_ns(150) == 116_444_736_000_000_000 + 1


def test_filetime_range() -> None:
    with pytest.raises(TimeRangeError):
        filetime_from_unix_ns(-11_644_473_600_000_000_100)
    with pytest.raises(TimeRangeError):
        filetime_from_unix_ns(10**30)


# -- paths ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("Files", "Files"),
        ("Files/", "Files"),
        ("./Files/a/b", "Files\\a\\b"),
        ("Files\\a\\b", "Files\\a\\b"),
        ("Hives/System_Delta", "Hives\\System_Delta"),
        ("UtilityVM", "UtilityVM"),
        ("UtilityVM/Files/EFI", "UtilityVM\\Files\\EFI"),
        ("Files/ a.b. ", "Files\\ a.b. "),
    ],
)
def test_layer_paths(name: str, path: str) -> None:
    assert paths.layer_path(name) == path


@pytest.mark.parametrize(
    ("name", "result"),
    [
        ("Files/a", None),
        ("Files/a:s", ("Files/a", "s")),
        ("Files/a:s:$DATA", ("Files/a", "s")),
        ("Files/d/a.txt:Zone.Identifier", ("Files/d/a.txt", "Zone.Identifier")),
    ],
)
def test_stream_names(name: str, result: tuple[str, str] | None) -> None:
    assert paths.split_stream_name(name) == result
