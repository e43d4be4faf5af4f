"""Scratch disks as Windows formats them, checked by qemu-img, sgdisk, sfdisk, ntfs-3g, dissect."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from dissect.hypervisor import vhdx as dissect_vhdx
from dissect.ntfs import NTFS

from cimsnap.errors import AlreadyExistsError, UsageError
from cimsnap.formats import vhdx
from cimsnap.formats.blockdev import MemoryDevice, RawFileDevice
from cimsnap.formats.gpt import BASIC_DATA, MICROSOFT_RESERVED, read_gpt
from cimsnap.scratch import (
    ScratchError,
    create_scratch,
    format_scratch,
    partition_info,
    scratch_info,
)
from cimsnap.scratch.format import MSR_END
from tests.formats.ntfs.helpers import ntfs_checks, run_tool
from tests.scratch.scratch_helpers import MiB, copy_range_sparse, extract_partition, qemu_raw

GiB = 1 << 30


class _Slice:
    """A file-like view of part of another file-like (for dissect.ntfs on a partition)."""

    def __init__(self, fh, offset: int, size: int) -> None:  # type: ignore[no-untyped-def]
        self.fh, self.offset, self.size_, self.pos = fh, offset, size, 0

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = {0: pos, 1: self.pos + pos, 2: self.size_ + pos}[whence]
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        n = self.size_ - self.pos if n < 0 else min(n, self.size_ - self.pos)
        self.fh.seek(self.offset + self.pos)
        data = self.fh.read(n)
        self.pos += len(data)
        return data


@pytest.fixture(scope="module")
def default_scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch made with the defaults (10 GiB, 1 MiB blocks), like containerd's."""
    path = tmp_path_factory.mktemp("scratch") / "blank-base.vhdx"
    create_scratch(path)
    return path


def test_vhdx_is_valid_and_small(default_scratch: Path) -> None:
    vhdx.check(default_scratch)
    check = run_tool("qemu-img", "check", default_scratch)
    assert "No errors were found" in check.stdout
    info = json.loads(run_tool("qemu-img", "info", "--output=json", default_scratch).stdout)
    assert info["format"] == "vhdx" and info["virtual-size"] == 10 * GiB
    assert os.stat(default_scratch).st_blocks * 512 < 8 * MiB


def test_sgdisk_sees_windows_layout_and_same_guids(default_scratch: Path, tmp_path: Path) -> None:
    raw = qemu_raw(default_scratch, tmp_path / "disk.raw")
    verify = run_tool("sgdisk", "-v", raw).stdout
    assert "No problems found" in verify
    listing = run_tool("sgdisk", "-p", raw).stdout
    lines = [line.split() for line in listing.splitlines() if line.strip()[:1].isdigit()]
    assert [(row[0], row[5]) for row in lines] == [("1", "0C01"), ("2", "0700")]
    assert "Microsoft reserved" in listing and "Basic data partition" in listing
    disk_guid, partition_guid = partition_info(default_scratch)
    assert f"Disk identifier (GUID): {str(disk_guid).upper()}" in listing
    part2 = run_tool("sgdisk", "-i", "2", raw).stdout
    assert f"Partition unique GUID: {str(partition_guid).upper()}" in part2
    assert "Partition name: 'Basic data partition'" in part2
    part1 = run_tool("sgdisk", "-i", "1", raw).stdout
    assert "Partition name: 'Microsoft reserved partition'" in part1
    sf = json.loads(run_tool("sfdisk", "--json", raw).stdout)["partitiontable"]
    starts = [p["start"] for p in sf["partitions"]]
    ends = [p["start"] + p["size"] for p in sf["partitions"]]
    assert starts == [34, MSR_END // 512]
    assert ends[0] == MSR_END // 512 and ends[1] % 2048 == 0
    assert 10 * GiB - ends[1] * 512 == 1 * MiB  # the last whole MiB before the backup GPT


def test_volume_checks_with_ntfs3g(default_scratch: Path, tmp_path: Path) -> None:
    info = scratch_info(default_scratch)
    raw = qemu_raw(default_scratch, tmp_path / "disk.raw")
    part = copy_range_sparse(raw, info.partition_offset, info.partition_size, tmp_path / "p.img")
    ntfs_checks(part)
    out = run_tool("ntfsinfo", "-m", part).stdout
    assert "Volume Version: 3.1" in out and "Cluster Size: 4096" in out
    listing = run_tool("ntfsls", "-a", part).stdout.splitlines()
    assert sorted(listing) == ["System Volume Information", "WcSandboxState"]
    for name in listing:
        detail = run_tool("ntfsinfo", "-F", f"/{name}", part).stdout
        assert "HIDDEN SYSTEM (0x00000006)" in detail
    assert info.volume is not None and info.volume.size == info.partition_size - 4096


def test_dissect_reads_through_the_vhdx(default_scratch: Path) -> None:
    info = scratch_info(default_scratch)
    with open(default_scratch, "rb") as fh:
        disk = dissect_vhdx.VHDX(fh)
        fs = NTFS(_Slice(disk, info.partition_offset, info.partition_size))
        names = fs.mft.get("\\").listdir()
        assert {"System Volume Information", "WcSandboxState", "$MFT"} <= set(names)
        for name in ("System Volume Information", "WcSandboxState"):
            si = fs.mft.get(name).attributes[0x10][0]
            sd = fs.secure.lookup(si.security_id)
            assert [str(a.sid) for a in sd.dacl.ace] == ["S-1-5-18"]
            assert si.file_attributes == 0x6


def test_4k_logical_sectors(tmp_path: Path) -> None:
    path = tmp_path / "4k.vhdx"
    create_scratch(path, size=256 * MiB, logical_sector_size=4096)
    with vhdx.open_disk(path) as disk:
        table = read_gpt(disk, sector_size=4096)
        assert table.first_usable_lba == 6
        assert [p.type_guid for p in table.partitions] == [MICROSOFT_RESERVED, BASIC_DATA]
        assert table.partitions[1].first_lba * 4096 == MSR_END
    info = scratch_info(path)
    assert info.sector_size == 4096 and info.volume is not None
    part = extract_partition(path, info.partition_offset, info.partition_size, tmp_path / "p")
    ntfs_checks(part)


def test_format_scratch_on_paths_and_devices(tmp_path: Path) -> None:
    # An existing empty VHDX (what Windows' FormatWritableLayerVhd is given).
    path = tmp_path / "empty.vhdx"
    vhdx.create(path, 128 * MiB)
    guid = uuid.UUID("01234567-89ab-cdef-0123-456789abcdef")
    layout = format_scratch(path, disk_guid=guid)
    assert partition_info(path) == (guid, layout.partition_guid)
    # A raw image, and an in-memory device that is not zero to begin with.
    raw = tmp_path / "disk.raw"
    RawFileDevice.create(raw, 64 * MiB).close()
    format_scratch(raw)
    run_tool("sgdisk", "-v", raw)
    dev = MemoryDevice(data=b"\xa5" * (64 * MiB))
    layout = format_scratch(dev)
    assert partition_info(dev).partition_guid == layout.partition_guid
    part = tmp_path / "mem-part.img"
    part.write_bytes(
        dev.buf[layout.partition_offset : layout.partition_offset + layout.partition_size]
    )
    ntfs_checks(part)


def test_create_scratch_is_all_or_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.vhdx"
    create_scratch(path, size=64 * MiB)
    with pytest.raises(AlreadyExistsError):
        create_scratch(path, size=64 * MiB)
    with pytest.raises(UsageError):
        create_scratch(tmp_path / "tiny.vhdx", size=8 * MiB)
    with pytest.raises(ScratchError):
        format_scratch(MemoryDevice(8 * MiB))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.vhdx"]  # no temporary left over
