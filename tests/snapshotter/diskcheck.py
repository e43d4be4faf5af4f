"""Independent checks of scratch disks: dissect and libvhdi read the chain, sgdisk the GPT.

Nothing here uses cimsnap's own VHDX/GPT/NTFS code: the disk is read through its parent chain
by dissect.hypervisor, libvhdi (pyvhdi) confirms the parent link, the GPT is judged by
``sgdisk`` on a sparse image holding the disk's first and last MiB at their places, and the NTFS
volume size is read from the boot sector of the basic-data partition (documented offsets).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyvhdi
from dissect.hypervisor.disk.vhdx import VHDX

MIB = 1 << 20
BASIC_DATA = uuid.UUID("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7")
MS_RESERVED = uuid.UUID("E3C9E316-0B5C-4DB8-817D-F92DF00215AE")


class DiskChain:
    """A VHDX and its parents as dissect.hypervisor opens them.

    dissect resolves each parent itself from the child's parent locator (relative path first,
    then the absolute one), so this also checks that a copied disk still finds its parent from
    its new place.  (libvhdi cannot be used for the data: it reads a differencing chunk's
    sector bitmap from file offset 0 when that chunk has no sector-bitmap block, see
    libvhdi_block_allocation_table.c, so it misreads blocks a fresh differencing disk has never
    written; :func:`libvhdi_link` uses it for the chain's metadata.)
    """

    def __init__(self, path: Path) -> None:
        self._fh = open(path, "rb")  # noqa: SIM115 - closed in close()
        self.top = VHDX(self._fh)
        self.parent_paths: list[Path] = []
        layer = self.top.parent
        while layer is not None:
            # dissect joins an absolute locator path onto the directory ("//tmp/..."): resolve
            self.parent_paths.append(Path(layer.path).resolve())
            layer = layer.parent

    @property
    def media_size(self) -> int:
        return int(self.top.size)

    def read(self, offset: int, size: int) -> bytes:
        self.top.seek(offset)
        return bytes(self.top.read(size))

    def close(self) -> None:
        layer = self.top.parent
        while layer is not None:
            layer.fh.close()
            layer = layer.parent
        self._fh.close()

    def __enter__(self) -> DiskChain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def libvhdi_link(child: Path) -> tuple[Path, int]:
    """(parent file named by the child, its media size) per libvhdi, which must agree that the
    parent's identifier is the one the child links to."""
    top = pyvhdi.file()
    top.open(str(child))
    try:
        parent_path = Path(top.get_parent_filename())
        parent = pyvhdi.file()
        parent.open(str(parent_path))
        try:
            assert top.parent_identifier == parent.identifier, "libvhdi: parent linkage differs"
            top.set_parent(parent)
            return parent_path, int(top.media_size)
        finally:
            parent.close()
    finally:
        top.close()


@dataclass(frozen=True)
class Partition:
    type_guid: uuid.UUID
    first_lba: int
    last_lba: int

    @property
    def size(self) -> int:
        return (self.last_lba - self.first_lba + 1) * 512


def gpt_partitions(chain: DiskChain) -> list[Partition]:
    """The used entries of the primary GPT (read by hand from LBA 1)."""
    header = chain.read(512, 92)
    assert header[:8] == b"EFI PART", "no GPT header at LBA 1"
    entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
    table = chain.read(entries_lba * 512, count * entry_size)
    parts = []
    for i in range(count):
        raw = table[i * entry_size : (i + 1) * entry_size]
        type_guid = uuid.UUID(bytes_le=raw[:16])
        if type_guid.int == 0:
            continue
        first, last = struct.unpack_from("<QQ", raw, 32)
        parts.append(Partition(type_guid, first, last))
    return parts


def ntfs_volume_size(chain: DiskChain, partition: Partition) -> int:
    """Bytes of the NTFS volume (boot sector: bytes/sector @0x0B, total sectors @0x28)."""
    boot = chain.read(partition.first_lba * 512, 512)
    assert boot[3:11] == b"NTFS    ", "no NTFS boot sector at the partition start"
    bytes_per_sector = struct.unpack_from("<H", boot, 0x0B)[0]
    total_sectors = struct.unpack_from("<Q", boot, 0x28)[0]
    return int(total_sectors * bytes_per_sector)


def sgdisk_verify(chain: DiskChain, workdir: Path) -> str:
    """Run ``sgdisk --verify`` on a sparse image holding the disk's first and last MiB."""
    sgdisk = shutil.which("sgdisk")
    assert sgdisk is not None
    image = workdir / "gpt-ends.img"
    size = chain.media_size
    with open(image, "wb") as f:
        f.truncate(size)
        f.seek(0)
        f.write(chain.read(0, MIB))
        f.seek(size - MIB)
        f.write(chain.read(size - MIB, MIB))
    try:
        proc = subprocess.run(
            [sgdisk, "--verify", str(image)], capture_output=True, text=True, check=False
        )
        return proc.stdout + proc.stderr
    finally:
        os.unlink(image)
