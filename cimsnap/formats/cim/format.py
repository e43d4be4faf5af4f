"""CimFS on-disk structures: every header, object and table declared once, with pack/unpack.

Implements the structure list of ``../shared/reference/cimfs-format.md`` ("CommonHeader",
"FilesystemHeader", "Region files", "Object-ID files", "Objects"), whose facts come from
microsoft/hcsshim ``internal/cimfs/format/format.go`` at commit e86001a (version 2) and
``pkg/cimfs/format/format.go`` (version 3 constants), jstarks/hcsshim branch ``cim`` (version 1)
and the Windows-made Pinball sample.  All integers are little-endian and every structure is
packed (it is naturally aligned anyway).

Nothing here performs I/O; readers and writers pass bytes in and out, so every structure can be
tested on in-memory buffers.
"""

from __future__ import annotations

import itertools
import struct
import uuid
from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple

from cimsnap.formats.cim.errors import CimFormatError

MAGIC = b"cimfile0"

# Versions a reader accepts (major numbers); what changed in 3.0 is not public (see the README's
# compatibility notes), no structure differs as far as any public source shows.
SUPPORTED_MAJOR_VERSIONS = (1, 2, 3)

# --- The one choice of which format version the writer emits (see the package docstring) ------
# Evidence: hcsshim (HEAD) declares MinSupportedVersion 2.0 and CurrentVersion 3.0 and refuses to
# find the region files (GetCimUsage, DestroyCim) of any image whose major version is outside
# 2..3, so a 1.0 image would be rejected by the Windows-side tooling that manages layer CIMs.
# Version 2's complete structure list is public (hcsshim e86001a); version 3's changes are not.
# 2.0 is therefore the newest version whose every byte we can write from public facts, and it is
# inside hcsshim's accepted range.
WRITER_FORMAT_VERSION = (2, 0)

# Reserved header values the Windows-made samples carry (meaning unknown).  A Windows reader
# demonstrably accepts them, so the writer copies them rather than inventing zeros.
IMAGE_HEADER_RESERVED_BYTE = 1  # CommonHeader.reserved of a .cim (samples: 1 and 2)
IMAGE_HEADER_RESERVED3 = 7  # CommonHeader.reserved3 of a .cim (samples: 7)
FILESYSTEM_HEADER_RESERVED = 7  # FilesystemHeader.reserved (samples: 7)

PAGE_SIZE = 4096  # alignment of objects in a data region
METADATA_ALIGNMENT = 8  # alignment of objects in metadata and small-data regions
FILES_PER_TABLE = 1024
UPCASE_TABLE_UNITS = 0x10000
UPCASE_TABLE_BYTES = 2 * UPCASE_TABLE_UNITS
MAX_REGION_BYTE_OFFSET = (1 << 48) - 1
MAX_STREAM_LENGTH = (1 << 48) - 1
MAX_COMPONENT_UNITS = 0xFF
MAX_PATH_UNITS = 0x7FFF
MAX_EA_NAME_LENGTH = 0xFE
MAX_FULL_EA_LENGTH = 0xFFFF
MAX_REGIONS = 0x10000  # region indices are 16 bits


class FileType(IntEnum):
    IMAGE = 0
    REGION = 1
    OBJECT_ID = 2


class RegionType(IntEnum):
    METADATA = 0
    DATA = 1
    SMALL_DATA = 2


class StreamType(IntEnum):
    DATA = 0
    LINK_TABLE = 1
    PE_IMAGE = 2


# File entry flags (format.go FileFlags) and the Windows FILE_ATTRIBUTE_* they stand for.
FLAG_READONLY = 0x1
FLAG_HIDDEN = 0x2
FLAG_SYSTEM = 0x4
FLAG_ARCHIVE = 0x8
FLAG_SPARSE = 0x10

FILE_ATTRIBUTE_READONLY = 0x1
FILE_ATTRIBUTE_HIDDEN = 0x2
FILE_ATTRIBUTE_SYSTEM = 0x4
FILE_ATTRIBUTE_DIRECTORY = 0x10
FILE_ATTRIBUTE_ARCHIVE = 0x20
FILE_ATTRIBUTE_NORMAL = 0x80
FILE_ATTRIBUTE_SPARSE_FILE = 0x200
FILE_ATTRIBUTE_REPARSE_POINT = 0x400

FLAG_TO_ATTRIBUTE = (
    (FLAG_READONLY, FILE_ATTRIBUTE_READONLY),
    (FLAG_HIDDEN, FILE_ATTRIBUTE_HIDDEN),
    (FLAG_SYSTEM, FILE_ATTRIBUTE_SYSTEM),
    (FLAG_ARCHIVE, FILE_ATTRIBUTE_ARCHIVE),
    (FLAG_SPARSE, FILE_ATTRIBUTE_SPARSE_FILE),
)
# Attributes an image can store (the rest are derived: DIRECTORY, REPARSE_POINT).
STORABLE_ATTRIBUTES = sum(attr for _, attr in FLAG_TO_ATTRIBUTE)


def flags_from_attributes(attributes: int) -> int:
    return sum(flag for flag, attr in FLAG_TO_ATTRIBUTE if attributes & attr)


def attributes_from_flags(flags: int) -> int:
    return sum(attr for flag, attr in FLAG_TO_ATTRIBUTE if flags & flag)


# --- RegionOffset ---------------------------------------------------------------------------


def region_offset(index: int, byte_offset: int) -> int:
    """Encode a RegionOffset: byte offset in bits 0-47, region index in bits 48-63."""
    if not 0 <= index < MAX_REGIONS or not 0 <= byte_offset <= MAX_REGION_BYTE_OFFSET:
        raise ValueError(f"region offset out of range: region {index}, offset {byte_offset}")
    return (index << 48) | byte_offset


def split_region_offset(value: int) -> tuple[int, int]:
    """(region index, byte offset) of a RegionOffset."""
    return value >> 48, value & MAX_REGION_BYTE_OFFSET


def format_region_offset(value: int) -> str:
    index, offset = split_region_offset(value)
    return f"region {index} offset {offset:#x}"


# --- Headers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommonHeader:
    """32 bytes starting every CIM file: magic, header length, file type, version."""

    header_length: int
    file_type: int
    major: int
    minor: int
    reserved: int = 0
    reserved2: int = 0
    reserved3: int = 0

    # magic, header length, type, reserved, reserved2, major, minor, reserved3
    STRUCT = struct.Struct("<8sIBBHIIQ")

    def pack(self) -> bytes:
        return self.STRUCT.pack(
            MAGIC,
            self.header_length,
            self.file_type,
            self.reserved,
            self.reserved2,
            self.major,
            self.minor,
            self.reserved3,
        )

    @classmethod
    def unpack(cls, data: bytes, *, where: str = "") -> CommonHeader:
        if len(data) < cls.STRUCT.size:
            raise CimFormatError(f"truncated header ({len(data)} of {cls.STRUCT.size} bytes)")
        magic, length, ftype, res, res2, major, minor, res3 = cls.STRUCT.unpack_from(data)
        if magic != MAGIC:
            raise CimFormatError(f"not a CIM file (magic {magic!r}){where}", offset=0)
        return cls(length, ftype, major, minor, res, res2, res3)

    def check(self, expected_type: FileType, minimum_length: int) -> None:
        """Raise CimFormatError unless this is a supported header of the expected file type."""
        if self.file_type != expected_type:
            raise CimFormatError(
                f"file type {self.file_type}, expected {expected_type.value} "
                f"({expected_type.name})",
                offset=12,
            )
        if self.major not in SUPPORTED_MAJOR_VERSIONS:
            raise CimFormatError(
                f"unsupported CimFS version {self.major}.{self.minor} "
                f"(this reader knows {', '.join(f'{v}.x' for v in SUPPORTED_MAJOR_VERSIONS)})",
                offset=16,
            )
        if self.header_length < minimum_length:
            raise CimFormatError(
                f"header length {self.header_length} is shorter than {minimum_length}", offset=8
            )


@dataclass(frozen=True)
class RegionSet:
    """A region set: the GUID naming the files ``region_<guid>_<i>`` and how many there are."""

    guid: uuid.UUID
    count: int

    STRUCT = struct.Struct("<16sHHI")  # guid (Windows byte order), count, reserved, reserved1

    def pack(self) -> bytes:
        return self.STRUCT.pack(self.guid.bytes_le, self.count, 0, 0)

    @classmethod
    def unpack_from(cls, data: bytes, offset: int = 0) -> RegionSet:
        guid_le, count, _, _ = cls.STRUCT.unpack_from(data, offset)
        return cls(uuid.UUID(bytes_le=guid_le), count)

    def region_name(self, index: int) -> str:
        return f"region_{self.guid}_{index}"

    def objectid_name(self, index: int) -> str:
        return f"objectid_{self.guid}_{index}"


@dataclass(frozen=True)
class FilesystemHeader:
    """The ``.cim`` file: common header, own region set, filesystem object, parent region sets."""

    common: CommonHeader
    regions: RegionSet
    filesystem_offset: int
    parents: tuple[RegionSet, ...] = ()
    reserved: int = 0

    # common(32) then: region set(24), filesystem offset, reserved u32, reserved1 u16, parent count
    TAIL = struct.Struct("<QIHH")
    SIZE = CommonHeader.STRUCT.size + RegionSet.STRUCT.size + TAIL.size  # 72

    def pack(self) -> bytes:
        out = bytearray(self.common.pack())
        out += self.regions.pack()
        out += self.TAIL.pack(self.filesystem_offset, self.reserved, 0, len(self.parents))
        for parent in self.parents:
            out += parent.pack()
        return bytes(out)

    @classmethod
    def unpack(cls, data: bytes) -> FilesystemHeader:
        common = CommonHeader.unpack(data)
        common.check(FileType.IMAGE, cls.SIZE)
        if len(data) < cls.SIZE:
            raise CimFormatError(f"truncated image header ({len(data)} of {cls.SIZE} bytes)")
        regions = RegionSet.unpack_from(data, CommonHeader.STRUCT.size)
        fs_offset, reserved, _, parent_count = cls.TAIL.unpack_from(
            data, CommonHeader.STRUCT.size + RegionSet.STRUCT.size
        )
        # Parent region sets follow the fixed header (header_length counts only the fixed part).
        start = cls.SIZE
        need = start + parent_count * RegionSet.STRUCT.size
        if len(data) < need:
            raise CimFormatError(
                f"parent count {parent_count} needs {need} bytes, file has {len(data)}", offset=70
            )
        parents = tuple(
            RegionSet.unpack_from(data, start + i * RegionSet.STRUCT.size)
            for i in range(parent_count)
        )
        return cls(common, regions, fs_offset, parents, reserved)


@dataclass(frozen=True)
class RegionHeader:
    """40-byte header of a region file."""

    common: CommonHeader
    index: int
    region_type: int

    TAIL = struct.Struct("<HBBI")  # index, type, reserved, reserved2
    SIZE = CommonHeader.STRUCT.size + TAIL.size  # 40

    def pack(self) -> bytes:
        return self.common.pack() + self.TAIL.pack(self.index, self.region_type, 0, 0)

    @classmethod
    def unpack(cls, data: bytes) -> RegionHeader:
        common = CommonHeader.unpack(data)
        common.check(FileType.REGION, cls.SIZE)
        if len(data) < cls.SIZE:
            raise CimFormatError(f"truncated region header ({len(data)} of {cls.SIZE} bytes)")
        index, rtype, _, _ = cls.TAIL.unpack_from(data, CommonHeader.STRUCT.size)
        return cls(common, index, rtype)


@dataclass(frozen=True)
class ObjectIdHeader:
    """48-byte header of an object-ID file; the entry table follows at ``table_offset``."""

    common: CommonHeader
    index: int
    region_type: int
    table_offset: int
    count: int

    TAIL = struct.Struct("<HBBIII")  # index, region type, reserved, reserved2, table offset, count
    SIZE = CommonHeader.STRUCT.size + TAIL.size  # 48

    def pack(self) -> bytes:
        return self.common.pack() + self.TAIL.pack(
            self.index, self.region_type, 0, 0, self.table_offset, self.count
        )

    @classmethod
    def unpack(cls, data: bytes) -> ObjectIdHeader:
        common = CommonHeader.unpack(data)
        common.check(FileType.OBJECT_ID, cls.SIZE)
        if len(data) < cls.SIZE:
            raise CimFormatError(f"truncated object-ID header ({len(data)} of {cls.SIZE} bytes)")
        index, rtype, _, _, table_offset, count = cls.TAIL.unpack_from(
            data, CommonHeader.STRUCT.size
        )
        return cls(common, index, rtype, table_offset, count)


OBJECT_ID_ENTRY = struct.Struct("<Q24sQ")  # object length, digest, byte offset in the region file
DIGEST_LENGTH = 24


# --- Objects --------------------------------------------------------------------------------

FILESYSTEM_OBJECT = struct.Struct("<QQII")  # upcase offset, FTD offset, FTD length, root FileID
FILE_TABLE_DIRECTORY_ENTRY = struct.Struct("<QHHI")  # table offset, count, entry size, reserved
STREAM = struct.Struct("<QQ")  # data RegionOffset, length(48) | type(8) << 48 | sparse << 56
PE_IMAGE = struct.Struct("<QQIHH")  # data offset, data length, image length, mappings, flags
PE_IMAGE_MAPPING = struct.Struct("<II")  # file offset, delta
LINK_TABLE_HEADER = struct.Struct("<II")  # whole table length, count
COUNTED_LENGTH = struct.Struct("<H")  # prefix of security descriptors and reparse buffers
NAME_OFFSET = struct.Struct("<I")
FILE_ID = struct.Struct("<I")

STREAM_SPARSE_BIT = 1 << 56
PE_IMAGE_FLAG_VALID = 0x1


class Stream(NamedTuple):
    """A stream descriptor: where its data is, how long, which kind, whether it is sparse."""

    data_offset: int
    length: int
    stream_type: int = StreamType.DATA
    sparse: bool = False

    def pack(self) -> bytes:
        if not 0 <= self.length <= MAX_STREAM_LENGTH:
            raise ValueError(f"stream length {self.length} exceeds 48 bits")
        word = self.length | (self.stream_type << 48) | (STREAM_SPARSE_BIT if self.sparse else 0)
        return STREAM.pack(self.data_offset, word)

    @classmethod
    def unpack_from(cls, data: bytes | memoryview, offset: int = 0) -> Stream:
        data_offset, word = STREAM.unpack_from(data, offset)
        return cls._from_word(data_offset, word)

    @classmethod
    def _from_word(cls, data_offset: int, word: int) -> Stream:
        return cls(
            data_offset,
            word & MAX_STREAM_LENGTH,
            (word >> 48) & 0xFF,
            bool(word & STREAM_SPARSE_BIT),
        )


EMPTY_STREAM = Stream(0, 0)


class FileEntry(NamedTuple):
    """One slot of a file table (88 bytes in version 1, 96 from version 2).

    A NamedTuple rather than a dataclass: file tables are unpacked by the thousand."""

    flags: int = 0
    ea_length: int = 0
    reparse_tag: int = 0
    creation_time: int = 0
    last_write_time: int = 0
    change_time: int = 0
    last_access_time: int = 0
    default_stream: Stream = EMPTY_STREAM
    sd_offset: int = 0
    ea_offset: int = 0
    reparse_offset: int = 0
    stream_table_offset: int = 0
    parent_file_id: int = 0  # version >= 2
    base_region_index: int = 0  # version >= 2; meaning not public, written as 0

    def pack(self, entry_size: int = 96) -> bytes:
        # Once per file of an image: the default stream is packed in place (FILE_ENTRY_RAW).
        (flags, ea_len, tag, ct, wt, cht, at, stream, sd, ea, rp, st, pfid, bri) = self
        data_offset, length, stream_type, sparse = stream
        if not 0 <= length <= MAX_STREAM_LENGTH:
            raise ValueError(f"stream length {length} exceeds 48 bits")
        word = length | (stream_type << 48) | (STREAM_SPARSE_BIT if sparse else 0)
        if entry_size == FILE_ENTRY_V1.size:
            return FILE_ENTRY_RAW_V1.pack(
                flags, ea_len, tag, ct, wt, cht, at, data_offset, word, sd, ea, rp, st
            )
        raw = FILE_ENTRY_RAW.pack(
            flags, ea_len, tag, ct, wt, cht, at, data_offset, word, sd, ea, rp, st, pfid, bri, 0
        )
        return raw if entry_size == FILE_ENTRY_RAW.size else raw.ljust(entry_size, b"\0")

    @classmethod
    def unpack(cls, raw: bytes | memoryview) -> FileEntry:
        """Unpack a slot of any entry size: copy min(size, struct size), zero-fill the rest."""
        if len(raw) >= FILE_ENTRY_V2.size:
            fields = FILE_ENTRY_RAW.unpack_from(raw)
        else:
            fields = FILE_ENTRY_RAW.unpack(bytes(raw).ljust(FILE_ENTRY_V2.size, b"\0"))
        (flags, ea_len, tag, ct, wt, cht, at, offset, word, sd, ea, rp, st, pfid, bri, _) = fields
        stream = Stream._from_word(offset, word)
        return cls(flags, ea_len, tag, ct, wt, cht, at, stream, sd, ea, rp, st, pfid, bri)

    @property
    def is_directory(self) -> bool:
        return self.default_stream.stream_type == StreamType.LINK_TABLE

    @property
    def attributes(self) -> int:
        """Windows FILE_ATTRIBUTE_* as a reader derives them (reference "File entry")."""
        attrs = attributes_from_flags(self.flags)
        if self.is_directory:
            attrs |= FILE_ATTRIBUTE_DIRECTORY
        if self.reparse_offset:
            attrs |= FILE_ATTRIBUTE_REPARSE_POINT
        return attrs


# Field lists as in FileEntry; V1 lacks the last three.  RAW splits the default stream in two.
FILE_ENTRY_V1 = struct.Struct("<HHIQQQQ16sQQQQ")
FILE_ENTRY_V2 = struct.Struct("<HHIQQQQ16sQQQQIHH")
FILE_ENTRY_RAW = struct.Struct("<HHIQQQQQQQQQQIHH")
FILE_ENTRY_RAW_V1 = struct.Struct("<HHIQQQQQQQQQQ")


def entry_size_for_version(major: int) -> int:
    return FILE_ENTRY_V1.size if major < 2 else FILE_ENTRY_V2.size


@dataclass(frozen=True)
class PeImage:
    """Descriptor of a PE-image stream: the expanded image's data and the read mappings."""

    data_offset: int
    data_length: int
    image_length: int
    flags: int
    mappings: tuple[tuple[int, int], ...] = field(default_factory=tuple)  # (file offset, delta)

    def delta_for(self, file_offset: int) -> tuple[int, int]:
        """(delta, end of segment) for a read at ``file_offset``: the last mapping at or below."""
        delta = 0
        end = None
        for start, mapping_delta in self.mappings:
            if start > file_offset:
                end = start
                break
            delta = mapping_delta
        return delta, end if end is not None else 1 << 64

    def pack(self) -> bytes:
        head = PE_IMAGE.pack(
            self.data_offset, self.data_length, self.image_length, len(self.mappings), self.flags
        )
        return head + b"".join(PE_IMAGE_MAPPING.pack(o, d) for o, d in self.mappings)


# --- Link tables ----------------------------------------------------------------------------


def pack_link_table(entries: list[tuple[bytes, bytes]]) -> bytes:
    """A link table from (UTF-16LE name, packed value) pairs already in upcase order.

    Layout: length u32 (whole table), count u32, values, name offsets u32 (from the table start),
    name records {u16 length in UTF-16 units, UTF-16LE}.
    """
    count = len(entries)
    value_bytes = b"".join([value for _, value in entries])
    names_start = LINK_TABLE_HEADER.size + len(value_bytes) + NAME_OFFSET.size * count
    records = [COUNTED_LENGTH.pack(len(name) // 2) + name for name, _ in entries]
    offsets = list(itertools.accumulate((len(r) for r in records[:-1]), initial=names_start))
    names = b"".join(records)
    total = names_start + len(names)
    return b"".join(
        (
            LINK_TABLE_HEADER.pack(total, count),
            value_bytes,
            struct.pack(f"<{count}I", *offsets) if count else b"",
            names,
        )
    )


def unpack_link_table(table: bytes, value_size: int) -> list[tuple[bytes, bytes]]:
    """(UTF-16LE name, raw value) pairs of a link table, every field bounds-checked.

    ``table`` is exactly the table's bytes (its length field must match).  Order is preserved;
    sortedness is checked by the caller, which knows the upcase table.
    """
    size = len(table)
    if size < LINK_TABLE_HEADER.size:
        raise CimFormatError(f"link table of {size} bytes is shorter than its header")
    length, count = LINK_TABLE_HEADER.unpack_from(table)
    if length != size:
        raise CimFormatError(f"link table length field {length} does not match its size {size}")
    per_entry = value_size + NAME_OFFSET.size + COUNTED_LENGTH.size
    if count > (size - LINK_TABLE_HEADER.size) // per_entry:
        raise CimFormatError(f"link table count {count} does not fit in {size} bytes")
    values_at = LINK_TABLE_HEADER.size
    offsets_at = values_at + count * value_size
    name_offsets = struct.unpack_from(f"<{count}I", table, offsets_at)
    out = []
    for i, name_at in enumerate(name_offsets):
        if name_at < offsets_at or name_at > size - COUNTED_LENGTH.size:
            raise CimFormatError(f"link table name offset {name_at} of entry {i} out of range")
        units = table[name_at] | table[name_at + 1] << 8
        end = name_at + COUNTED_LENGTH.size + 2 * units
        if end > size:
            raise CimFormatError(f"link table name of entry {i} ({units} units) runs past the end")
        if units == 0:
            raise CimFormatError(f"link table entry {i} has an empty name")
        value = table[values_at + i * value_size : values_at + (i + 1) * value_size]
        out.append((table[name_at + COUNTED_LENGTH.size : end], value))
    return out
