"""Truncated, corrupt and odd tar streams: a one-line WinTarError, never a hang or a traceback;
and the tar features the reader must handle (non-seekable input, bounded memory, GNU/PAX
extensions)."""

from __future__ import annotations

import base64
import io
import os
import threading
import tracemalloc

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cimsnap.formats.wintar import (
    EntryKind,
    FileTimes,
    WinMetadata,
    WinTarError,
    WinTarReader,
    WinTarWriter,
    sddl_to_sd,
)
from cimsnap.formats.wintar.tarstream import (
    BLOCK_SIZE,
    TYPE_XGLOBAL,
    TYPE_XHEADER,
    format_pax_record,
    pack_raw_header,
)

TIMES = FileTimes.all_at(132_000_000_000_000_000)
DIR_META = WinMetadata(0x10, TIMES)
FILE_META = WinMetadata(0x20, TIMES, sddl_to_sd("O:SYG:SYD:(A;;FA;;;SY)"))
END = bytes(2 * BLOCK_SIZE)


def valid_tar() -> bytes:
    out = io.BytesIO()
    with WinTarWriter(out) as w:
        w.add_directory("Files", DIR_META)
        w.add_file("Files\\a.txt", FILE_META, b"A" * 1000)
        w.add_stream("Files\\a.txt", "s", b"stream data")
        w.add_file("Files\\b.txt", FILE_META, b"B" * 10)
    return out.getvalue()


def read_all(data: bytes) -> list[tuple[str, str, bytes]]:
    return [
        (e.kind.value, e.stream_path, e.data.read())
        for e in WinTarReader(io.BytesIO(data), "bad.tar")
    ]


def refuse(data: bytes, *fragments: str) -> WinTarError:
    with pytest.raises(WinTarError) as info:
        read_all(data)
    message = str(info.value)
    assert "\n" not in message and message.startswith("bad.tar: "), message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


def pax_entry(records: dict[str, str], name: str, typeflag: str, data: bytes = b"") -> bytes:
    """A hand-built PAX header + entry (records taken verbatim)."""
    body = b"".join(format_pax_record(k, v) for k, v in records.items())
    return raw_entry("PaxHeaders.0/x", TYPE_XHEADER, body) + raw_entry(name, typeflag, data)


def raw_entry(name: str, typeflag: str, data: bytes = b"", **fields: object) -> bytes:
    header = pack_raw_header(name, typeflag, len(data), **fields)  # type: ignore[arg-type]
    return header + data + bytes(-len(data) % BLOCK_SIZE)


FILES_DIR = pax_entry({"MSWINDOWS.fileattr": "16"}, "Files", "5")


def file_with(records: dict[str, str], typeflag: str = "0", data: bytes = b"x") -> bytes:
    return FILES_DIR + pax_entry(records, "Files/f", typeflag, data) + END


def test_valid_tar_reads() -> None:
    assert read_all(valid_tar()) == [
        ("directory", "Files", b""),
        ("file", "Files\\a.txt", b"A" * 1000),
        ("stream", "Files\\a.txt:s", b"stream data"),
        ("file", "Files\\b.txt", b"B" * 10),
    ]


def test_bad_header_checksum() -> None:
    data = bytearray(valid_tar())
    data[1] ^= 0x01
    refuse(bytes(data), "bad tar header checksum", "offset 0x0")


def test_bad_checksum_of_a_later_header() -> None:
    tar = valid_tar()
    last = tar.rfind(b"Files/b.txt")
    data = bytearray(tar)
    data[last + 2] ^= 0x20
    refuse(bytes(data), "bad tar header checksum")


def header_offsets(tar: bytes) -> dict[str, tuple[int, int]]:
    """name -> (offset, size) of every header block, walking the blocks."""
    found = {}
    pos = 0
    while pos < len(tar) and tar[pos : pos + BLOCK_SIZE] != bytes(BLOCK_SIZE):
        name = tar[pos : pos + 100].rstrip(b"\x00").decode()
        size = int(tar[pos + 124 : pos + 135] or b"0", 8)
        found[name] = (pos, size)
        pos += BLOCK_SIZE + -(-size // BLOCK_SIZE) * BLOCK_SIZE
    return found


def test_truncated_inside_a_header_block() -> None:
    tar = valid_tar()
    offset, _ = header_offsets(tar)["Files/a.txt"]
    refuse(tar[: offset + 100], "truncated tar", "header block")


def test_truncated_inside_file_data() -> None:
    tar = valid_tar()
    cut = tar.index(b"A" * 1000) + 500
    refuse(tar[:cut], "truncated tar", "entry data", "Files/a.txt")


def test_truncated_inside_pax_data() -> None:
    tar = valid_tar()
    refuse(tar[: tar.index(b"MSWINDOWS.fileattr") + 5], "truncated tar", "extended header")


def test_stream_ending_without_end_of_archive_marker() -> None:
    refuse(valid_tar()[: -2 * BLOCK_SIZE], "without the end-of-archive marker")


def test_stream_ending_after_an_extended_header() -> None:
    tar = valid_tar()
    offset, size = header_offsets(tar)["Files/PaxHeaders.0/a.txt"]
    header_end = offset + BLOCK_SIZE + -(-size // BLOCK_SIZE) * BLOCK_SIZE
    refuse(tar[:header_end], "stream ends after an extended header")


def test_empty_input() -> None:
    refuse(b"", "without the end-of-archive marker", "offset 0x0")


def test_one_zero_block_is_enough_to_end() -> None:
    assert read_all(valid_tar()[:-BLOCK_SIZE])[-1][1] == "Files\\b.txt"


def test_data_after_a_lone_zero_block() -> None:
    tar = valid_tar()
    data = tar[: -2 * BLOCK_SIZE] + bytes(BLOCK_SIZE) + b"junk".ljust(BLOCK_SIZE, b"\x00")
    refuse(data, "data after a zero block")


def test_garbage_input() -> None:
    refuse(os.urandom(4096), "bad tar header checksum")


def test_absurd_pax_header_size() -> None:
    header = pack_raw_header("PaxHeaders.0/x", TYPE_XHEADER, 2 << 20)
    refuse(header + bytes(BLOCK_SIZE) + END, "exceeds 1048576")


def test_absurd_entry_size_is_truncation_not_a_hang() -> None:
    # A PAX size of 1 EiB on a tiny stream: reading stops at the stream's end.
    refuse(file_with({"size": str(1 << 60), "MSWINDOWS.fileattr": "32"}), "truncated tar")


@pytest.mark.parametrize(
    "record",
    [
        b"abc",  # no length
        b"5 a=b\n",  # length too small
        b"99 a=b\n",  # length past the data
        b"7 ab=c\r",  # not newline-terminated
        b"6 =ab\n",  # empty key
        b"6 abc\n",  # no '='
        b"x6 a=b\n",  # non-digit length
    ],
)
def test_malformed_pax_records(record: bytes) -> None:
    data = raw_entry("PaxHeaders.0/f", TYPE_XHEADER, record) + raw_entry("Files", "5") + END
    refuse(data, "malformed PAX record")


def test_malformed_pax_size() -> None:
    refuse(file_with({"size": "12x"}), "malformed PAX size")


def test_negative_pax_size() -> None:
    refuse(file_with({"size": "-5"}), "invalid entry size")


def test_malformed_pax_mtime() -> None:
    refuse(file_with({"mtime": "yesterday"}), "malformed PAX time")


def test_malformed_creation_time() -> None:
    refuse(file_with({"LIBARCHIVE.creationtime": "1.2.3"}), "LIBARCHIVE.creationtime")


def test_time_before_1601() -> None:
    refuse(file_with({"mtime": "-20000000000"}), "outside the FILETIME range")


def test_non_octal_numeric_field() -> None:
    block = bytearray(pack_raw_header("Files", "5"))
    block[100:108] = b"00007z5\x00"
    chk = sum(block[:148]) + 32 * 8 + sum(block[156:])
    block[148:156] = f"{chk:06o}\x00 ".encode()
    refuse(bytes(block) + END, "not an octal number")


def test_negative_base256_size() -> None:
    block = bytearray(pack_raw_header("Files/f", "0"))
    block[124:136] = b"\xff" * 12  # base-256 -1
    chk = sum(block[:148]) + 32 * 8 + sum(block[156:])
    block[148:156] = f"{chk:06o}\x00 ".encode()
    refuse(bytes(block) + END, "negative entry size")


def test_base256_size_is_read() -> None:
    data = b"hello"
    block = bytearray(pack_raw_header("Files/f", "0", mtime=1_600_000_000))
    block[124:136] = b"\x80" + len(data).to_bytes(11, "big")
    chk = sum(block[:148]) + 32 * 8 + sum(block[156:])
    block[148:156] = f"{chk:06o}\x00 ".encode()
    tar = FILES_DIR + bytes(block) + data.ljust(BLOCK_SIZE, b"\x00") + END
    assert read_all(tar)[1] == ("file", "Files\\f", b"hello")


def test_invalid_raw_security_descriptor_base64() -> None:
    refuse(file_with({"MSWINDOWS.rawsd": "not base64!"}), "MSWINDOWS.rawsd is not valid base64")


def test_structurally_broken_security_descriptor() -> None:
    sd = bytearray(sddl_to_sd("O:SYG:SY"))
    sd[4:8] = (4000).to_bytes(4, "little")  # owner offset past the end
    record = base64.b64encode(bytes(sd)).decode()
    refuse(file_with({"MSWINDOWS.rawsd": record}), "owner offset 4000")


def test_security_descriptor_not_self_relative() -> None:
    sd = bytearray(sddl_to_sd("O:SY"))
    sd[3] = 0  # clear SE_SELF_RELATIVE
    refuse(file_with({"MSWINDOWS.rawsd": base64.b64encode(bytes(sd)).decode()}), "self-relative")


def test_malformed_sddl_record() -> None:
    refuse(file_with({"MSWINDOWS.sd": "O:SYD:(A;;FA;;;SY"}), "unterminated ACE")


def test_sddl_record_is_converted() -> None:
    tar = file_with({"MSWINDOWS.sd": "O:BAG:SYD:(A;;FA;;;SY)", "MSWINDOWS.fileattr": "32"})
    entry = list(WinTarReader(io.BytesIO(tar)))[1]
    assert entry.security_descriptor == sddl_to_sd("O:BAG:SYD:(A;;FA;;;SY)")


def test_raw_sd_wins_over_sddl() -> None:
    raw = sddl_to_sd("O:BU")
    records = {"MSWINDOWS.sd": "O:SY", "MSWINDOWS.rawsd": base64.b64encode(raw).decode()}
    assert list(WinTarReader(io.BytesIO(file_with(records))))[1].security_descriptor == raw


@pytest.mark.parametrize("value", ["0x20", "-1", "4294967296", "", "3 2", "٣"])
def test_malformed_file_attributes(value: str) -> None:
    refuse(file_with({"MSWINDOWS.fileattr": value}), "malformed MSWINDOWS.fileattr")


def test_directory_without_directory_attribute() -> None:
    tar = pax_entry({"MSWINDOWS.fileattr": "32"}, "Files", "5") + END
    refuse(tar, "directory entry without FILE_ATTRIBUTE_DIRECTORY")


def test_file_with_directory_attribute() -> None:
    refuse(file_with({"MSWINDOWS.fileattr": "16"}), "regular file entry with FILE_ATTRIBUTE_DIR")


def test_invalid_ea_name() -> None:
    refuse(file_with({"MSWINDOWS.xattr.BAD\tNAME": "AA=="}), "printable ASCII")


def test_ea_names_colliding_case_insensitively() -> None:
    records = {"MSWINDOWS.xattr.Name": "AA==", "MSWINDOWS.xattr.NAME": "AQ=="}
    refuse(file_with(records), "given twice")


def test_ea_value_not_base64() -> None:
    refuse(file_with({"MSWINDOWS.xattr.X": "%%%"}), "MSWINDOWS.xattr.X is not valid base64")


def test_ea_with_empty_name() -> None:
    refuse(file_with({"MSWINDOWS.xattr.": "AA=="}), "must be 1 to 255")


def test_pax_sparse_file() -> None:
    refuse(file_with({"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}), "sparse files")


def test_gnu_sparse_type() -> None:
    refuse(FILES_DIR + raw_entry("Files/s", "S") + END, "sparse files")


def test_name_not_utf8() -> None:
    block = bytearray(pack_raw_header("Files/xx", "0"))
    block[6:8] = b"\xff\xfe"
    chk = sum(block[:148]) + 32 * 8 + sum(block[156:])
    block[148:156] = f"{chk:06o}\x00 ".encode()
    refuse(FILES_DIR + bytes(block) + END, "not valid UTF-8")


def test_symlink_without_target() -> None:
    refuse(FILES_DIR + pax_entry({}, "Files/l", "2") + END, "symlink without a target")


def test_hard_link_without_target() -> None:
    refuse(FILES_DIR + raw_entry("Files/l", "1") + END, "hard link without a target")


def test_global_pax_header_applies_to_later_entries() -> None:
    glob = raw_entry("g", TYPE_XGLOBAL, format_pax_record("MSWINDOWS.fileattr", "16"))
    tar = glob + raw_entry("Files", "5") + raw_entry("Hives", "5") + END
    assert [e.attributes for e in WinTarReader(io.BytesIO(tar))] == [0x10, 0x10]


def test_gnu_long_names_and_links() -> None:
    long_name = "Files/" + "n" * 150
    long_target = "Files/" + "t" * 150
    tar = (
        FILES_DIR
        + raw_entry("././@LongLink", "L", long_target.encode() + b"\x00")
        + raw_entry("Files/short", "0", b"data")
        + raw_entry("././@LongLink", "L", long_name.encode() + b"\x00")
        + raw_entry("././@LongLink", "K", long_target.encode() + b"\x00")
        + raw_entry("Files/ignored", "1", linkname="Files/ignored-too")
        + END
    )
    entries = list(WinTarReader(io.BytesIO(tar)))
    assert entries[1].path == long_target.replace("/", "\\")
    assert (entries[2].kind, entries[2].path, entries[2].link_target) == (
        EntryKind.HARDLINK,
        long_name.replace("/", "\\"),
        long_target.replace("/", "\\"),
    )


def test_old_style_types() -> None:
    tar = (
        raw_entry("Files/", "\x00")  # V7 directory: regular type with a trailing slash
        + raw_entry("Files/c", "7", b"contiguous")  # contiguous file: a regular file
        + END
    )
    assert read_all(tar) == [("directory", "Files", b""), ("file", "Files\\c", b"contiguous")]


def test_header_only_types_carry_no_data() -> None:
    # A directory header claiming 1000 bytes: like Go, no data is skipped for it.
    tar = pax_entry({"MSWINDOWS.fileattr": "16"}, "Files", "5")
    tar = tar[:-BLOCK_SIZE] + pack_raw_header("Files", "5", 1000) + raw_entry("Hives", "5") + END
    assert [e.path for e in WinTarReader(io.BytesIO(tar))] == ["Files", "Hives"]


def test_entry_data_is_invalid_after_moving_on() -> None:
    reader = iter(WinTarReader(io.BytesIO(valid_tar())))
    next(reader)
    entry = next(reader)
    next(reader)
    with pytest.raises(ValueError, match="no longer readable"):
        entry.data.read()


def test_unread_data_is_skipped() -> None:
    assert [e.stream_path for e in WinTarReader(io.BytesIO(valid_tar()))][-1] == "Files\\b.txt"


class _NonSeekable(io.RawIOBase):
    """A pipe-like stream that returns short reads and cannot seek."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), 77, len(self._data) - self._pos)
        buffer[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def test_non_seekable_stream_with_short_reads() -> None:
    entries = [(e.stream_path, e.data.read()) for e in WinTarReader(_NonSeekable(valid_tar()))]
    assert entries[1] == ("Files\\a.txt", b"A" * 1000)
    assert entries[2] == ("Files\\a.txt:s", b"stream data")


def test_os_pipe_and_zstd_decompressing_stream() -> None:
    compressed = zstandard.ZstdCompressor().compress(valid_tar())
    read_fd, write_fd = os.pipe()

    def feed() -> None:
        with os.fdopen(write_fd, "wb") as w:
            w.write(compressed)

    thread = threading.Thread(target=feed)
    thread.start()
    try:
        with os.fdopen(read_fd, "rb") as pipe:
            stream = zstandard.ZstdDecompressor().stream_reader(pipe)
            got = [(e.stream_path, e.data.read()) for e in WinTarReader(stream, "pipe")]  # type: ignore[arg-type]
    finally:
        thread.join()
    assert [p for p, _ in got] == ["Files", "Files\\a.txt", "Files\\a.txt:s", "Files\\b.txt"]


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def test_memory_stays_bounded_for_large_entries(tmp_path: os.PathLike[str]) -> None:
    size = 96 << 20
    path = os.path.join(tmp_path, "big.tar")
    tracemalloc.start()
    try:
        with open(path, "wb") as f, WinTarWriter(f) as w:
            w.add_directory("Files", DIR_META)
            w.add_file("Files\\big", FILE_META, _Zeros(size), size)  # type: ignore[arg-type]
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        total = 0
        with open(path, "rb") as f:
            for entry in WinTarReader(f):
                while chunk := entry.data.read(1 << 20):
                    total += len(chunk)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size
    assert write_peak < 8 << 20 and read_peak < 8 << 20, (write_peak, read_peak)


def _fuzz_base() -> bytes:
    return valid_tar()


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, 4 * BLOCK_SIZE * 4), st.integers(0, 255)), max_size=6),
    st.one_of(st.none(), st.integers(0, 6 * BLOCK_SIZE)),
)
def test_corrupted_streams_fail_cleanly(flips: list[tuple[int, int]], cut: int | None) -> None:
    data = bytearray(_fuzz_base())
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    if cut is not None:
        del data[cut:]
    try:
        read_all(bytes(data))
    except WinTarError as exc:
        assert "\n" not in str(exc)


def test_repeated_extended_headers_do_not_accumulate() -> None:
    """Like Go, a later x header replaces an earlier one; global records are capped."""
    first = raw_entry("x1", TYPE_XHEADER, format_pax_record("MSWINDOWS.fileattr", "32"))
    second = raw_entry("x2", TYPE_XHEADER, format_pax_record("MSWINDOWS.xattr.A", "AA=="))
    entry = list(
        WinTarReader(io.BytesIO(FILES_DIR + first + second + raw_entry("Files/f", "0") + END))
    )[1]
    assert entry.attributes == 0 and [ea.name for ea in entry.eas] == ["A"]
    big = format_pax_record("k" * 10, "v" * 600_000)
    globals_ = raw_entry("g1", TYPE_XGLOBAL, big) + raw_entry(
        "g2", TYPE_XGLOBAL, format_pax_record("k" * 11, "v" * 600_000)
    )
    refuse(globals_ + END, "global PAX records exceed")
