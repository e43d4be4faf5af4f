"""The reader's fast paths give what the general code gives: PAX records matched all at once
(with a record-by-record fallback), header checksums summed in C, PAX times parsed without a
regex, PAX data read with its padding in one call; plus numbers too long for int()."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cimsnap.formats.wintar import WinTarError, WinTarReader
from cimsnap.formats.wintar.tarstream import (
    BLOCK_SIZE,
    TYPE_XHEADER,
    TarReader,
    _byte_sum,
    _parse_pax,
    _parse_pax_records,
    format_pax_record,
    pack_raw_header,
)
from cimsnap.formats.wintar.times import parse_pax_time

END = bytes(2 * BLOCK_SIZE)


def raw_entry(name: str, typeflag: str, data: bytes = b"") -> bytes:
    return pack_raw_header(name, typeflag, len(data)) + data + bytes(-len(data) % BLOCK_SIZE)


def pax(body: bytes, name: str, typeflag: str, data: bytes = b"") -> bytes:
    return raw_entry("PaxHeaders.0/x", TYPE_XHEADER, body) + raw_entry(name, typeflag, data)


def records(**values: str) -> bytes:
    return b"".join(format_pax_record(k.replace("_", "."), v) for k, v in values.items())


FILES = pax(records(MSWINDOWS_fileattr="16"), "Files", "5")


def members(tar: bytes) -> list[tuple[str, dict[str, str]]]:
    reader = TarReader(io.BytesIO(tar), "t.tar")
    found = []
    while (member := reader.next()) is not None:
        found.append((member.name, member.pax))
    return found


class _Trickle(io.RawIOBase):
    """Returns at most ``step`` bytes per read (a pipe or a decompressor)."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self._step, len(self._data) - self._pos)
        buffer[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def test_value_with_a_newline_takes_the_record_by_record_path() -> None:
    body = format_pax_record("comment", "two\nlines") + format_pax_record("mtime", "5")
    assert members(pax(body, "Files", "5") + END) == [
        ("Files", {"comment": "two\nlines", "mtime": "5"})
    ]


def test_non_ascii_records_take_the_record_by_record_path() -> None:
    tar = FILES + pax(records(path="Files/é", MSWINDOWS_fileattr="32"), "Files/x", "0") + END
    assert [e.path for e in WinTarReader(io.BytesIO(tar))] == ["Files", "Files\\é"]


def test_a_later_record_of_the_same_key_wins() -> None:
    body = format_pax_record("mtime", "1") + format_pax_record("mtime", "2")
    assert _parse_pax(body, 0, TarReader(io.BytesIO())) == {"mtime": "2"}


@pytest.mark.parametrize(
    "body",
    [
        b"12 a=b\n",  # declared longer than it is
        b"7 a=b\n7 c=d\n" + b"junk",  # trailing bytes
        b"junk" + b"6 a=b\n",  # leading bytes
        b"6 a=b\n7 =cd\n",  # empty key in the second record
        b"9 a\x00b=c\n",  # NUL in a key
        b"13 path=a\x00b\n",  # NUL in a path
    ],
)
def test_malformed_records_are_refused_by_both_paths(body: bytes) -> None:
    reader = TarReader(io.BytesIO(), "t.tar")
    with pytest.raises(WinTarError) as fast:
        _parse_pax(body, 0, reader)
    with pytest.raises(WinTarError) as slow:
        _parse_pax_records(body, 0, reader)
    assert str(fast.value) == str(slow.value)


_keys = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="="))
_values = st.text(st.characters(min_codepoint=0, max_codepoint=0x7F, exclude_characters="\x00"))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_keys.filter(bool), _values), max_size=8))
def test_fast_and_record_by_record_parsing_agree(items: list[tuple[str, str]]) -> None:
    body = b"".join(format_pax_record(k, v) for k, v in items)
    reader = TarReader(io.BytesIO())
    assert _parse_pax(body, 0, reader) == _parse_pax_records(body, 0, reader) == dict(items)


@pytest.mark.parametrize(
    ("key", "message"),
    [("size", "malformed PAX size"), ("mtime", "out of range")],
)
def test_numbers_with_thousands_of_digits_are_errors(key: str, message: str) -> None:
    tar = FILES + pax(records(**{key: "1" * 5000}), "Files/f", "0", b"x") + END
    with pytest.raises(WinTarError, match=message) as info:
        list(WinTarReader(io.BytesIO(tar), "t.tar"))
    assert len(str(info.value)) < 200


def test_record_length_with_thousands_of_digits_is_an_error() -> None:
    tar = FILES + pax(b"9" * 5000 + b" a=b\n", "Files/f", "0", b"x") + END
    with pytest.raises(WinTarError, match="length does not match"):
        list(WinTarReader(io.BytesIO(tar), "t.tar"))


@pytest.mark.parametrize("step", [1, 77, 511, 513, 1000])
def test_extended_headers_read_in_short_pieces(step: int) -> None:
    body = records(MSWINDOWS_fileattr="32", mtime="1.5", comment="x" * 700)
    tar = FILES + pax(body, "Files/f", "0", b"data") + END
    want = [(e.path, e.times, e.data.read()) for e in WinTarReader(io.BytesIO(tar))]
    got = [(e.path, e.times, e.data.read()) for e in WinTarReader(_Trickle(tar, step))]
    assert got == want and got[1][2] == b"data"


@pytest.mark.parametrize("step", [1, 77, 600])
def test_truncated_extended_header_in_short_pieces(step: int) -> None:
    body = records(MSWINDOWS_fileattr="32", comment="x" * 700)
    tar = FILES + pax(body, "Files/f", "0", b"data") + END
    cut = tar.index(b"x" * 700) + 300
    with pytest.raises(WinTarError, match="truncated tar: extended header ends after"):
        list(WinTarReader(_Trickle(tar[:cut], step)))
    padding_cut = tar.index(b"x" * 700) + 700 + 3  # inside the padding after the records
    with pytest.raises(WinTarError, match="extended header padding ends after"):
        list(WinTarReader(_Trickle(tar[:padding_cut], step)))


@settings(deadline=None)
@given(st.binary(min_size=BLOCK_SIZE, max_size=BLOCK_SIZE))
def test_byte_sum_of_a_block(block: bytes) -> None:
    assert _byte_sum(block) == sum(block)


def test_byte_sum_extremes() -> None:
    assert _byte_sum(b"\xff" * BLOCK_SIZE) == 255 * BLOCK_SIZE
    assert _byte_sum(bytes(BLOCK_SIZE)) == 0


@pytest.mark.parametrize("text", ["١٢", "1.٣", "1_000", "1._5", "²", "+-1", "--1", "1.+5"])
def test_pax_time_accepts_ascii_digits_only(text: str) -> None:
    with pytest.raises(ValueError):
        parse_pax_time(text)


@settings(deadline=None)
@given(st.integers(-(10**12), 10**12), st.text("0123456789", max_size=12))
def test_pax_time_fraction_is_truncated_to_nanoseconds(seconds: int, fraction: str) -> None:
    text = f"{seconds}.{fraction}"
    nanos = int(fraction[:9].ljust(9, "0"))
    expected = seconds * 1_000_000_000 + (-nanos if text.startswith("-") else nanos)
    assert parse_pax_time(text) == expected
