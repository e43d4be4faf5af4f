"""expand(): disk, backup GPT, partition and NTFS volume, on plain and differencing scratches."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from cimsnap.errors import UsageError
from cimsnap.formats import vhdx
from cimsnap.scratch import ScratchError, create_scratch, expand, partition_info, scratch_info
from tests.formats.ntfs.helpers import ntfs3g_mount, ntfs_checks, run_tool
from tests.scratch.scratch_helpers import MiB, extract_partition, qemu_raw

OLD, NEW = 64 * MiB, 320 * MiB


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_more_than(mountpoint: Path, limit: int) -> int:
    """Write one file larger than ``limit`` bytes; return its size."""
    size = (limit // MiB + 16) * MiB
    block = os.urandom(1 * MiB)
    with open(mountpoint / "bigger-than-before.bin", "wb") as f:
        for _ in range(size // MiB):
            f.write(block)
    return size


def _grown_volume_works(image: Path, tmp_path: Path, old_free: int) -> None:
    """The partition of ``image`` is consistent and ntfs-3g can fill it past the old free space."""
    info = scratch_info(image)
    part = extract_partition(image, info.partition_offset, info.partition_size, tmp_path / "p.img")
    ntfs_checks(part)
    with ntfs3g_mount(part, tmp_path / "mnt") as mnt:
        stat = os.statvfs(mnt)
        assert stat.f_bavail * stat.f_frsize > old_free + 200 * MiB
        written = _write_more_than(mnt, old_free)
    assert (tmp_path / "mnt" / "bigger-than-before.bin").exists() is False  # unmounted
    ntfs_checks(part)
    listing = run_tool("ntfsls", "-l", part).stdout
    assert str(written) in listing


def test_expand_plain_scratch(tmp_path: Path) -> None:
    path = tmp_path / "sandbox.vhdx"
    create_scratch(path, size=OLD)
    before = scratch_info(path)
    assert before.volume is not None
    result = expand(path, NEW)
    assert (result.old_disk_size, result.new_disk_size) == (OLD, NEW)
    after = scratch_info(path)
    assert (after.disk_guid, after.partition_guid) == (before.disk_guid, before.partition_guid)
    assert after.partition_offset == before.partition_offset
    assert after.partition_size == NEW - 16 * MiB - 1 * MiB
    assert after.volume is not None and after.volume.size == after.partition_size - 4096
    assert after.gpt_damage == []
    vhdx.check(path)
    raw = qemu_raw(path, tmp_path / "disk.raw")
    assert "No problems found" in run_tool("sgdisk", "-v", raw).stdout
    sf = json.loads(run_tool("sfdisk", "--json", raw).stdout)["partitiontable"]
    assert sf["partitions"][1]["size"] * 512 == after.partition_size
    assert sf["lastlba"] == NEW // 512 - 34
    _grown_volume_works(path, tmp_path, before.volume.free_clusters * 4096)


def test_expand_differencing_child_leaves_parent_alone(tmp_path: Path) -> None:
    base = tmp_path / "blank-base.vhdx"
    child = tmp_path / "sandbox.vhdx"
    create_scratch(base, size=OLD)
    vhdx.create_differencing(child, base)
    base_hash = _sha256(base)
    before = scratch_info(child)
    assert before.volume is not None
    expand(child, NEW)
    assert _sha256(base) == base_hash
    vhdx.check(child)  # chain and parent linkage intact
    after = scratch_info(child)
    assert partition_info(child) == partition_info(base)
    assert after.partition_size == NEW - 17 * MiB
    assert after.volume is not None and after.volume.size == after.partition_size - 4096
    assert os.stat(child).st_blocks * 512 < 8 * MiB  # only the changed blocks are stored
    _grown_volume_works(child, tmp_path, before.volume.free_clusters * 4096)


def test_expand_raw_image(tmp_path: Path) -> None:
    path = tmp_path / "disk.vhdx"
    create_scratch(path, size=OLD)
    raw = qemu_raw(path, tmp_path / "disk.raw")
    expand(raw, NEW)
    assert raw.stat().st_size == NEW
    assert "No problems found" in run_tool("sgdisk", "-v", raw).stdout
    info = scratch_info(raw)
    assert info.volume is not None and info.volume.size == NEW - 17 * MiB - 4096
    with pytest.raises(UsageError, match="multiple"):
        expand(raw, NEW + 100)
    assert raw.stat().st_size == NEW


def test_same_size_finishes_an_interrupted_expansion(tmp_path: Path) -> None:
    path = tmp_path / "s.vhdx"
    create_scratch(path, size=OLD)
    vhdx.resize(path, NEW)  # the disk grew, then the process died
    assert scratch_info(path).partition_size == OLD - 17 * MiB
    expand(path, NEW)
    info = scratch_info(path)
    assert info.partition_size == NEW - 17 * MiB
    assert info.volume is not None and info.volume.size == info.partition_size - 4096
    expand(path, NEW)  # and again: nothing left to do
    assert scratch_info(path) == info


def test_refusals_leave_the_disk_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "s.vhdx"
    create_scratch(path, size=128 * MiB)
    digest = _sha256(path)
    with pytest.raises(UsageError, match="cannot shrink"):
        expand(path, OLD)
    with pytest.raises(UsageError):
        expand(path, 0)
    assert _sha256(path) == digest
    not_scratch = tmp_path / "plain.vhdx"
    vhdx.create(not_scratch, OLD)
    digest = _sha256(not_scratch)
    with pytest.raises(ScratchError, match="expected partition style GPT"):
        expand(not_scratch, NEW)
    assert _sha256(not_scratch) == digest
