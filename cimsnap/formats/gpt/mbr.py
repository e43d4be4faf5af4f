"""The master boot record in LBA 0: the protective MBR of a GPT disk, and recognising MBR disks.

Implements UEFI 2.10 section 5.2 (Legacy MBR, Protective MBR): one partition record of type 0xEE
starting at LBA 1 and covering the disk (or 0xFFFFFFFF sectors when the disk is larger), the
0xAA55 signature, everything else zero.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MBR_SIGNATURE = b"\x55\xaa"
SIGNATURE_OFFSET = 510
PARTITION_TABLE_OFFSET = 446
PARTITION_RECORD_SIZE = 16
PROTECTIVE_TYPE = 0xEE

# One MBR partition record: boot indicator, starting CHS, OS type, ending CHS, starting LBA,
# size in LBA.
_RECORD = struct.Struct("<B3sB3sII")

# CHS values of the protective record (UEFI: starting CHS 0x000200, ending CHS 0xFFFFFF when the
# disk is too large to describe, which is what Windows writes for any disk).
_PROTECTIVE_START_CHS = b"\x00\x02\x00"
_PROTECTIVE_END_CHS = b"\xff\xff\xff"


@dataclass(frozen=True)
class MbrPartition:
    """One of the four primary partition records."""

    boot_indicator: int
    os_type: int
    start_lba: int
    size_lba: int

    @property
    def used(self) -> bool:
        return self.os_type != 0 and self.size_lba != 0


def protective_mbr(disk_sectors: int, sector_size: int) -> bytes:
    """LBA 0 of a GPT disk of ``disk_sectors`` sectors."""
    size = min(disk_sectors - 1, 0xFFFFFFFF)
    record = _RECORD.pack(0, _PROTECTIVE_START_CHS, PROTECTIVE_TYPE, _PROTECTIVE_END_CHS, 1, size)
    sector = bytearray(sector_size)
    sector[PARTITION_TABLE_OFFSET : PARTITION_TABLE_OFFSET + len(record)] = record
    sector[SIGNATURE_OFFSET : SIGNATURE_OFFSET + 2] = MBR_SIGNATURE
    return bytes(sector)


def parse_mbr(sector: bytes) -> list[MbrPartition] | None:
    """The four partition records of LBA 0, or None when it has no 0xAA55 signature."""
    if len(sector) < 512 or sector[SIGNATURE_OFFSET : SIGNATURE_OFFSET + 2] != MBR_SIGNATURE:
        return None
    records = []
    for i in range(4):
        off = PARTITION_TABLE_OFFSET + i * PARTITION_RECORD_SIZE
        boot, _chs1, os_type, _chs2, start, size = _RECORD.unpack_from(sector, off)
        records.append(MbrPartition(boot, os_type, start, size))
    return records


def is_protective(records: list[MbrPartition]) -> bool:
    """True when the MBR announces a GPT disk (a used record of type 0xEE)."""
    return any(r.used and r.os_type == PROTECTIVE_TYPE for r in records)
