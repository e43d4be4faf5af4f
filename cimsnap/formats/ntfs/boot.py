"""The NTFS boot sector ($Boot's first sector, copied to the last sector of the partition).

Layout after ntfs-3g ``layout.h`` (NTFS_BOOT_SECTOR, BIOS_PARAMETER_BLOCK): jump, OEM id
"NTFS    ", the BPB (bytes per sector, sectors per cluster, the FAT fields that must be zero,
media 0xF8, geometry, hidden sectors = partition start), then the NTFS fields: total sectors
(the partition minus the backup boot sector), LCN of $MFT and $MFTMirr, the MFT record and index
block sizes (a negative value n means 2^-n bytes), the volume serial number, and 0xAA55.

The boot code area is left zero: a container scratch volume is never booted.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cimsnap.formats.ntfs.errors import NtfsError

OEM_ID = b"NTFS    "
JUMP = b"\xeb\x52\x90"
BOOT_SIGNATURE = b"\x55\xaa"
MEDIA_FIXED_DISK = 0xF8
# What Windows writes for disks without a real geometry (and what mkntfs writes for images).
SECTORS_PER_TRACK = 63
HEADS = 255

# jump, OEM id, bytes per sector, sectors per cluster, reserved sectors, FATs, root entries,
# sectors, media, sectors per FAT, sectors per track, heads, hidden sectors, large sectors,
# physical drive, current head, extended boot signature, reserved, total sectors, MFT LCN,
# MFTMirr LCN, clusters per MFT record, clusters per index block, volume serial, checksum.
_BOOT = struct.Struct("<3s8sHBHBHHBHHHIIBBBBqqqb3xb3xQI")


def _encode_size(size: int, cluster_size: int) -> int:
    """Clusters per record, or -log2(bytes) when a record is smaller than a cluster."""
    if size >= cluster_size:
        return size // cluster_size
    return -(size.bit_length() - 1)


def _decode_size(value: int, cluster_size: int) -> int:
    if value > 0:
        return value * cluster_size
    if -31 <= value < 0:
        return 1 << -value
    raise NtfsError(f"invalid record size code {value}")


@dataclass
class BootSector:
    bytes_per_sector: int
    sectors_per_cluster: int
    hidden_sectors: int
    total_sectors: int
    mft_lcn: int
    mftmirr_lcn: int
    mft_record_size: int
    index_block_size: int
    serial: int

    @property
    def cluster_size(self) -> int:
        return self.bytes_per_sector * self.sectors_per_cluster

    @property
    def total_clusters(self) -> int:
        return self.total_sectors // self.sectors_per_cluster

    def pack(self) -> bytes:
        cs = self.cluster_size
        spc = self.sectors_per_cluster
        raw = _BOOT.pack(
            JUMP,
            OEM_ID,
            self.bytes_per_sector,
            spc if spc <= 128 else 256 - (spc.bit_length() - 1),
            0,
            0,
            0,
            0,
            MEDIA_FIXED_DISK,
            0,
            SECTORS_PER_TRACK,
            HEADS,
            min(self.hidden_sectors, 0xFFFFFFFF),
            0,
            0x80,
            0,
            0x80,
            0,
            self.total_sectors,
            self.mft_lcn,
            self.mftmirr_lcn,
            _encode_size(self.mft_record_size, cs),
            _encode_size(self.index_block_size, cs),
            self.serial,
            0,
        )
        sector = bytearray(self.bytes_per_sector)
        sector[: len(raw)] = raw
        sector[510:512] = BOOT_SIGNATURE
        return bytes(sector)

    @classmethod
    def unpack(cls, sector: bytes, *, offset: int | None = None) -> BootSector:
        if len(sector) < 512:
            raise NtfsError("boot sector is truncated", offset=offset)
        fields = _BOOT.unpack_from(sector)
        (
            _jump,
            oem,
            bps,
            spc_code,
            reserved,
            fats,
            root_entries,
            sectors,
            _media,
            spf,
            _spt,
            _heads,
            hidden,
            large,
            _drive,
            _head,
            _ext,
            _r,
            total,
            mft_lcn,
            mirr_lcn,
            mft_code,
            index_code,
            serial,
            _checksum,
        ) = fields
        if oem != OEM_ID:
            raise NtfsError("not an NTFS boot sector (OEM id is not 'NTFS    ')", offset=offset)
        if sector[510:512] != BOOT_SIGNATURE:
            raise NtfsError("NTFS boot sector has no 0xAA55 signature", offset=offset)
        if bps not in (512, 1024, 2048, 4096):
            raise NtfsError(f"NTFS boot sector: invalid bytes per sector {bps}", offset=offset)
        spc = spc_code if spc_code <= 0x80 else 1 << (256 - spc_code)
        if spc == 0 or spc & (spc - 1) or spc * bps > 2 << 20:
            raise NtfsError(f"NTFS boot sector: invalid sectors per cluster {spc}", offset=offset)
        if reserved or fats or root_entries or sectors or spf or large:
            raise NtfsError("NTFS boot sector: FAT fields are not zero", offset=offset)
        cs = spc * bps
        boot = cls(
            bps,
            spc,
            hidden,
            total,
            mft_lcn,
            mirr_lcn,
            _decode_size(mft_code, cs),
            _decode_size(index_code, cs),
            serial,
        )
        clusters = boot.total_clusters
        if total <= 0 or not (0 <= mft_lcn < clusters and 0 <= mirr_lcn < clusters):
            raise NtfsError("NTFS boot sector: $MFT/$MFTMirr outside the volume", offset=offset)
        if boot.mft_record_size not in (1024, 2048, 4096) or boot.index_block_size < 512:
            raise NtfsError("NTFS boot sector: unsupported record sizes", offset=offset)
        return boot
