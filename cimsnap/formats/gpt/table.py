"""GUID Partition Table: headers, entry arrays, reading with validation, writing, resizing.

Implements UEFI 2.10 section 5.3 (GUID Partition Table Disk Layout): the primary header in LBA 1
and its entry array, the backup entry array and header at the end of the disk, CRC32 (the zlib
polynomial) over the header and over the entry array, partition entries with type GUID, unique
GUID, inclusive LBA range, attributes and a 36-character UTF-16LE name.  GUIDs are stored in the
mixed-endian Windows layout (``uuid.UUID(bytes_le=...)``).

Reading validates everything a damaged or hostile table could get wrong (signature, sizes, CRCs,
LBAs out of range, overlapping partitions, huge entry arrays) and falls back to the backup copy
when the primary one is damaged, as UEFI firmware and Windows do.
"""

from __future__ import annotations

import itertools
import struct
import uuid
import zlib
from dataclasses import dataclass, field, replace
from typing import NoReturn

from cimsnap.formats.blockdev import BlockDevice
from cimsnap.formats.gpt.errors import GptError
from cimsnap.formats.gpt.mbr import is_protective, parse_mbr, protective_mbr

SIGNATURE = b"EFI PART"
REVISION_1_0 = 0x00010000
HEADER_SIZE = 92
DEFAULT_ENTRY_COUNT = 128
DEFAULT_ENTRY_SIZE = 128
ENTRY_NAME_UNITS = 36
# Bounds a reader accepts; anything larger is treated as damage, not allocated.
MAX_ENTRY_ARRAY_BYTES = 1 << 20
MAX_ENTRY_SIZE = 4096

# Header fields after the signature: revision, header size, header CRC32, reserved, my LBA,
# alternate LBA, first usable LBA, last usable LBA, disk GUID, entry array LBA, number of entries,
# entry size, entry array CRC32.
_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")
_HEADER_CRC_OFFSET = 16
# Entry: type GUID, unique GUID, first LBA, last LBA, attributes, name.
_ENTRY = struct.Struct("<16s16sQQQ72s")

# Partition type GUIDs this project needs by name.
MICROSOFT_RESERVED = uuid.UUID("E3C9E316-0B5C-4DB8-817D-F92DF00215AE")
BASIC_DATA = uuid.UUID("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7")
UNUSED = uuid.UUID(int=0)


def _crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


@dataclass
class GptPartition:
    """One used entry of the partition array (``slot`` is its 0-based index there)."""

    type_guid: uuid.UUID
    unique_guid: uuid.UUID
    first_lba: int
    last_lba: int
    attributes: int = 0
    name: str = ""
    slot: int = 0

    @property
    def size_lba(self) -> int:
        return self.last_lba - self.first_lba + 1

    def pack(self, entry_size: int) -> bytes:
        encoded = self.name.encode("utf-16-le")
        if len(encoded) > 2 * ENTRY_NAME_UNITS:
            raise GptError(f"partition name {self.name!r} is longer than 36 UTF-16 units")
        raw = _ENTRY.pack(
            self.type_guid.bytes_le,
            self.unique_guid.bytes_le,
            self.first_lba,
            self.last_lba,
            self.attributes,
            encoded.ljust(72, b"\0"),
        )
        return raw.ljust(entry_size, b"\0")

    @classmethod
    def unpack(cls, raw: bytes, slot: int) -> GptPartition:
        type_b, unique_b, first, last, attributes, name_b = _ENTRY.unpack_from(raw)
        name = name_b.decode("utf-16-le", "replace").split("\0", 1)[0]
        return cls(
            uuid.UUID(bytes_le=type_b),
            uuid.UUID(bytes_le=unique_b),
            first,
            last,
            attributes,
            name,
            slot,
        )


@dataclass
class GptHeader:
    """A primary or backup header (CRCs are computed by :meth:`pack`)."""

    my_lba: int
    alternate_lba: int
    first_usable_lba: int
    last_usable_lba: int
    disk_guid: uuid.UUID
    entries_lba: int
    entry_count: int
    entry_size: int
    entries_crc: int
    revision: int = REVISION_1_0
    header_size: int = HEADER_SIZE
    header_crc: int = 0

    def pack(self, sector_size: int) -> bytes:
        fields = [
            SIGNATURE,
            self.revision,
            HEADER_SIZE,
            0,
            0,
            self.my_lba,
            self.alternate_lba,
            self.first_usable_lba,
            self.last_usable_lba,
            self.disk_guid.bytes_le,
            self.entries_lba,
            self.entry_count,
            self.entry_size,
            self.entries_crc,
        ]
        raw = bytearray(_HEADER.pack(*fields))
        struct.pack_into("<I", raw, _HEADER_CRC_OFFSET, _crc32(bytes(raw)))
        return bytes(raw).ljust(sector_size, b"\0")

    @classmethod
    def unpack(cls, sector: bytes, *, expected_lba: int, what: str) -> GptHeader:
        """Parse and check a header; ``GptError`` names what is wrong with it."""
        if sector[:8] != SIGNATURE:
            raise GptError(f"{what} GPT header has no 'EFI PART' signature", offset=None)
        (
            _sig,
            revision,
            header_size,
            header_crc,
            _reserved,
            my_lba,
            alternate_lba,
            first_usable,
            last_usable,
            disk_guid,
            entries_lba,
            entry_count,
            entry_size,
            entries_crc,
        ) = _HEADER.unpack_from(sector)
        if revision >> 16 != 1:
            raise GptError(f"{what} GPT header has unsupported revision {revision:#x}")
        if not HEADER_SIZE <= header_size <= len(sector):
            raise GptError(f"{what} GPT header size {header_size} is out of range")
        check = bytearray(sector[:header_size])
        struct.pack_into("<I", check, _HEADER_CRC_OFFSET, 0)
        if _crc32(bytes(check)) != header_crc:
            raise GptError(f"{what} GPT header CRC32 mismatch")
        if my_lba != expected_lba:
            raise GptError(f"{what} GPT header says it is at LBA {my_lba}, found at {expected_lba}")
        if entry_size < 128 or entry_size % 8 or entry_size > MAX_ENTRY_SIZE:
            raise GptError(f"{what} GPT header has invalid entry size {entry_size}")
        if entry_count == 0 or entry_count * entry_size > MAX_ENTRY_ARRAY_BYTES:
            raise GptError(f"{what} GPT header has an implausible entry count {entry_count}")
        return cls(
            my_lba,
            alternate_lba,
            first_usable,
            last_usable,
            uuid.UUID(bytes_le=disk_guid),
            entries_lba,
            entry_count,
            entry_size,
            entries_crc,
            revision,
            header_size,
            header_crc,
        )


@dataclass
class GptTable:
    """A whole partition table as this project manipulates it.

    ``partitions`` holds the used entries in slot order.  ``backup_lba`` is where the backup
    header is: normally the last LBA; after a disk grew, the old last LBA until
    :meth:`move_backup_to_end`.
    ``damaged`` lists what reading found wrong and repaired from the other copy.
    """

    sector_size: int
    disk_sectors: int
    disk_guid: uuid.UUID
    first_usable_lba: int
    last_usable_lba: int
    backup_lba: int
    partitions: list[GptPartition] = field(default_factory=list)
    entry_count: int = DEFAULT_ENTRY_COUNT
    entry_size: int = DEFAULT_ENTRY_SIZE
    damaged: list[str] = field(default_factory=list)

    # Geometry ------------------------------------------------------------------------------
    @property
    def entry_array_sectors(self) -> int:
        return -(-self.entry_count * self.entry_size // self.sector_size)

    @property
    def last_lba(self) -> int:
        return self.disk_sectors - 1

    @property
    def backup_entries_lba(self) -> int:
        return self.backup_lba - self.entry_array_sectors

    def partition(self, index: int) -> GptPartition:
        """The ``index``-th used partition (0-based, in slot order)."""
        if not 0 <= index < len(self.partitions):
            raise GptError(f"no partition {index + 1}: the table has {len(self.partitions)}")
        return self.partitions[index]

    # Editing -------------------------------------------------------------------------------
    def add_partition(
        self,
        type_guid: uuid.UUID,
        first_lba: int,
        last_lba: int,
        *,
        name: str = "",
        attributes: int = 0,
        unique_guid: uuid.UUID | None = None,
    ) -> GptPartition:
        used = {p.slot for p in self.partitions}
        slot = next((i for i in range(self.entry_count) if i not in used), None)
        if slot is None:
            raise GptError(f"all {self.entry_count} partition entries are in use")
        part = GptPartition(
            type_guid, unique_guid or uuid.uuid4(), first_lba, last_lba, attributes, name, slot
        )
        self._check_partition(part, others=self.partitions)
        self.partitions.append(part)
        self.partitions.sort(key=lambda p: p.slot)
        return part

    def grow_partition(self, index: int, new_last_lba: int) -> GptPartition:
        """Move the end of partition ``index`` to ``new_last_lba`` (never shrinks)."""
        part = self.partition(index)
        if new_last_lba < part.last_lba:
            raise GptError(
                f"partition {index + 1} ends at LBA {part.last_lba}; refusing to shrink it to "
                f"{new_last_lba}"
            )
        grown = replace(part, last_lba=new_last_lba)
        self._check_partition(grown, others=[p for p in self.partitions if p is not part])
        self.partitions[self.partitions.index(part)] = grown
        return grown

    def move_backup_to_end(self, disk_sectors: int) -> None:
        """Adopt a new (larger) disk size: the backup goes to the new last LBA."""
        if disk_sectors < self.disk_sectors:
            raise GptError("the disk shrank below the partition table's end")
        self.disk_sectors = disk_sectors
        self.backup_lba = disk_sectors - 1
        self.last_usable_lba = self.backup_entries_lba - 1

    def _check_partition(self, part: GptPartition, others: list[GptPartition]) -> None:
        if not self.first_usable_lba <= part.first_lba <= part.last_lba <= self.last_usable_lba:
            raise GptError(
                f"partition LBAs {part.first_lba}-{part.last_lba} are outside the usable range "
                f"{self.first_usable_lba}-{self.last_usable_lba}"
            )
        for other in others:
            if part.first_lba <= other.last_lba and other.first_lba <= part.last_lba:
                raise GptError(
                    f"partition LBAs {part.first_lba}-{part.last_lba} overlap partition "
                    f"{other.first_lba}-{other.last_lba}"
                )

    # Serialisation -------------------------------------------------------------------------
    def entry_array(self) -> bytes:
        array = bytearray(self.entry_count * self.entry_size)
        for part in self.partitions:
            off = part.slot * self.entry_size
            array[off : off + self.entry_size] = part.pack(self.entry_size)
        return bytes(array).ljust(self.entry_array_sectors * self.sector_size, b"\0")

    def headers(self, entries: bytes) -> tuple[GptHeader, GptHeader]:
        entries_crc = _crc32(entries[: self.entry_count * self.entry_size])
        primary = GptHeader(
            1,
            self.backup_lba,
            self.first_usable_lba,
            self.last_usable_lba,
            self.disk_guid,
            2,
            self.entry_count,
            self.entry_size,
            entries_crc,
        )
        backup = replace(
            primary, my_lba=self.backup_lba, alternate_lba=1, entries_lba=self.backup_entries_lba
        )
        return primary, backup


def new_table(
    disk_size: int,
    *,
    sector_size: int = 512,
    disk_guid: uuid.UUID | None = None,
) -> GptTable:
    """An empty table for a disk of ``disk_size`` bytes (128 entries of 128 bytes)."""
    if sector_size not in (512, 4096):
        raise GptError(f"unsupported logical sector size {sector_size}")
    if disk_size % sector_size:
        raise GptError(f"disk size {disk_size} is not a multiple of the sector size {sector_size}")
    disk_sectors = disk_size // sector_size
    table = GptTable(
        sector_size=sector_size,
        disk_sectors=disk_sectors,
        disk_guid=disk_guid or uuid.uuid4(),
        first_usable_lba=0,
        last_usable_lba=0,
        backup_lba=disk_sectors - 1,
    )
    table.first_usable_lba = 2 + table.entry_array_sectors
    table.last_usable_lba = table.backup_entries_lba - 1
    if table.last_usable_lba < table.first_usable_lba:
        raise GptError(f"a disk of {disk_size} bytes is too small for a GPT")
    return table


def write_gpt(dev: BlockDevice, table: GptTable) -> None:
    """Write the protective MBR, the primary and the backup copy of ``table``."""
    if table.disk_sectors * table.sector_size > dev.size:
        raise GptError(f"the table describes {table.disk_sectors} sectors; the device is smaller")
    ss = table.sector_size
    entries = table.entry_array()
    primary, backup = table.headers(entries)
    dev.write_at(0, protective_mbr(table.disk_sectors, ss))
    dev.write_at(ss, primary.pack(ss))
    dev.write_at(2 * ss, entries)
    dev.write_at(table.backup_entries_lba * ss, entries)
    dev.write_at(table.backup_lba * ss, backup.pack(ss))


def detect_sector_size(dev: BlockDevice) -> int | None:
    """512 or 4096: where an 'EFI PART' header is (primary, else backup); None without one."""
    for ss in (512, 4096):
        if dev.size >= 2 * ss and dev.read_at(ss, 8) == SIGNATURE:
            return ss
    for ss in (512, 4096):
        if dev.size >= 2 * ss and dev.size % ss == 0 and dev.read_at(dev.size - ss, 8) == SIGNATURE:
            return ss
    return None


def read_gpt(dev: BlockDevice, *, sector_size: int | None = None) -> GptTable:
    """Read and validate the table, using the backup copy when the primary is damaged.

    Raises :class:`GptError` when the disk has no GPT (an MBR disk, a blank disk) or when both
    copies are damaged.
    """
    ss = detect_sector_size(dev)
    if ss is None:
        _raise_no_gpt(dev)
    if sector_size is not None:
        ss = sector_size
    if dev.size % ss:
        raise GptError(f"disk size {dev.size} is not a multiple of the sector size {ss}")
    disk_sectors = dev.size // ss
    problems: list[str] = []

    primary: tuple[GptHeader, list[GptPartition]] | None = None
    try:
        primary = _read_copy(dev, ss, disk_sectors, 1, "primary")
    except GptError as err:
        problems.append(err.message)

    backup_lbas = [disk_sectors - 1]
    if primary is not None and primary[0].alternate_lba not in backup_lbas:
        backup_lbas.insert(0, primary[0].alternate_lba)
    backup: tuple[GptHeader, list[GptPartition]] | None = None
    backup_problems: list[str] = []
    for lba in backup_lbas:
        try:
            backup = _read_copy(dev, ss, disk_sectors, lba, "backup")
            break
        except GptError as err:
            backup_problems.append(err.message)
    if backup is None:
        problems.append(backup_problems[0])

    chosen = primary or backup
    if chosen is None:
        raise GptError("; ".join(problems), offset=ss)
    header, partitions = chosen
    backup_lba = backup[0].my_lba if backup is not None else header.alternate_lba
    if primary is None:
        backup_lba = header.my_lba
    if (
        primary is not None
        and backup is not None
        and (primary[0].disk_guid != backup[0].disk_guid or primary[1] != backup[1])
    ):
        problems.append("the backup GPT differs from the primary")
    table = GptTable(
        sector_size=ss,
        disk_sectors=disk_sectors,
        disk_guid=header.disk_guid,
        first_usable_lba=header.first_usable_lba,
        last_usable_lba=header.last_usable_lba,
        backup_lba=backup_lba,
        partitions=partitions,
        entry_count=header.entry_count,
        entry_size=header.entry_size,
        damaged=problems,
    )
    return table


def _raise_no_gpt(dev: BlockDevice) -> NoReturn:
    """No 'EFI PART' header anywhere: say whether the disk is MBR-partitioned or blank."""
    lba0 = dev.read_at(0, 512) if dev.size >= 512 else b""
    records = parse_mbr(lba0)
    if records is not None and any(r.used for r in records) and not is_protective(records):
        raise GptError("the disk is partitioned with MBR, not GPT")
    raise GptError("the disk has no GUID partition table")


def _read_copy(
    dev: BlockDevice, ss: int, disk_sectors: int, lba: int, what: str
) -> tuple[GptHeader, list[GptPartition]]:
    if not 1 <= lba < disk_sectors:
        raise GptError(f"{what} GPT header LBA {lba} is outside the disk")
    header = GptHeader.unpack(dev.read_at(lba * ss, ss), expected_lba=lba, what=what)
    array_sectors = -(-header.entry_count * header.entry_size // ss)
    last = disk_sectors - 1
    if not (
        header.entries_lba >= 2
        and header.entries_lba + array_sectors <= disk_sectors
        and header.first_usable_lba <= header.last_usable_lba + 1
        and header.last_usable_lba < last
        and header.first_usable_lba >= 2
    ):
        raise GptError(f"{what} GPT header LBAs are out of range for a {disk_sectors}-sector disk")
    entries_end = header.entries_lba + array_sectors - 1
    if header.first_usable_lba <= entries_end and header.entries_lba <= header.last_usable_lba:
        raise GptError(f"{what} GPT entry array overlaps the usable area")
    raw = dev.read_at(header.entries_lba * ss, header.entry_count * header.entry_size)
    if _crc32(raw) != header.entries_crc:
        raise GptError(f"{what} GPT partition entry array CRC32 mismatch")
    partitions = []
    for slot in range(header.entry_count):
        chunk = raw[slot * header.entry_size : (slot + 1) * header.entry_size]
        if chunk[:16] == bytes(16):
            continue
        part = GptPartition.unpack(chunk, slot)
        if not header.first_usable_lba <= part.first_lba <= part.last_lba <= header.last_usable_lba:
            raise GptError(
                f"{what} GPT entry {slot + 1} (LBAs {part.first_lba}-{part.last_lba}) lies "
                f"outside the usable range {header.first_usable_lba}-{header.last_usable_lba}"
            )
        partitions.append(part)
    ordered = sorted(partitions, key=lambda p: p.first_lba)
    for a, b in itertools.pairwise(ordered):
        if b.first_lba <= a.last_lba:
            raise GptError(f"{what} GPT entries {a.slot + 1} and {b.slot + 1} overlap")
    return header, partitions
