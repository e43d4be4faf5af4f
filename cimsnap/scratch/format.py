"""Format an empty disk as a container scratch, like Windows' FormatWritableLayerVhd.

The result, as hcsshim's GetScratchVhdPartitionInfo expects it: a GPT disk with exactly two
partitions, a Microsoft Reserved partition and a Basic Data partition holding an NTFS volume with
the hidden+system directories "System Volume Information" and "WcSandboxState".

Partition geometry (Windows' exact numbers for this API are not public; the choice is isolated
in the constants below and documented in the README's compatibility notes):

* the MSR starts at the first usable LBA (34 with 512-byte sectors, 6 with 4 KiB ones) and ends
  at 16 MiB: Windows 10 and later make the MSR 16 MB (Microsoft's "Windows and GPT FAQ"), and a
  data disk initialised by Windows has its MSR at the first usable LBA ("offset 17 KB" in
  diskpart) and its data partition 1 MiB aligned right after it, at 16 MiB;
* the Basic Data partition ends on the last whole MiB before the backup GPT (partition sizes in
  whole MiB, which leaves 1007.5 KiB unpartitioned at the end of the disk);
* partition names are the ones Windows writes ("Microsoft reserved partition",
  "Basic data partition"); attributes are zero (no "no drive letter" bit: hcsshim attaches
  scratch disks with the no-drive-letter flag instead).

None of this was checked against a disk made by FormatWritableLayerVhd itself (none is public):
hcsshim only requires GPT, two partitions, the second of type Basic Data.

:func:`create_scratch` makes the dynamic VHDX and formats it, crash-safely (temporary name in
the same directory, fsync, then link into place).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from cimsnap.errors import AlreadyExistsError, UsageError
from cimsnap.formats import vhdx
from cimsnap.formats.blockdev import BlockDevice, WindowDevice
from cimsnap.formats.gpt import BASIC_DATA, MICROSOFT_RESERVED, new_table, write_gpt
from cimsnap.formats.ntfs import NtfsLayout, format_volume
from cimsnap.scratch.partition import ScratchError, open_image, sector_size_of

MiB = 1 << 20
GiB = 1 << 30
DEFAULT_SIZE = 10 * GiB
DEFAULT_BLOCK_SIZE = 1 * MiB
PARTITION_ALIGNMENT = 1 * MiB
MSR_END = 16 * MiB  # the Basic Data partition starts here
MSR_NAME = "Microsoft reserved partition"
BASIC_DATA_NAME = "Basic data partition"
MIN_DISK_SIZE = MSR_END + PARTITION_ALIGNMENT + 8 * MiB


@dataclass(frozen=True)
class ScratchLayout:
    disk_guid: uuid.UUID
    partition_guid: uuid.UUID
    disk_size: int
    sector_size: int
    partition_offset: int
    partition_size: int
    volume: NtfsLayout


def data_partition_end_lba(last_usable_lba: int, sector_size: int) -> int:
    """Last LBA of the Basic Data partition: the last whole MiB before the backup GPT."""
    per_mib = PARTITION_ALIGNMENT // sector_size
    return (last_usable_lba + 1) // per_mib * per_mib - 1


def format_scratch_device(
    dev: BlockDevice,
    *,
    sector_size: int | None = None,
    zeroed: bool = False,
    disk_guid: uuid.UUID | None = None,
    partition_guid: uuid.UUID | None = None,
    label: str = "",
    timestamp: int | None = None,
) -> ScratchLayout:
    """Partition and format ``dev`` (a whole disk).  ``zeroed``: the disk reads as zeros."""
    ss = sector_size or sector_size_of(dev) or 512
    if dev.size < MIN_DISK_SIZE:
        raise ScratchError(
            f"a scratch disk needs at least {MIN_DISK_SIZE // MiB} MiB; this one has "
            f"{dev.size} bytes"
        )
    table = new_table(dev.size, sector_size=ss, disk_guid=disk_guid)
    table.add_partition(
        MICROSOFT_RESERVED, table.first_usable_lba, MSR_END // ss - 1, name=MSR_NAME
    )
    data = table.add_partition(
        BASIC_DATA,
        MSR_END // ss,
        data_partition_end_lba(table.last_usable_lba, ss),
        name=BASIC_DATA_NAME,
        unique_guid=partition_guid,
    )
    offset, length = data.first_lba * ss, data.size_lba * ss
    # The volume first, the partition table last: an interrupted format leaves no table.
    volume = format_volume(
        WindowDevice(dev, offset, length),
        sector_size=ss,
        hidden_sectors=data.first_lba,
        label=label,
        timestamp=timestamp,
        zeroed=zeroed,
    )
    write_gpt(dev, table)
    dev.flush()
    return ScratchLayout(table.disk_guid, data.unique_guid, dev.size, ss, offset, length, volume)


def format_scratch(
    target: str | os.PathLike[str] | BlockDevice,
    *,
    zeroed: bool | None = None,
    disk_guid: uuid.UUID | None = None,
    partition_guid: uuid.UUID | None = None,
    label: str = "",
    timestamp: int | None = None,
) -> ScratchLayout:
    """Format a disk (a VHDX or raw image path, or an open device) as a container scratch.

    For a path, whether the disk still reads as zeros is found out (a VHDX with no payload
    block, a raw file with no data); an open device is assumed dirty unless ``zeroed`` says so.
    """
    options = {
        "disk_guid": disk_guid,
        "partition_guid": partition_guid,
        "label": label,
        "timestamp": timestamp,
    }
    if not isinstance(target, (str, os.PathLike)):
        return format_scratch_device(target, zeroed=bool(zeroed), **options)  # type: ignore[arg-type]
    with open_image(target, writable=True) as dev:
        is_zero = _reads_as_zeros(dev) if zeroed is None else zeroed
        return format_scratch_device(dev, zeroed=is_zero, **options)  # type: ignore[arg-type]


def _reads_as_zeros(dev: BlockDevice) -> bool:
    """True when the device certainly reads as zeros (no payload, no parent, no data)."""
    if isinstance(dev, vhdx.VhdxDisk):
        if dev.is_differencing:
            return False
        from cimsnap.formats.vhdx.structs import (
            PAYLOAD_BLOCK_FULLY_PRESENT,
            PAYLOAD_BLOCK_PARTIALLY_PRESENT,
        )

        present = (PAYLOAD_BLOCK_FULLY_PRESENT, PAYLOAD_BLOCK_PARTIALLY_PRESENT)
        return all(dev.payload(b)[0] not in present for b in range(dev.geometry.data_blocks))
    path = getattr(dev, "path", None)
    if path is None:
        return False
    with open(path, "rb") as f:
        try:
            os.lseek(f.fileno(), 0, os.SEEK_DATA)
        except OSError:
            return True  # ENXIO: no data anywhere in the file
    return False


def create_scratch(
    path: str | os.PathLike[str],
    size: int = DEFAULT_SIZE,
    block_size: int = DEFAULT_BLOCK_SIZE,
    *,
    logical_sector_size: int = 512,
    disk_guid: uuid.UUID | None = None,
    partition_guid: uuid.UUID | None = None,
) -> ScratchLayout:
    """Create a dynamic VHDX at ``path`` and format it as a scratch disk (all or nothing)."""
    final = Path(path)
    if final.exists():
        raise AlreadyExistsError("the scratch disk already exists", path=final)
    if size < MIN_DISK_SIZE:
        raise UsageError(f"a scratch disk needs at least {MIN_DISK_SIZE // MiB} MiB", path=final)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        vhdx.create(tmp, size, block_size=block_size, logical_sector_size=logical_sector_size)
        with vhdx.open_disk(tmp, writable=True) as disk:
            layout = format_scratch_device(
                disk, zeroed=True, disk_guid=disk_guid, partition_guid=partition_guid
            )
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, final)  # fails instead of replacing a file that appeared meanwhile
        except FileExistsError:
            raise AlreadyExistsError("the scratch disk already exists", path=final) from None
        except OSError:  # no hard links on this filesystem
            if final.exists():
                raise AlreadyExistsError("the scratch disk already exists", path=final) from None
            os.rename(tmp, final)
        _fsync_dir(final.parent)
        return layout
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
