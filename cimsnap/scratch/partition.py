"""Reading a scratch disk: its partition GUIDs (GetScratchVhdPartitionInfo) and a summary.

``partition_info`` applies the checks hcsshim's ``GetScratchVhdPartitionInfo`` applies to the
drive layout Windows reports (internal/vhdx/info.go): GPT partition style, exactly two
partitions, the second of the Basic Data type; it returns the disk GUID and that partition's
unique GUID, which the utility VM's BCD must name.  The disk is opened by content: a VHDX (and
its parent chain) through the VHDX engine, anything else as a raw image.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from cimsnap.errors import CimsnapError, FormatError, NotFoundError
from cimsnap.formats.blockdev import BlockDevice, RawFileDevice, WindowDevice
from cimsnap.formats.gpt import BASIC_DATA, GptError, GptPartition, GptTable, read_gpt
from cimsnap.formats.ntfs import NtfsVolume, VolumeInfo

VHDX_SIGNATURE = b"vhdxfile"


class ScratchError(FormatError):
    """A disk is not a scratch disk as Windows lays one out (or cannot be made into one)."""


class ScratchPartitionInfo(NamedTuple):
    """What GetScratchVhdPartitionInfo returns (unpacks as ``disk_guid, partition_guid``)."""

    disk_guid: uuid.UUID
    partition_guid: uuid.UUID


@contextlib.contextmanager
def open_image(path: str | os.PathLike[str], *, writable: bool = False) -> Iterator[BlockDevice]:
    """Open a VHDX (by its signature) or a raw disk image as a block device."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            magic = f.read(len(VHDX_SIGNATURE))
    except FileNotFoundError:
        raise NotFoundError("no such disk image", path=p) from None
    if magic == VHDX_SIGNATURE:
        from cimsnap.formats import vhdx

        with vhdx.open_disk(p, writable=writable) as disk:
            yield disk
    else:
        with RawFileDevice(p, writable=writable) as raw:
            yield raw


def sector_size_of(dev: BlockDevice) -> int | None:
    """The logical sector size a device declares (a VHDX does), else None (detect it)."""
    size = getattr(dev, "logical_sector_size", None)
    return size if isinstance(size, int) else None


def scratch_partitions(
    dev: BlockDevice, *, path: str | os.PathLike[str] | None = None
) -> tuple[GptTable, GptPartition]:
    """The table and the Basic Data partition, validated like GetScratchVhdPartitionInfo."""
    try:
        table = read_gpt(dev, sector_size=sector_size_of(dev))
    except GptError as err:
        raise ScratchError(
            f"drive layout: expected partition style GPT: {err.message}", path=path
        ) from err
    parts = table.partitions
    if len(parts) != 2:
        raise ScratchError(f"expected exactly 2 partitions, found {len(parts)}", path=path)
    second = parts[1]
    if second.type_guid != BASIC_DATA:
        raise ScratchError(
            f"expected the second partition to have type {str(BASIC_DATA).upper()} (Basic "
            f"Data), found {str(second.type_guid).upper()} instead",
            path=path,
        )
    return table, second


def partition_info(target: str | os.PathLike[str] | BlockDevice) -> ScratchPartitionInfo:
    """GPT disk GUID and the Basic Data partition's unique GUID of a scratch disk."""
    if isinstance(target, (str, os.PathLike)):
        with open_image(target) as dev:
            return partition_info_of(dev, path=target)
    return partition_info_of(target)


def partition_info_of(
    dev: BlockDevice, *, path: str | os.PathLike[str] | None = None
) -> ScratchPartitionInfo:
    table, data = scratch_partitions(dev, path=path)
    return ScratchPartitionInfo(table.disk_guid, data.unique_guid)


@dataclass(frozen=True)
class ScratchInfo:
    """Everything ``cimsnap scratch info`` shows."""

    disk_guid: uuid.UUID
    partition_guid: uuid.UUID
    disk_size: int
    sector_size: int
    partition_offset: int
    partition_size: int
    volume: VolumeInfo | None
    volume_error: str | None
    gpt_damage: list[str]

    def to_json(self) -> dict[str, object]:
        volume: dict[str, object] | None = None
        if self.volume is not None:
            v = self.volume
            volume = {
                "filesystem": "NTFS",
                "version": f"{v.version[0]}.{v.version[1]}",
                "label": v.label,
                "serial": f"{v.serial:016X}",
                "size": v.size,
                "free": v.free_clusters * v.cluster_size,
                "cluster_size": v.cluster_size,
                "dirty": bool(v.flags & 1),
            }
        return {
            "disk_guid": str(self.disk_guid).upper(),
            "partition_guid": str(self.partition_guid).upper(),
            "disk_size": self.disk_size,
            "sector_size": self.sector_size,
            "partition_offset": self.partition_offset,
            "partition_size": self.partition_size,
            "volume": volume,
            "volume_error": self.volume_error,
            "gpt_damage": self.gpt_damage,
        }


def scratch_info(target: str | os.PathLike[str] | BlockDevice) -> ScratchInfo:
    """Partition GUIDs, sizes and the NTFS volume's state of a scratch disk."""
    if isinstance(target, (str, os.PathLike)):
        with open_image(target) as dev:
            return _info(dev, target)
    return _info(target, None)


def _info(dev: BlockDevice, path: str | os.PathLike[str] | None) -> ScratchInfo:
    table, data = scratch_partitions(dev, path=path)
    ss = table.sector_size
    offset, length = data.first_lba * ss, data.size_lba * ss
    volume: VolumeInfo | None = None
    error: str | None = None
    try:
        volume = NtfsVolume(WindowDevice(dev, offset, length)).info()
    except CimsnapError as err:
        error = str(err)
    return ScratchInfo(
        table.disk_guid,
        data.unique_guid,
        dev.size,
        ss,
        offset,
        length,
        volume,
        error,
        list(table.damaged),
    )
