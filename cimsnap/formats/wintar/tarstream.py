"""A streaming POSIX tar reader and writer: ustar headers, PAX extended headers, GNU long names.

This is the container layer under the Windows layer format: it knows tar blocks, not Windows.

Reader (:class:`TarReader`): reads one 512-byte block at a time from any binary stream (a file,
a pipe, a decompressor), merges PAX ``x``/``g`` records and GNU ``L``/``K`` long names into the
entry that follows them, and hands out the entry's data as a bounded stream; memory stays
constant whatever the archive size.  It follows Go's archive/tar reader (which hcsshim uses) in
what it accepts: signed or unsigned header checksums, octal or base-256 numbers, the ustar
``prefix`` field, PAX records overriding header fields, special files capped at 1 MiB
(``maxSpecialFileSize``), header-only types (links, directories) carrying no data whatever their
size field says.  It is stricter where Go is lax: a stream must end with an end-of-archive zero
block, sparse files and device nodes are refused, every short read is an error naming the
offset.  Spec: POSIX.1-2001 pax format (IEEE Std 1003.1, "pax" utility, ustar and pax
interchange formats); GNU tar manual "Basic Tar Format" for the GNU extensions.

Writer (:class:`TarWriter`): emits headers byte for byte as Go's archive/tar Writer does for the
headers hcsshim builds (format choice USTAR-if-possible-else-PAX, ``PaxHeaders.0`` names, sorted
records, octal fields, ``ustar\\0`` ``00`` magic, checksum ``NNNNNN\\0 ``, no record padding
after the two trailer blocks), so tars written here are indistinguishable from hcsshim's.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO, NamedTuple
from zlib import adler32

from cimsnap.formats.wintar.errors import WinTarError
from cimsnap.formats.wintar.times import NS_PER_SECOND, format_pax_time, parse_pax_time

BLOCK_SIZE = 512
ZERO_BLOCK = bytes(BLOCK_SIZE)
# Go archive/tar maxSpecialFileSize: PAX and GNU long-name data above this is refused.
MAX_SPECIAL_FILE_SIZE = 1 << 20
# Largest entry size accepted (Go parses sizes as int64).
MAX_ENTRY_SIZE = (1 << 63) - 1
_COPY_CHUNK = 1 << 20

# ustar header fields (POSIX.1-2001 ustar interchange format): (offset, length).
F_NAME = (0, 100)
F_MODE = (100, 8)
F_UID = (108, 8)
F_GID = (116, 8)
F_SIZE = (124, 12)
F_MTIME = (136, 12)
F_CHKSUM = (148, 8)
F_TYPEFLAG = (156, 1)
F_LINKNAME = (157, 100)
F_MAGIC = (257, 6)
F_VERSION = (263, 2)
F_UNAME = (265, 32)
F_GNAME = (297, 32)
F_DEVMAJOR = (329, 8)
F_DEVMINOR = (337, 8)
F_PREFIX = (345, 155)
# GNU format: access and change times where ustar keeps its prefix.
F_GNU_ATIME = (345, 12)
F_GNU_CTIME = (357, 12)
# star format (ustar magic plus "tar\0" trailer): 131-byte prefix, then times.
F_STAR_PREFIX = (345, 131)
F_STAR_TRAILER = (508, 4)

# The whole ustar header in one unpack: name, mode, uid, gid, size, mtime, chksum, typeflag,
# linkname, magic, version, uname, gname, devmajor, devminor, prefix, padding.
USTAR_HEADER = struct.Struct("100s8s8s8s12s12s8s1s100s6s2s32s32s8s8s155s12s")

MAGIC_USTAR = b"ustar\x00"
VERSION_USTAR = b"00"
MAGIC_GNU = b"ustar "
VERSION_GNU = b" \x00"
TRAILER_STAR = b"tar\x00"

# Type flags.
TYPE_REG = "0"
TYPE_REGA = "\x00"
TYPE_LINK = "1"
TYPE_SYMLINK = "2"
TYPE_CHAR = "3"
TYPE_BLOCK = "4"
TYPE_DIR = "5"
TYPE_FIFO = "6"
TYPE_CONT = "7"
TYPE_XHEADER = "x"
TYPE_XGLOBAL = "g"
TYPE_GNU_LONGNAME = "L"
TYPE_GNU_LONGLINK = "K"
TYPE_GNU_SPARSE = "S"
HEADER_ONLY_TYPES = frozenset({TYPE_LINK, TYPE_SYMLINK, TYPE_CHAR, TYPE_BLOCK, TYPE_DIR, TYPE_FIFO})
ENTRY_TYPES = frozenset({TYPE_REG, TYPE_LINK, TYPE_SYMLINK, TYPE_DIR})

# PAX keywords with a meaning for the header itself (Go archive/tar basicKeys).
PAX_PATH = "path"
PAX_LINKPATH = "linkpath"
PAX_SIZE = "size"
PAX_MTIME = "mtime"
PAX_ATIME = "atime"
PAX_CTIME = "ctime"
PAX_BASIC_KEYS = frozenset(
    {PAX_PATH, PAX_LINKPATH, PAX_SIZE, "uid", "gid", "uname", "gname", PAX_MTIME, PAX_ATIME}
    | {PAX_CTIME}
)
PAX_GNU_SPARSE_PREFIX = "GNU.sparse."
# Name Go's writer gives the extended header of "dir/file": "dir/PaxHeaders.0/file".
PAX_HEADER_DIR = "PaxHeaders.0"

_OCTAL_DIGITS = b"01234567"
_HIGH_BYTES = bytes(range(0x80, 0x100))
_DECIMAL = re.compile(r"[+-]?[0-9]+")
# Keys whose values may not contain NUL (Go parsePAX).
_PAX_NUL_FREE_KEYS = frozenset({PAX_PATH, PAX_LINKPATH, "uname", "gname"})
# One well-formed single-line ASCII PAX record; the fast path of _parse_pax (see there).
_PAX_RECORD = re.compile(r"([0-9]+) ([^=\x00]+)=([^\n]*)\n")
_PAX_SPARSE_MARK = PAX_GNU_SPARSE_PREFIX.encode("ascii")
# A record length has at most this many digits (the data is at most 1 MiB); longer length
# fields are malformed (and int() would refuse to convert thousands of digits).
_MAX_PAX_LENGTH_DIGITS = 19
# Mode, (uid, gid: not used,) size, mtime and checksum as Go's archive/tar and GNU tar write
# them: all octal digits and a NUL (the checksum: six digits, NUL, space).  Headers that match
# need no field-by-field parsing (_parse_number gives the same values for them).
_CANONICAL_NUMBERS = re.compile(
    rb"([0-7]{7})\x00.{16}([0-7]{11})\x00([0-7]{11})\x00([0-7]{6})\x00 ", re.DOTALL
)
# The checksum field counted as eight spaces (POSIX ustar: "as if ... all blanks").
_CHKSUM_AS_BLANKS = 0x20 * F_CHKSUM[1]


def _field(block: bytes, spec: tuple[int, int]) -> bytes:
    return block[spec[0] : spec[0] + spec[1]]


def _cstring(raw: bytes) -> bytes:
    end = raw.find(b"\x00")
    return raw if end < 0 else raw[:end]


def block_padding(size: int) -> int:
    return -size % BLOCK_SIZE


def _byte_sum(block: bytes) -> int:
    """Sum of the bytes of a 512-byte block, computed in C.

    The low 16 bits of Adler-32 are 1 + the sum of the bytes modulo 65521 (RFC 1950 section
    8.2); a 256-byte half sums to at most 65280, so each half's sum is exact.
    """
    return (adler32(block[:256]) & 0xFFFF) + (adler32(block[256:]) & 0xFFFF) - 2


@dataclass(slots=True)
class TarMember:
    """One logical tar entry after PAX and GNU meta headers were merged into it."""

    name: str
    linkname: str
    typeflag: str
    mode: int
    size: int  # bytes of data that follow (0 for header-only types)
    mtime_ns: int
    atime_ns: int | None
    ctime_ns: int | None
    pax: dict[str, str]
    offset: int  # offset of the entry's first header block (its PAX header, if any)
    data_offset: int


class TarReader:
    """Sequential reader of a tar stream; see the module docstring for what it accepts."""

    def __init__(self, fileobj: BinaryIO, name: str | os.PathLike[str] | None = None) -> None:
        self._file = fileobj
        self._read = fileobj.read
        self._readinto: Callable[[memoryview], int | None] | None = getattr(
            fileobj, "readinto", None
        )
        self.name = os.fspath(name) if name is not None else None
        self._pos = 0
        self._remaining = 0
        self._padding = 0
        self._global: dict[str, str] = {}
        self._global_sparse = False
        self._finished = False
        self.member: TarMember | None = None
        # Counts next() calls: data handed out for one entry is invalid once this moves on.
        self.generation = 0

    @property
    def position(self) -> int:
        """Offset in the stream of the next byte this reader will consume."""
        return self._pos

    def error(
        self, message: str, offset: int | None = None, inner: str | None = None
    ) -> WinTarError:
        return WinTarError(message, path=self.name, offset=offset, inner=inner)

    # -- raw input ---------------------------------------------------------------------------

    def _read_exact(
        self, count: int, what: str, inner: str | None = None, first: bytes = b""
    ) -> bytes:
        """``count`` bytes (starting with ``first``, already read but not yet counted)."""
        chunk = first or self._read(count)
        if chunk is not None and len(chunk) == count:  # the usual case: one read suffices
            self._pos += count
            return chunk
        chunks = []
        wanted = count
        while wanted:
            if not chunk:
                raise self.error(
                    f"truncated tar: {what} ends after {count - wanted} of {count} bytes",
                    offset=self._pos,
                    inner=inner,
                )
            chunks.append(chunk)
            self._pos += len(chunk)
            wanted -= len(chunk)
            if wanted:
                chunk = self._read(wanted)
        return b"".join(chunks)

    def _read_block(self) -> bytes | None:
        """The next block, or None when the stream ends exactly here."""
        first = self._read(BLOCK_SIZE)
        if not first:
            return None
        self._pos += len(first)
        if len(first) == BLOCK_SIZE:
            return first
        return first + self._read_exact(BLOCK_SIZE - len(first), "header block")

    def _skip(self, count: int, inner: str | None) -> None:
        while count:
            step = min(count, _COPY_CHUNK)
            self._read_exact(step, "entry data", inner)
            count -= step

    # -- data of the current entry -----------------------------------------------------------

    def read_data(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all if negative) of the current entry's remaining data."""
        if size < 0 or size > self._remaining:
            size = self._remaining
        if size == 0:
            return b""
        inner = self.member.name if self.member else None
        data = self._read_exact(size, "entry data", inner)
        self._remaining -= size
        return data

    def readinto_data(self, buffer: memoryview | bytearray) -> int:
        """Fill ``buffer`` from the current entry's data; 0 at its end."""
        view = buffer if type(buffer) is memoryview else memoryview(buffer)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        size = len(view)
        if size > self._remaining:
            size = self._remaining
            view = view[:size]
        if size == 0:
            return 0
        if self._readinto is None:
            chunk = self._read(size)
            got = len(chunk)
            view[:got] = chunk
        else:
            got = self._readinto(view) or 0
        if not got:
            inner = self.member.name if self.member else None
            raise self.error("truncated tar: entry data ends early", offset=self._pos, inner=inner)
        self._pos += got
        self._remaining -= got
        return int(got)

    @property
    def data_remaining(self) -> int:
        return self._remaining

    def drain(self) -> int:
        """Read the stream to its end (after the archive: record padding); bytes read.

        The archive ends at its zero blocks, but a digest of the whole stream (containerd
        verifies one) needs every byte, e.g. GNU tar's padding to 10 KiB records.
        """
        total = 0
        while chunk := self._read(_COPY_CHUNK):
            total += len(chunk)
        self._pos += total
        return total

    # -- headers -----------------------------------------------------------------------------

    def next(self) -> TarMember | None:
        """Advance to the next entry (skipping unread data); None at the end of the archive."""
        self.generation += 1
        if self._finished:
            return None
        skip = self._remaining + self._padding
        if skip:
            self._skip(skip, self.member.name if self.member else None)
            self._remaining = self._padding = 0
        self.member = None

        local: dict[str, str] = {}
        local_sparse = False
        long_name: str | None = None
        long_link: str | None = None
        first_offset: int | None = None
        while True:
            offset = self._pos
            block = self._read_block()
            if block is None:
                if first_offset is not None:
                    raise self.error(
                        "truncated tar: stream ends after an extended header", offset=offset
                    )
                raise self.error(
                    "truncated tar: stream ends without the end-of-archive marker", offset=offset
                )
            if block == ZERO_BLOCK:
                if first_offset is not None:
                    raise self.error("end-of-archive marker after an extended header", offset)
                self._finish(offset)
                return None
            if first_offset is None:
                first_offset = offset
            header = _parse_block(block, offset, self)
            typeflag = header.typeflag
            if typeflag in (TYPE_XHEADER, TYPE_XGLOBAL):
                data = self._read_special(header, offset)
                records = _parse_pax(data, offset, self)
                # Only keys count; the raw check just spares the key scan for most headers.
                sparse = _PAX_SPARSE_MARK in data and _has_sparse_key(records)
                if typeflag == TYPE_XHEADER:
                    local = records  # a later x header replaces an earlier one, as in Go
                    local_sparse = sparse
                else:
                    self._merge_global(records, offset)
                    first_offset = None
                continue
            if typeflag in (TYPE_GNU_LONGNAME, TYPE_GNU_LONGLINK):
                text = _decode_name(_cstring(self._read_special(header, offset)), offset, self)
                if typeflag == TYPE_GNU_LONGNAME:
                    long_name = text
                else:
                    long_link = text
                continue
            member = self._build_member(
                header, local, local_sparse, long_name, long_link, first_offset
            )
            self.member = member
            self._remaining = member.size
            self._padding = -member.size % BLOCK_SIZE
            return member

    def _merge_global(self, records: dict[str, str], offset: int) -> None:
        """Apply a global (g) header: its records hold for every later entry; empty deletes."""
        for key, value in records.items():
            if value == "":
                self._global.pop(key, None)
            else:
                self._global[key] = value
        if sum(len(k) + len(v) for k, v in self._global.items()) > MAX_SPECIAL_FILE_SIZE:
            raise self.error(f"global PAX records exceed {MAX_SPECIAL_FILE_SIZE} bytes", offset)
        self._global_sparse = _has_sparse_key(self._global)

    def _finish(self, offset: int) -> None:
        """Consume the end-of-archive marker's second block when it is there."""
        second = self._read(BLOCK_SIZE)
        self._pos += len(second)
        if second and len(second) < BLOCK_SIZE:
            second += self._read_exact(BLOCK_SIZE - len(second), "end-of-archive marker")
        if second and second != ZERO_BLOCK:
            raise self.error("data after a zero block where the archive should end", offset)
        self._finished = True

    def _read_special(self, header: _RawHeader, offset: int) -> bytes:
        size = header.size
        if size > MAX_SPECIAL_FILE_SIZE:
            raise self.error(
                f"extended header of {size} bytes exceeds {MAX_SPECIAL_FILE_SIZE}", offset
            )
        padded = size + -size % BLOCK_SIZE
        chunk = self._read(padded) or b""  # data and padding in one read
        if len(chunk) == padded:
            self._pos += padded
            return chunk[:size]
        # A short read: go on piece by piece, so errors say what was cut short.
        if len(chunk) >= size:
            self._pos += size
            self._read_exact(padded - size, "extended header padding", first=chunk[size:])
            return chunk[:size]
        data = self._read_exact(size, "extended header", first=chunk)
        self._read_exact(padded - size, "extended header padding")
        return data

    def _build_member(
        self,
        header: _RawHeader,
        local: dict[str, str],
        local_sparse: bool,
        long_name: str | None,
        long_link: str | None,
        first_offset: int,
    ) -> TarMember:
        pax = {**self._global, **local} if self._global else local
        offset = first_offset
        name = header.name
        if long_name:
            name = long_name
        linkname = header.linkname
        if long_link:
            linkname = long_link
        size = header.size
        mtime_ns = header.mtime * NS_PER_SECOND
        atime_ns = header.atime * NS_PER_SECOND if header.atime else None
        ctime_ns = header.ctime * NS_PER_SECOND if header.ctime else None
        if pax:
            if pax.get(PAX_PATH):
                name = pax[PAX_PATH]
            if pax.get(PAX_LINKPATH):
                linkname = pax[PAX_LINKPATH]
        inner = name

        if local_sparse or self._global_sparse:
            raise self.error("sparse files are not supported", offset, inner)
        typeflag = header.typeflag
        if typeflag == TYPE_REGA:
            typeflag = TYPE_DIR if name.endswith("/") else TYPE_REG
        elif typeflag == TYPE_CONT:
            typeflag = TYPE_REG
        if typeflag == TYPE_GNU_SPARSE:
            raise self.error("sparse files are not supported", offset, inner)
        if typeflag not in ENTRY_TYPES:
            raise self.error(
                f"entry type {typeflag!r} (device, FIFO or unknown) cannot be in a Windows layer",
                offset,
                inner,
            )

        if pax:
            text = pax.get(PAX_SIZE)
            if text:
                size = _pax_int(text, PAX_SIZE, offset, self, inner)
        if size < 0 or size > MAX_ENTRY_SIZE:
            raise self.error(f"invalid entry size {size}", offset, inner)
        if pax:
            # Windows layers usually carry one time in all of these: parse a repeat once.
            mtime_text = pax.get(PAX_MTIME)
            if mtime_text:
                mtime_ns = _pax_time(mtime_text, PAX_MTIME, offset, self, inner)
            text = pax.get(PAX_ATIME)
            if text:
                atime_ns = (
                    mtime_ns
                    if text == mtime_text
                    else _pax_time(text, PAX_ATIME, offset, self, inner)
                )
            text = pax.get(PAX_CTIME)
            if text:
                ctime_ns = (
                    mtime_ns
                    if text == mtime_text
                    else _pax_time(text, PAX_CTIME, offset, self, inner)
                )
        data_size = 0 if typeflag in HEADER_ONLY_TYPES else size
        return TarMember(
            name,
            linkname,
            typeflag,
            header.mode,
            data_size,
            mtime_ns,
            atime_ns,
            ctime_ns,
            pax,
            offset,
            self._pos,
        )


class _RawHeader(NamedTuple):
    name: str
    linkname: str
    typeflag: str
    mode: int
    size: int
    mtime: int
    atime: int
    ctime: int


def _has_sparse_key(records: dict[str, str]) -> bool:
    return any(key.startswith(PAX_GNU_SPARSE_PREFIX) for key in records)


def _parse_number(raw: bytes, what: str, offset: int, reader: TarReader) -> int:
    """A numeric header field: base-256 when the high bit is set, else octal (Go parseNumeric)."""
    if raw[0] & 0x80:
        invert = 0xFF if raw[0] & 0x40 else 0
        value = 0
        for index, byte in enumerate(raw):
            byte ^= invert
            if index == 0:
                byte &= 0x7F
            if value >> 56:
                raise reader.error(f"header field {what} overflows", offset)
            value = value << 8 | byte
        if value >> 63:
            raise reader.error(f"header field {what} overflows", offset)
        return ~value if invert else value
    digits = raw.strip(b" \x00")
    end = digits.find(b"\x00")
    if end >= 0:
        digits = digits[:end]
    if not digits:
        return 0
    if digits.translate(None, _OCTAL_DIGITS):
        raise reader.error(f"header field {what} is not an octal number: {raw!r}", offset)
    return int(digits, 8)


def _decode_name(raw: bytes, offset: int, reader: TarReader) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise reader.error(f"name {raw!r} is not valid UTF-8", offset) from None


def header_checksums(block: bytes) -> tuple[int, int]:
    """(unsigned, signed) sums of a header block with the checksum field read as spaces."""
    start, length = F_CHKSUM
    field = block[start : start + length]
    unsigned = _byte_sum(block) - sum(field) + _CHKSUM_AS_BLANKS
    high = len(block) - len(block.translate(None, _HIGH_BYTES))
    high -= len(field) - len(field.translate(None, _HIGH_BYTES))
    return unsigned, unsigned - 256 * high


def _parse_block(block: bytes, offset: int, reader: TarReader) -> _RawHeader:
    (
        raw_name,
        raw_mode,
        _uid,
        _gid,
        raw_size,
        raw_mtime,
        raw_chksum,
        raw_type,
        raw_linkname,
        magic,
        version,
        _uname,
        _gname,
        _devmajor,
        _devminor,
        raw_prefix,
        _pad,
    ) = USTAR_HEADER.unpack(block)
    numbers = _CANONICAL_NUMBERS.match(block, F_MODE[0])
    if numbers is not None:  # every number as Go and GNU tar write it: one match, no errors
        mode, size, mtime = int(numbers[1], 8), int(numbers[2], 8), int(numbers[3], 8)
        stored = int(numbers[4], 8)
    else:
        mode = size = mtime = -1  # parsed below, in the order their errors are reported
        try:
            stored = _parse_number(raw_chksum, "checksum", offset, reader)
        except WinTarError:
            stored = -1
    unsigned = _byte_sum(block) - sum(raw_chksum) + _CHKSUM_AS_BLANKS
    if stored != unsigned and stored != header_checksums(block)[1]:
        raise reader.error("bad tar header checksum (corrupt or not a tar stream)", offset)
    name = _decode_name(_cstring(raw_name), offset, reader)
    atime = ctime = 0
    if magic == MAGIC_USTAR:
        if block[F_STAR_TRAILER[0] :] == TRAILER_STAR:
            raw_prefix = _field(block, F_STAR_PREFIX)
        if raw_prefix[0]:
            name = _decode_name(_cstring(raw_prefix), offset, reader) + "/" + name
    elif magic == MAGIC_GNU and version == VERSION_GNU:
        atime = _parse_number(_field(block, F_GNU_ATIME), "atime", offset, reader)
        ctime = _parse_number(_field(block, F_GNU_CTIME), "ctime", offset, reader)
    if numbers is None:
        size = _parse_number(raw_size, "size", offset, reader)
        if size < 0:
            raise reader.error(f"negative entry size {size}", offset)
    linkname = _decode_name(_cstring(raw_linkname), offset, reader) if raw_linkname[0] else ""
    if numbers is None:
        mode = _parse_number(raw_mode, "mode", offset, reader)
        mtime = _parse_number(raw_mtime, "mtime", offset, reader)
    return _RawHeader(name, linkname, raw_type.decode("latin-1"), mode, size, mtime, atime, ctime)


def _parse_pax(data: bytes, offset: int, reader: TarReader) -> dict[str, str]:
    """PAX records ``"<len> <key>=<value>\\n"`` (Go parsePAXRecord's rules)."""
    if data.isascii():
        # Fast path: match every record at once.  The matches are accepted only if each one
        # is exactly as long as its length field says and together they cover the data, which
        # is then the same split the record-by-record loop below makes; anything else (a value
        # with a newline, a malformed record) goes through that loop.
        text = data.decode("ascii")
        matches = _PAX_RECORD.findall(text)
        records: dict[str, str] = {}
        covered = 0
        for length_text, key, value in matches:
            if len(length_text) > _MAX_PAX_LENGTH_DIGITS:
                break
            length = int(length_text)
            if length != len(length_text) + len(key) + len(value) + 3:
                break
            covered += length
            records[key] = value
        else:
            if covered == len(text) and not any(
                "\x00" in records[key] for key in _PAX_NUL_FREE_KEYS.intersection(records)
            ):
                return records
    return _parse_pax_records(data, offset, reader)


def _parse_pax_records(data: bytes, offset: int, reader: TarReader) -> dict[str, str]:
    """The record-by-record PAX parser (every record shape; says what is malformed)."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            raise reader.error("malformed PAX record (no length)", offset)
        length_text = data[pos:space]
        if not length_text.isdigit():
            raise reader.error(f"malformed PAX record length {length_text!r}", offset)
        # (More digits than any length within 1 MiB: int() need not convert them.)
        length = int(length_text) if len(length_text) <= _MAX_PAX_LENGTH_DIGITS else len(data) + 1
        end = pos + length
        if length <= len(length_text) + 1 or end > len(data) or data[end - 1] != 0x0A:
            raise reader.error("malformed PAX record (length does not match)", offset)
        record = data[space + 1 : end - 1]
        key_raw, eq, value_raw = record.partition(b"=")
        if not eq or not key_raw or b"\x00" in key_raw:
            raise reader.error("malformed PAX record (bad key)", offset)
        key = key_raw.decode("utf-8", "surrogateescape")
        value = value_raw.decode("utf-8", "surrogateescape")
        if key in _PAX_NUL_FREE_KEYS and "\x00" in value:
            raise reader.error(f"NUL character in PAX {key}", offset)
        records[key] = value
        pos = end
    return records


def _pax_int(text: str, key: str, offset: int, reader: TarReader, inner: str) -> int:
    if _DECIMAL.fullmatch(text) is not None:
        with contextlib.suppress(ValueError):  # (thousands of digits: int() refuses them)
            return int(text)
    shown = text if len(text) <= 40 else f"{text[:40]}... ({len(text)} characters)"
    raise reader.error(f"malformed PAX {key} {shown!r}", offset, inner)


def _pax_time(text: str, key: str, offset: int, reader: TarReader, inner: str) -> int:
    try:
        return parse_pax_time(text)
    except ValueError as exc:
        raise reader.error(f"PAX {key}: {exc}", offset, inner) from None


# -- writer ----------------------------------------------------------------------------------


@dataclass
class TarHeaderSpec:
    """What Go's tar.Header holds for the fields hcsshim sets (others are zero)."""

    name: str
    typeflag: str = TYPE_REG
    mode: int = 0
    size: int = 0
    linkname: str = ""
    mtime_ns: int | None = None  # None: Go's zero time.Time
    atime_ns: int | None = None
    ctime_ns: int | None = None
    pax_records: dict[str, str] = field(default_factory=dict)
    format_pax: bool = False  # Header.Format = FormatPAX (else FormatUnknown)


def format_pax_record(key: str, value: str) -> bytes:
    """One PAX record whose length prefix counts itself (Go formatPAXRecord)."""
    body = f" {key}={value}\n".encode("utf-8", "surrogateescape")
    size = len(body) + len(str(len(body)))
    size = len(body) + len(str(size))
    return str(size).encode() + body


def _is_ascii(text: str) -> bool:
    return all(0 < ord(c) < 0x80 for c in text)


def _to_ascii(text: str) -> str:
    return "".join(c for c in text if 0 < ord(c) < 0x80)


def _fits_octal(length: int, value: int) -> bool:
    return value >= 0 and (length >= 22 or value < 1 << ((length - 1) * 3))


def _split_ustar_path(name: str) -> tuple[str, str] | None:
    """Go splitUSTARPath: split a long ASCII name into (prefix, name) at a slash, if possible."""
    raw = name.encode()
    length = len(raw)
    if length <= F_NAME[1] or not _is_ascii(name):
        return None
    if length > F_PREFIX[1] + 1:
        length = F_PREFIX[1] + 1
    elif raw[length - 1 : length] == b"/":
        length -= 1
    cut = name.rfind("/", 0, length)
    suffix_len = len(raw) - cut - 1
    if cut <= 0 or suffix_len > F_NAME[1] or suffix_len == 0 or cut > F_PREFIX[1]:
        return None
    return name[:cut], name[cut + 1 :]


def _put_string(block: bytearray, spec: tuple[int, int], text: str) -> None:
    """Go formatter.formatString: copy, NUL-terminate if room, drop a trailing slash at the cut."""
    start, length = spec
    raw = text.encode("utf-8")
    block[start : start + length] = raw[:length].ljust(length, b"\x00")
    if len(raw) > length and block[start + length - 1] == ord("/"):
        kept = len(raw[:length].rstrip(b"/"))
        block[start + kept] = 0


def _put_octal(block: bytearray, spec: tuple[int, int], value: int) -> None:
    """Go formatter.formatOctal: zero-padded octal leaving room for a NUL; 0 if it cannot fit."""
    length = spec[1]
    if not _fits_octal(length, value):
        value = 0
    digits = format(value, "o").rjust(length - 1, "0")
    _put_string(block, spec, digits)


def _set_format_and_checksum(block: bytearray) -> None:
    """Go block.setFormat for USTAR and PAX: magic, version, then the checksum."""
    block[F_MAGIC[0] : F_MAGIC[0] + 6] = MAGIC_USTAR
    block[F_VERSION[0] : F_VERSION[0] + 2] = VERSION_USTAR
    start, length = F_CHKSUM
    block[start : start + length] = b" " * length
    checksum = sum(block)
    block[start : start + 7] = format(checksum, "o").rjust(6, "0").encode() + b"\x00"
    block[start + 7] = 0x20


def _round_to_second(ns: int) -> int:
    """Go time.Round(time.Second): nearest second, halves rounded up."""
    return (ns + NS_PER_SECOND // 2) // NS_PER_SECOND * NS_PER_SECOND


def _unix_seconds(ns: int | None) -> int:
    return 0 if ns is None else ns // NS_PER_SECOND


class TarWriter:
    """Sequential tar writer producing Go archive/tar's bytes for the same headers."""

    def __init__(self, fileobj: BinaryIO) -> None:
        self._file = fileobj
        self._remaining = 0
        self._padding = 0
        self._closed = False
        self.position = 0

    def _emit(self, data: bytes | bytearray | memoryview) -> None:
        self._file.write(data)
        self.position += len(data)

    def _flush_entry(self) -> None:
        if self._remaining:
            raise WinTarError(f"tar writer: {self._remaining} bytes of the last entry unwritten")
        if self._padding:
            self._emit(bytes(self._padding))
            self._padding = 0

    def write_header(self, spec: TarHeaderSpec) -> None:
        """Start an entry (Go Writer.WriteHeader); its ``size`` bytes must follow via write()."""
        if self._closed:
            raise WinTarError("tar writer is closed")
        self._flush_entry()
        spec = TarHeaderSpec(**spec.__dict__)
        spec.pax_records = dict(spec.pax_records)
        if spec.typeflag == TYPE_REGA:
            spec.typeflag = TYPE_DIR if spec.name.endswith("/") else TYPE_REG
        if not spec.format_pax:
            if spec.mtime_ns is not None:
                spec.mtime_ns = _round_to_second(spec.mtime_ns)
            spec.atime_ns = spec.ctime_ns = None
        use_ustar, pax_headers = _choose_format(spec)
        if use_ustar:
            self._write_ustar(spec)
        else:
            self._write_pax(spec, pax_headers)
        data_size = 0 if spec.typeflag in HEADER_ONLY_TYPES else spec.size
        self._remaining = data_size
        self._padding = block_padding(data_size)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if len(data) > self._remaining:
            raise WinTarError("tar writer: more data than the entry's size")
        self._emit(data)
        self._remaining -= len(data)

    def copy_from(self, source: BinaryIO | Callable[[int], bytes], size: int) -> None:
        """Copy exactly ``size`` bytes from a stream (or read function) into the entry."""
        read = source if callable(source) else source.read
        left = size
        while left:
            chunk = read(min(left, _COPY_CHUNK))
            if not chunk:
                raise WinTarError(f"tar writer: data source ended {left} bytes short of {size}")
            if len(chunk) > left:
                raise WinTarError("tar writer: data source returned more than asked")
            self.write(chunk)
            left -= len(chunk)

    def close(self) -> None:
        """Finish the last entry and write the two zero blocks of the end-of-archive marker."""
        if self._closed:
            return
        self._flush_entry()
        self._emit(ZERO_BLOCK * 2)
        self._closed = True

    def _template(self, spec: TarHeaderSpec, name: str, linkname: str) -> bytearray:
        """Go templateV7Plus: V7 fields plus uname/gname/devmajor/devminor."""
        block = bytearray(BLOCK_SIZE)
        block[F_TYPEFLAG[0]] = ord(spec.typeflag)
        _put_string(block, F_NAME, name)
        _put_string(block, F_LINKNAME, linkname)
        _put_octal(block, F_MODE, spec.mode)
        _put_octal(block, F_UID, 0)
        _put_octal(block, F_GID, 0)
        _put_octal(block, F_SIZE, spec.size)
        _put_octal(block, F_MTIME, _unix_seconds(spec.mtime_ns))
        _put_string(block, F_UNAME, "")
        _put_string(block, F_GNAME, "")
        _put_octal(block, F_DEVMAJOR, 0)
        _put_octal(block, F_DEVMINOR, 0)
        return block

    def _write_ustar(self, spec: TarHeaderSpec) -> None:
        prefix = ""
        name = spec.name
        split = _split_ustar_path(name)
        if split is not None:
            prefix, name = split
        block = self._template(spec, name, spec.linkname)
        _put_string(block, F_PREFIX, prefix)
        _set_format_and_checksum(block)
        self._emit(block)

    def _write_pax(self, spec: TarHeaderSpec, pax_headers: dict[str, str]) -> None:
        if pax_headers:
            data = b"".join(format_pax_record(k, pax_headers[k]) for k in sorted(pax_headers))
            if len(data) > MAX_SPECIAL_FILE_SIZE:
                raise WinTarError(
                    f"PAX header of {spec.name!r} is {len(data)} bytes (limit "
                    f"{MAX_SPECIAL_FILE_SIZE})"
                )
            directory, _, base = spec.name.rpartition("/")
            pax_name = _clean_join(directory, PAX_HEADER_DIR, base)
            pax_name = _to_ascii(pax_name).encode()[: F_NAME[1]].decode().rstrip("/")
            block = bytearray(BLOCK_SIZE)
            block[F_TYPEFLAG[0]] = ord(TYPE_XHEADER)
            _put_string(block, F_NAME, pax_name)
            _put_octal(block, F_MODE, 0)
            _put_octal(block, F_UID, 0)
            _put_octal(block, F_GID, 0)
            _put_octal(block, F_SIZE, len(data))
            _put_octal(block, F_MTIME, 0)
            _set_format_and_checksum(block)
            self._emit(block)
            self._emit(data)
            self._emit(bytes(block_padding(len(data))))
        block = self._template(spec, _to_ascii(spec.name), _to_ascii(spec.linkname))
        _set_format_and_checksum(block)
        self._emit(block)


def _clean_join(*parts: str) -> str:
    """Go path.Join for relative slash paths: join non-empty parts, then clean."""
    joined = "/".join(p for p in parts if p)
    out: list[str] = []
    for part in joined.split("/"):
        if part in ("", "."):
            continue
        if part == ".." and out and out[-1] != "..":
            out.pop()
        else:
            out.append(part)
    return "/".join(out) or "."


def _choose_format(spec: TarHeaderSpec) -> tuple[bool, dict[str, str]]:
    """Go Header.allowedFormats for our fields: (USTAR chosen?, PAX records if PAX)."""
    ustar_ok = True
    pax_only = False
    prefer_pax = False
    pax_headers: dict[str, str] = {}

    def verify_string(text: str, limit: int, key: str, splittable: bool) -> None:
        nonlocal ustar_ok
        too_long = len(text.encode("utf-8")) > limit
        if not _is_ascii(text) or too_long:
            if not (splittable and _split_ustar_path(text) is not None):
                ustar_ok = False
            pax_headers[key] = text

    verify_string(spec.name, F_NAME[1], PAX_PATH, True)
    verify_string(spec.linkname, F_LINKNAME[1], PAX_LINKPATH, False)
    if not _fits_octal(F_SIZE[1], spec.size):
        ustar_ok = False
        pax_headers[PAX_SIZE] = str(spec.size)

    for ns, key in (
        (spec.mtime_ns, PAX_MTIME),
        (spec.atime_ns, PAX_ATIME),
        (spec.ctime_ns, PAX_CTIME),
    ):
        if ns is None:
            continue
        is_mtime = key == PAX_MTIME
        fits = _fits_octal(F_MTIME[1], ns // NS_PER_SECOND)
        if not is_mtime or not fits:
            ustar_ok = False
        if not is_mtime or not fits or ns % NS_PER_SECOND:
            prefer_pax = True
            pax_headers[key] = format_pax_time(ns)

    if spec.typeflag == TYPE_REG and spec.name.endswith("/"):
        raise WinTarError(f"regular file name {spec.name!r} ends with a slash")
    if spec.pax_records:
        for key, value in spec.pax_records.items():
            if key in pax_headers:
                continue
            if key not in PAX_BASIC_KEYS and not key.startswith(PAX_GNU_SPARSE_PREFIX):
                pax_headers[key] = value
        pax_only = True
    for key, value in pax_headers.items():
        if key == "" or "=" in key or "\x00" in key:
            raise WinTarError(f"invalid PAX record key {key!r}")
        if key in (PAX_PATH, PAX_LINKPATH) and "\x00" in value:
            raise WinTarError(f"NUL character in PAX {key}")
    if spec.format_pax and prefer_pax:
        ustar_ok = False  # PAX was asked for and USTAR would lose precision
    if pax_only:
        ustar_ok = False
    return ustar_ok, pax_headers


def pack_raw_header(
    name: str,
    typeflag: str,
    size: int = 0,
    *,
    mode: int = 0,
    mtime: int = 0,
    linkname: str = "",
    magic: bytes = MAGIC_USTAR,
    version: bytes = VERSION_USTAR,
) -> bytes:
    """One hand-made header block (for tests and tools that build unusual tars)."""
    block = bytearray(BLOCK_SIZE)
    block[F_TYPEFLAG[0]] = ord(typeflag)
    _put_string(block, F_NAME, name)
    _put_string(block, F_LINKNAME, linkname)
    _put_octal(block, F_MODE, mode)
    _put_octal(block, F_UID, 0)
    _put_octal(block, F_GID, 0)
    _put_octal(block, F_SIZE, size)
    _put_octal(block, F_MTIME, mtime)
    block[F_MAGIC[0] : F_MAGIC[0] + 6] = magic
    block[F_VERSION[0] : F_VERSION[0] + 2] = version
    start, length = F_CHKSUM
    block[start : start + length] = b" " * length
    block[start : start + 7] = format(sum(block), "o").rjust(6, "0").encode() + b"\x00"
    block[start + 7] = 0x20
    return bytes(block)
