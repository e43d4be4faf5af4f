"""Expand a scratch disk (plain or differencing VHDX, or raw image): disk, GPT, partition, NTFS.

What Windows does for a container scratch with a size label (ExpandSandboxSize, then extending
the volume), in an order that keeps the disk valid at every step and makes a re-run finish an
interrupted expansion:

1. grow the disk (VHDX resize; a raw image is extended sparsely) — new space reads as zeros;
2. move the backup GPT to the new end and grow the Basic Data partition to the last whole MiB
   before it (a partition larger than its volume is valid);
3. extend the NTFS volume to fill the partition (its primary boot sector is the commit point).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cimsnap.errors import UsageError
from cimsnap.formats.blockdev import BlockDevice, WindowDevice
from cimsnap.formats.gpt import write_gpt
from cimsnap.formats.ntfs import ExtendResult, extend_volume
from cimsnap.scratch.format import data_partition_end_lba
from cimsnap.scratch.partition import VHDX_SIGNATURE, ScratchError, open_image, scratch_partitions


@dataclass(frozen=True)
class ExpandResult:
    old_disk_size: int
    new_disk_size: int
    partition_size: int
    volume: ExtendResult


def expand(path: str | os.PathLike[str], new_size: int) -> ExpandResult:
    """Grow the scratch disk at ``path`` to ``new_size`` bytes and its volume with it.

    ``new_size`` smaller than the disk is refused; equal to it, the partition and volume are
    still made to fill the disk (finishing an interrupted expansion).
    """
    p = Path(path)
    if new_size <= 0:
        raise UsageError(f"invalid size {new_size}", path=p)
    with open(p, "rb") as f:
        is_vhdx = f.read(len(VHDX_SIGNATURE)) == VHDX_SIGNATURE
        old_size = os.fstat(f.fileno()).st_size
    if is_vhdx:
        from cimsnap.formats import vhdx

        with vhdx.open_disk(p) as disk:
            old_size = disk.size
            _check_scratch(disk, p)  # validate before changing anything
        if new_size < old_size:
            raise UsageError(
                f"cannot shrink the scratch disk from {old_size} to {new_size} bytes", path=p
            )
        vhdx.resize(p, new_size)
    else:
        with open_image(p) as raw:
            table, _data = scratch_partitions(raw, path=p)
        if new_size < old_size:
            raise UsageError(
                f"cannot shrink the scratch disk from {old_size} to {new_size} bytes", path=p
            )
        if new_size % table.sector_size:
            raise UsageError(
                f"new size {new_size} is not a multiple of the {table.sector_size}-byte sector",
                path=p,
            )
        os.truncate(p, new_size)
    with open_image(p, writable=True) as dev:
        return _expand_device(dev, old_size, p)


def expand_device(dev: BlockDevice) -> ExpandResult:
    """Steps 2 and 3 on an already grown device."""
    return _expand_device(dev, dev.size, None)


def _check_scratch(dev: BlockDevice, path: Path | None) -> None:
    scratch_partitions(dev, path=path)


def _expand_device(dev: BlockDevice, old_size: int, path: Path | None) -> ExpandResult:
    table, data = scratch_partitions(dev, path=path)
    ss = table.sector_size
    if dev.size % ss:
        raise ScratchError(f"disk size {dev.size} is not a multiple of {ss}-byte sectors")
    if table.backup_lba != dev.size // ss - 1 or table.damaged:
        table.move_backup_to_end(dev.size // ss)
    index = table.partitions.index(data)
    new_end = data_partition_end_lba(table.last_usable_lba, ss)
    if new_end > data.last_lba:
        data = table.grow_partition(index, new_end)
    write_gpt(dev, table)
    dev.flush()
    volume = extend_volume(WindowDevice(dev, data.first_lba * ss, data.size_lba * ss))
    dev.flush()
    return ExpandResult(old_size, dev.size, data.size_lba * ss, volume)
