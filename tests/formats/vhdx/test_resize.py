"""Growing disks: data kept, new space zero, BAT relocated when it must grow; qemu-img agrees."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cimsnap.errors import UsageError
from cimsnap.formats.vhdx import (
    ParentLinkageError,
    check,
    create,
    create_differencing,
    info,
    open_disk,
    resize,
)
from tests.conftest import require_tool
from tests.formats.vhdx.helpers import pattern, run

MiB = 1 << 20
GiB = 1 << 30


def _qemu_ok(path: Path, size: int) -> None:
    require_tool("qemu-img")
    proc = run("qemu-img", "check", path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(run("qemu-img", "info", "--output=json", path).stdout)["virtual-size"] == size


def test_grow_within_the_bat_region(tmp_path: Path) -> None:
    path = tmp_path / "d.vhdx"
    create(path, 8 * MiB)
    data = pattern(1, 3 * MiB)
    with open_disk(path, writable=True) as disk:
        disk.write_at(5 * MiB, data)
        bat_before = disk.bat_region.file_offset
    resize(path, 64 * GiB)
    with open_disk(path, writable=True) as disk:
        assert disk.size == 64 * GiB
        assert disk.bat_region.file_offset == bat_before
        assert disk.read_at(5 * MiB, 3 * MiB) == data
        assert disk.read_at(8 * MiB, 4096) == bytes(4096)
        disk.write_at(64 * GiB - 5, b"last!")
    check(path)
    _qemu_ok(path, 64 * GiB)
    assert os.stat(path).st_blocks * 512 < 8 * MiB


def test_grow_relocates_a_full_bat(tmp_path: Path) -> None:
    path = tmp_path / "d.vhdx"
    create(path, GiB)
    data = pattern(2, MiB)
    with open_disk(path, writable=True) as disk:
        disk.write_at(100 * MiB, data)
    resize(path, 300 * GiB)  # 307200 entries: more than the 1 MiB BAT region holds
    with open_disk(path, writable=True) as disk:
        assert disk.bat_region.file_offset > 3 * MiB
        assert disk.bat_region.length >= disk.geometry.bat_bytes
        assert disk.read_at(100 * MiB, MiB) == data
        disk.write_at(299 * GiB, data)
    check(path)
    _qemu_ok(path, 300 * GiB)
    with open_disk(path) as disk:
        assert disk.read_at(299 * GiB, MiB) == data
        assert disk.region_table_valid == (True, True)


def test_grow_fixed_disk_keeps_it_fixed_and_sparse(tmp_path: Path) -> None:
    path = tmp_path / "f.vhdx"
    create(path, 16 * MiB, fixed=True)
    resize(path, 40 * MiB)
    with open_disk(path) as disk:
        assert disk.is_fixed
        assert {disk.payload(b)[0] for b in range(disk.geometry.data_blocks)} == {6}
        assert disk.read_at(0, 40 * MiB) == bytes(40 * MiB)
    check(path)
    _qemu_ok(path, 40 * MiB)
    assert os.stat(path).st_blocks * 512 < 2 * MiB


def test_grow_clears_stale_bytes_past_the_old_end(tmp_path: Path) -> None:
    """A last block that reaches past the old end may hold old bytes there: they must not show."""
    path = tmp_path / "d.vhdx"
    create(path, MiB + 512, block_size=2 * MiB)
    with open_disk(path, writable=True) as disk:
        disk.write_at(0, b"a" * 512)
        offset = disk.payload(0)[1]
    with path.open("r+b") as f:  # garbage beyond the virtual end, inside the block
        f.seek(offset + MiB + 512)
        f.write(b"\xee" * 4096)
    resize(path, 4 * MiB)
    with open_disk(path) as disk:
        assert disk.read_at(MiB + 512, 4096) == bytes(4096)
        assert disk.read_at(0, 512) == b"a" * 512


def test_shrink_and_bad_sizes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.vhdx"
    create(path, 8 * MiB)
    before = path.read_bytes()
    with pytest.raises(UsageError, match="cannot shrink"):
        resize(path, 4 * MiB)
    with pytest.raises(UsageError, match="multiple"):
        resize(path, 9 * MiB + 1)
    with pytest.raises(UsageError, match="64 TiB"):
        resize(path, 65 << 40)
    resize(path, 8 * MiB)  # same size: nothing to do
    assert path.read_bytes() == before


def test_resizing_a_parent_breaks_its_children(tmp_path: Path) -> None:
    base, child = tmp_path / "b.vhdx", tmp_path / "c.vhdx"
    create(base, 8 * MiB)
    create_differencing(child, base)
    resize(base, 16 * MiB)
    with pytest.raises(ParentLinkageError):
        open_disk(child)


def test_grow_4k_sector_differencing_disk(tmp_path: Path) -> None:
    base, child = tmp_path / "b.vhdx", tmp_path / "c.vhdx"
    create(base, 8 * MiB, logical_sector_size=4096)
    with open_disk(base, writable=True) as disk:
        disk.write_at(0, pattern(3, 8 * MiB))
    create_differencing(child, base)
    resize(child, 12 * MiB + 4096)
    with open_disk(child) as disk:
        assert disk.read_at(0, 8 * MiB) == pattern(3, 8 * MiB)
        assert disk.read_at(8 * MiB, 4 * MiB + 4096) == bytes(4 * MiB + 4096)
    assert info(child)["virtual_size"] == 12 * MiB + 4096
    check(child)
