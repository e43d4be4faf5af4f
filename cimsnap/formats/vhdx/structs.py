"""On-disk structures of [MS-VHDX] v1.0, each declared once with its constants.

Sections of the specification implemented here (numbers as in [MS-VHDX]):

* 2.1   layout: 1 MiB header section, 1 MiB-aligned regions, 64 KiB structure alignment.
* 2.2.1 file type identifier (``vhdxfile`` + UTF-16 creator).
* 2.2.2 headers (``head``, CRC-32C, sequence number, FileWriteGuid/DataWriteGuid/LogGuid).
* 2.2.3 region table (``regi``) and its entries.
* 2.3.1 log entry header (``loge``), 2.3.1.2 zero descriptor, 2.3.1.3 data descriptor,
  2.3.1.4 data sector.
* 2.5   BAT entries, payload and sector-bitmap block states, chunk ratio.
* 2.6   metadata table (``metadata``), its entries and the system metadata items: file
  parameters, virtual disk size, virtual disk ID (page 83), logical and physical sector size,
  parent locator (2.6.2.6) with its key/value entries.

Every structure has a ``pack()`` and an ``unpack()``; ``unpack`` raises :class:`VhdxError` when the
bytes cannot be that structure.  All integers are little-endian; GUIDs are stored in Microsoft's
mixed-endian layout (``uuid.UUID.bytes_le``).
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field

import crc32c as _crc32c

from cimsnap.formats.vhdx.errors import VhdxError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

# --- 2.1 layout -----------------------------------------------------------------------------
FILE_ID_OFFSET = 0
HEADER_OFFSETS = (64 * KiB, 128 * KiB)
REGION_TABLE_OFFSETS = (192 * KiB, 256 * KiB)
HEADER_SECTION_SIZE = 1 * MiB
REGION_ALIGNMENT = 1 * MiB  # regions, log, payload and sector-bitmap blocks
HEADER_SIZE = 4 * KiB
REGION_TABLE_SIZE = 64 * KiB
METADATA_TABLE_SIZE = 64 * KiB
LOG_SECTOR_SIZE = 4 * KiB
SECTOR_BITMAP_BLOCK_SIZE = 1 * MiB

# Limits from the specification.
MIN_BLOCK_SIZE = 1 * MiB
MAX_BLOCK_SIZE = 256 * MiB
MAX_VIRTUAL_DISK_SIZE = 64 * TiB
MAX_REGION_ENTRIES = 2047
MAX_METADATA_ENTRIES = 2047
MAX_METADATA_ITEM_SIZE = 1 * MiB
SECTOR_SIZES = (512, 4096)
# 2^23 sectors are described by one 1 MiB sector bitmap block: the chunk.
SECTORS_PER_CHUNK = 1 << 23

# --- signatures -----------------------------------------------------------------------------
FILE_SIGNATURE = b"vhdxfile"
HEADER_SIGNATURE = b"head"
REGION_TABLE_SIGNATURE = b"regi"
METADATA_SIGNATURE = b"metadata"
LOG_ENTRY_SIGNATURE = b"loge"
ZERO_DESCRIPTOR_SIGNATURE = b"zero"
DATA_DESCRIPTOR_SIGNATURE = b"desc"
DATA_SECTOR_SIGNATURE = b"data"

# --- GUIDs ----------------------------------------------------------------------------------
BAT_REGION_GUID = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_REGION_GUID = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")

FILE_PARAMETERS_GUID = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
VIRTUAL_DISK_SIZE_GUID = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
VIRTUAL_DISK_ID_GUID = uuid.UUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
LOGICAL_SECTOR_SIZE_GUID = uuid.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
PHYSICAL_SECTOR_SIZE_GUID = uuid.UUID("CDA348C7-445D-4471-9CC9-E9885251C556")
PARENT_LOCATOR_GUID = uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
VHDX_PARENT_LOCATOR_TYPE = uuid.UUID("B04AEFB7-D19E-4A81-B789-25B8E9445913")

ZERO_GUID = uuid.UUID(int=0)

# --- 2.5 BAT --------------------------------------------------------------------------------
PAYLOAD_BLOCK_NOT_PRESENT = 0
PAYLOAD_BLOCK_UNDEFINED = 1
PAYLOAD_BLOCK_ZERO = 2
PAYLOAD_BLOCK_UNMAPPED = 3
PAYLOAD_BLOCK_FULLY_PRESENT = 6
PAYLOAD_BLOCK_PARTIALLY_PRESENT = 7
PAYLOAD_STATES = {
    0: "not present",
    1: "undefined",
    2: "zero",
    3: "unmapped",
    6: "fully present",
    7: "partially present",
}
SB_BLOCK_NOT_PRESENT = 0
SB_BLOCK_PRESENT = 6
BAT_ENTRY_SIZE = 8
BAT_STATE_MASK = 0x7
BAT_RESERVED_MASK = 0xFFFF8  # bits 3-19
BAT_OFFSET_SHIFT = 20  # FileOffsetMB occupies bits 20-63


def bat_entry(state: int, file_offset: int) -> int:
    """Pack a BAT entry; ``file_offset`` must be 1 MiB aligned."""
    return (file_offset >> BAT_OFFSET_SHIFT) << BAT_OFFSET_SHIFT | state


def bat_state(entry: int) -> int:
    return entry & BAT_STATE_MASK


def bat_offset(entry: int) -> int:
    return (entry >> BAT_OFFSET_SHIFT) << BAT_OFFSET_SHIFT


# --- metadata entry flags (2.6.1.2) ---------------------------------------------------------
META_IS_USER = 1 << 0
META_IS_VIRTUAL_DISK = 1 << 1
META_IS_REQUIRED = 1 << 2

# File parameters flags (2.6.2.1).
FP_LEAVE_BLOCKS_ALLOCATED = 1 << 0
FP_HAS_PARENT = 1 << 1

# Parent locator keys (2.6.2.6.1).
KEY_PARENT_LINKAGE = "parent_linkage"
KEY_PARENT_LINKAGE2 = "parent_linkage2"
KEY_RELATIVE_PATH = "relative_path"
KEY_VOLUME_PATH = "volume_path"
KEY_ABSOLUTE_WIN32_PATH = "absolute_win32_path"


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC-32C (Castagnoli) as [MS-VHDX] uses it."""
    return int(_crc32c.crc32c(data))


def checksum_with_field_zeroed(data: bytes | bytearray, field_offset: int) -> int:
    """CRC-32C of ``data`` with the 4-byte checksum field at ``field_offset`` taken as zero."""
    buf = bytearray(data)
    buf[field_offset : field_offset + 4] = b"\0\0\0\0"
    return crc32c(buf)


def guid_from(raw: bytes) -> uuid.UUID:
    return uuid.UUID(bytes_le=bytes(raw))


def format_linkage(guid: uuid.UUID) -> str:
    """A GUID as a parent locator value: ``{lower-case GUID}``.

    Lower case because libvhdi (built against Windows-made images) parses the value with
    lower-case hex digits only and silently ignores an upper-case one.
    """
    return "{" + str(guid) + "}"


def parse_linkage(text: str) -> uuid.UUID | None:
    """Parse ``{GUID}`` (braces optional, any case); None when it is not a GUID."""
    try:
        return uuid.UUID(text.strip().strip("{}"))
    except ValueError:
        return None


# --- 2.2.1 file type identifier -------------------------------------------------------------
CREATOR_SIZE = 512


@dataclass
class FileIdentifier:
    creator: str = ""

    _FMT = struct.Struct("<8s512s")

    def pack(self) -> bytes:
        raw = self.creator.encode("utf-16-le")[: CREATOR_SIZE - 2]
        return self._FMT.pack(FILE_SIGNATURE, raw)

    @classmethod
    def unpack(cls, data: bytes) -> FileIdentifier:
        if len(data) < cls._FMT.size:
            raise VhdxError("file is too short for a VHDX file type identifier", offset=0)
        signature, raw = cls._FMT.unpack_from(data)
        if signature != FILE_SIGNATURE:
            raise VhdxError(f"not a VHDX file (signature {signature!r})", offset=0)
        text = raw.decode("utf-16-le", errors="replace")
        return cls(creator=text.split("\0", 1)[0])


# --- 2.2.2 header ---------------------------------------------------------------------------
@dataclass
class Header:
    sequence_number: int
    file_write_guid: uuid.UUID
    data_write_guid: uuid.UUID
    log_guid: uuid.UUID
    log_length: int
    log_offset: int
    log_version: int = 0
    version: int = 1

    # Signature, Checksum, SequenceNumber, FileWriteGuid, DataWriteGuid, LogGuid, LogVersion,
    # Version, LogLength, LogOffset; 4016 reserved bytes follow.
    _FMT = struct.Struct("<4sIQ16s16s16sHHIQ")
    CHECKSUM_OFFSET = 4

    def pack(self) -> bytes:
        buf = bytearray(HEADER_SIZE)
        self._FMT.pack_into(
            buf,
            0,
            HEADER_SIGNATURE,
            0,
            self.sequence_number,
            self.file_write_guid.bytes_le,
            self.data_write_guid.bytes_le,
            self.log_guid.bytes_le,
            self.log_version,
            self.version,
            self.log_length,
            self.log_offset,
        )
        struct.pack_into("<I", buf, self.CHECKSUM_OFFSET, crc32c(buf))
        return bytes(buf)

    @classmethod
    def unpack(cls, data: bytes) -> Header:
        """Parse a header; raises VhdxError when its signature or checksum is wrong."""
        if len(data) < HEADER_SIZE:
            raise VhdxError("header is truncated")
        (sig, checksum, seq, fwg, dwg, lg, log_version, version, log_length, log_offset) = (
            cls._FMT.unpack_from(data)
        )
        if sig != HEADER_SIGNATURE:
            raise VhdxError(f"bad header signature {sig!r}")
        if checksum_with_field_zeroed(data[:HEADER_SIZE], cls.CHECKSUM_OFFSET) != checksum:
            raise VhdxError("header checksum mismatch")
        return cls(
            seq,
            guid_from(fwg),
            guid_from(dwg),
            guid_from(lg),
            log_length,
            log_offset,
            log_version,
            version,
        )


# --- 2.2.3 region table ---------------------------------------------------------------------
@dataclass
class RegionEntry:
    guid: uuid.UUID
    file_offset: int
    length: int
    required: bool

    _FMT = struct.Struct("<16sQII")  # Guid, FileOffset, Length, Required (bit 0)

    def pack(self) -> bytes:
        return self._FMT.pack(
            self.guid.bytes_le, self.file_offset, self.length, 1 if self.required else 0
        )


@dataclass
class RegionTable:
    entries: list[RegionEntry] = field(default_factory=list)

    _HDR = struct.Struct("<4sIII")  # Signature, Checksum, EntryCount, Reserved
    CHECKSUM_OFFSET = 4

    def pack(self) -> bytes:
        """The full 64 KiB table with its checksum."""
        buf = bytearray(REGION_TABLE_SIZE)
        self._HDR.pack_into(buf, 0, REGION_TABLE_SIGNATURE, 0, len(self.entries), 0)
        for i, entry in enumerate(self.entries):
            off = self._HDR.size + i * RegionEntry._FMT.size
            buf[off : off + RegionEntry._FMT.size] = entry.pack()
        struct.pack_into("<I", buf, self.CHECKSUM_OFFSET, crc32c(buf))
        return bytes(buf)

    @classmethod
    def unpack(cls, data: bytes) -> RegionTable:
        if len(data) < REGION_TABLE_SIZE:
            raise VhdxError("region table is truncated")
        sig, checksum, count, _reserved = cls._HDR.unpack_from(data)
        if sig != REGION_TABLE_SIGNATURE:
            raise VhdxError(f"bad region table signature {sig!r}")
        if checksum_with_field_zeroed(data[:REGION_TABLE_SIZE], cls.CHECKSUM_OFFSET) != checksum:
            raise VhdxError("region table checksum mismatch")
        if count > MAX_REGION_ENTRIES:
            raise VhdxError(f"region table has {count} entries (at most {MAX_REGION_ENTRIES})")
        entries = []
        for i in range(count):
            guid, off, length, flags = RegionEntry._FMT.unpack_from(
                data, cls._HDR.size + i * RegionEntry._FMT.size
            )
            entries.append(RegionEntry(guid_from(guid), off, length, bool(flags & 1)))
        return cls(entries)

    def find(self, guid: uuid.UUID) -> RegionEntry | None:
        for entry in self.entries:
            if entry.guid == guid:
                return entry
        return None


# --- 2.6.1 metadata table -------------------------------------------------------------------
@dataclass
class MetadataEntry:
    item_id: uuid.UUID
    offset: int
    length: int
    flags: int

    _FMT = struct.Struct("<16sIIII")  # ItemId, Offset, Length, flags, Reserved2

    @property
    def is_user(self) -> bool:
        return bool(self.flags & META_IS_USER)

    @property
    def is_required(self) -> bool:
        return bool(self.flags & META_IS_REQUIRED)

    def pack(self) -> bytes:
        return self._FMT.pack(self.item_id.bytes_le, self.offset, self.length, self.flags, 0)


@dataclass
class MetadataTable:
    entries: list[MetadataEntry] = field(default_factory=list)

    _HDR = struct.Struct("<8sHH20s")  # Signature, Reserved, EntryCount, Reserved2

    def pack(self) -> bytes:
        """The table's used prefix (header + entries); the rest of its 64 KiB is zero."""
        parts = [self._HDR.pack(METADATA_SIGNATURE, 0, len(self.entries), b"")]
        parts.extend(e.pack() for e in self.entries)
        return b"".join(parts)

    @classmethod
    def unpack(cls, data: bytes) -> MetadataTable:
        if len(data) < METADATA_TABLE_SIZE:
            raise VhdxError("metadata table is truncated")
        sig, _reserved, count, _reserved2 = cls._HDR.unpack_from(data)
        if sig != METADATA_SIGNATURE:
            raise VhdxError(f"bad metadata table signature {sig!r}")
        if count > MAX_METADATA_ENTRIES:
            raise VhdxError(f"metadata table has {count} entries (at most {MAX_METADATA_ENTRIES})")
        entries = []
        for i in range(count):
            item, off, length, flags, _r = MetadataEntry._FMT.unpack_from(
                data, cls._HDR.size + i * MetadataEntry._FMT.size
            )
            entries.append(MetadataEntry(guid_from(item), off, length, flags))
        return cls(entries)


# --- 2.6.2 metadata items -------------------------------------------------------------------
FILE_PARAMETERS = struct.Struct("<II")  # BlockSize, flags (LeaveBlocksAllocated, HasParent)
VIRTUAL_DISK_SIZE = struct.Struct("<Q")
SECTOR_SIZE_ITEM = struct.Struct("<I")  # logical and physical sector size items
VIRTUAL_DISK_ID_SIZE = 16


@dataclass
class ParentLocator:
    """2.6.2.6: a locator type GUID and UTF-16 key/value pairs (kept in their stored order)."""

    entries: dict[str, str]
    locator_type: uuid.UUID = VHDX_PARENT_LOCATOR_TYPE

    _HDR = struct.Struct("<16sHH")  # LocatorType, Reserved, KeyValueCount
    _ENTRY = struct.Struct("<IIHH")  # KeyOffset, ValueOffset, KeyLength, ValueLength

    def pack(self) -> bytes:
        items = [(k.encode("utf-16-le"), v.encode("utf-16-le")) for k, v in self.entries.items()]
        table_end = self._HDR.size + self._ENTRY.size * len(items)
        heads = [self._HDR.pack(self.locator_type.bytes_le, 0, len(items))]
        blobs: list[bytes] = []
        pos = table_end
        for key, value in items:
            if len(key) > 0xFFFF or len(value) > 0xFFFF:
                raise VhdxError("parent locator entry is too long")
            heads.append(self._ENTRY.pack(pos, pos + len(key), len(key), len(value)))
            blobs.extend((key, value))
            pos += len(key) + len(value)
        return b"".join(heads + blobs)

    @classmethod
    def unpack(cls, data: bytes) -> ParentLocator:
        if len(data) < cls._HDR.size:
            raise VhdxError("parent locator is truncated")
        ltype, _reserved, count = cls._HDR.unpack_from(data)
        if cls._HDR.size + count * cls._ENTRY.size > len(data):
            raise VhdxError(f"parent locator claims {count} entries, more than its item holds")
        entries: dict[str, str] = {}
        for i in range(count):
            koff, voff, klen, vlen = cls._ENTRY.unpack_from(data, cls._HDR.size + i * 12)
            if koff + klen > len(data) or voff + vlen > len(data) or klen == 0:
                raise VhdxError(f"parent locator entry {i} points outside the item")
            if klen % 2 or vlen % 2:
                raise VhdxError(f"parent locator entry {i} is not UTF-16")
            try:
                key = data[koff : koff + klen].decode("utf-16-le")
                value = data[voff : voff + vlen].decode("utf-16-le")
            except UnicodeDecodeError:
                raise VhdxError(f"parent locator entry {i} is not valid UTF-16") from None
            if key in entries:
                raise VhdxError(f"parent locator has key {key!r} twice")
            entries[key] = value
        return cls(entries, guid_from(ltype))


# --- 2.3 log --------------------------------------------------------------------------------
@dataclass
class LogEntryHeader:
    checksum: int
    entry_length: int
    tail: int
    sequence_number: int
    descriptor_count: int
    log_guid: uuid.UUID
    flushed_file_offset: int
    last_file_offset: int

    # Signature, Checksum, EntryLength, Tail, SequenceNumber, DescriptorCount, Reserved,
    # LogGuid, FlushedFileOffset, LastFileOffset
    FMT = struct.Struct("<4sIIIQII16sQQ")
    CHECKSUM_OFFSET = 4

    def pack(self) -> bytes:
        return self.FMT.pack(
            LOG_ENTRY_SIGNATURE,
            self.checksum,
            self.entry_length,
            self.tail,
            self.sequence_number,
            self.descriptor_count,
            0,
            self.log_guid.bytes_le,
            self.flushed_file_offset,
            self.last_file_offset,
        )

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> LogEntryHeader | None:
        """None when ``data`` does not start with a log entry signature."""
        (sig, checksum, length, tail, seq, count, _r, guid, flushed, last) = cls.FMT.unpack_from(
            data
        )
        if sig != LOG_ENTRY_SIGNATURE:
            return None
        return cls(checksum, length, tail, seq, count, guid_from(guid), flushed, last)


# Data descriptor: DataSignature, TrailingBytes (last 4 bytes of the sector), LeadingBytes (first
# 8 bytes), FileOffset, SequenceNumber.  Zero descriptor: ZeroSignature, Reserved, ZeroLength,
# FileOffset, SequenceNumber.  Both are 32 bytes.
DATA_DESCRIPTOR = struct.Struct("<4s4s8sQQ")
ZERO_DESCRIPTOR = struct.Struct("<4sIQQQ")
DESCRIPTOR_SIZE = 32
# Data sector: DataSignature, SequenceHigh, 4084 bytes of data, SequenceLow.
DATA_SECTOR_HEAD = struct.Struct("<4sI")
DATA_SECTOR_TAIL = struct.Struct("<I")
DATA_SECTOR_PAYLOAD = LOG_SECTOR_SIZE - 12


def descriptor_sectors(descriptor_count: int) -> int:
    """Log sectors taken by the entry header and ``descriptor_count`` descriptors."""
    used = LogEntryHeader.FMT.size + DESCRIPTOR_SIZE * descriptor_count
    return max(1, -(-used // LOG_SECTOR_SIZE))
