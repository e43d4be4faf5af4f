"""Creating dynamic and fixed disks, reading and writing them, checked with qemu-img."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from cimsnap.errors import AlreadyExistsError, UsageError
from cimsnap.formats.blockdev import BlockDevice
from cimsnap.formats.vhdx import VhdxError, check, create, open_disk
from tests.conftest import require_tool
from tests.formats.vhdx.helpers import pattern, qemu_raw, random_writes, run

MiB = 1 << 20
GiB = 1 << 30


def test_fresh_10gib_dynamic_disk_is_sparse_and_valid(tmp_path: Path) -> None:
    path = tmp_path / "d.vhdx"
    create(path, 10 * GiB)
    assert os.stat(path).st_blocks * 512 < 1 * MiB
    with open_disk(path) as disk:
        assert isinstance(disk, BlockDevice)
        assert disk.size == disk.virtual_size == 10 * GiB
        assert disk.block_size == MiB
        assert (disk.logical_sector_size, disk.physical_sector_size) == (512, 4096)
        assert not disk.is_differencing and disk.parent is None
        assert disk.read_at(10 * GiB - 4096, 4096) == bytes(4096)
    check(path)
    require_tool("qemu-img")
    proc = run("qemu-img", "check", path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    meta = json.loads(run("qemu-img", "info", "--output=json", path).stdout)
    assert meta["format"] == "vhdx"
    assert meta["virtual-size"] == 10 * GiB


@pytest.mark.parametrize(
    ("size", "block_size", "lss", "fixed"),
    [
        (64 * MiB, MiB, 512, False),
        (48 * MiB + 512, 2 * MiB, 512, False),  # last block only partly inside the disk
        (40 * MiB, 32 * MiB, 4096, False),
        (24 * MiB, MiB, 512, True),
        (20 * MiB + 4096, 4 * MiB, 4096, True),
    ],
)
def test_random_writes_read_back_and_match_qemu(
    tmp_path: Path, size: int, block_size: int, lss: int, fixed: bool
) -> None:
    require_tool("qemu-img")
    path = tmp_path / "d.vhdx"
    create(path, size, block_size=block_size, logical_sector_size=lss, fixed=fixed)
    model = bytearray(size)
    rng = random.Random(size ^ block_size)
    with open_disk(path, writable=True) as disk:
        assert disk.is_fixed == fixed
        random_writes(disk, model, rng, 40, 3 * MiB)
        disk.write_at(size - 3, b"end")  # the very last bytes
        model[size - 3 :] = b"end"
        assert disk.read_at(0, size) == model
    with open_disk(path) as disk:
        assert disk.read_at(0, size) == model
    check(path)
    if lss != 512:
        # qemu's VHDX driver supports 512-byte logical sectors only; libvhdi reads 4 KiB ones.
        pyvhdi = pytest.importorskip("pyvhdi")
        reader = pyvhdi.file()
        reader.open(str(path))
        assert reader.get_media_size() == size
        assert reader.read_buffer_at_offset(size, 0) == model
        reader.close()
        return
    raw = tmp_path / "model.raw"
    raw.write_bytes(model)
    for args in (("check", path), ("compare", "-f", "vhdx", "-F", "raw", path, raw)):
        proc = run("qemu-img", *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    meta = json.loads(run("qemu-img", "info", "--output=json", path).stdout)
    assert meta["virtual-size"] == size
    assert qemu_raw(path, tmp_path / "q.raw") == model


def test_fixed_disk_maps_every_block_but_stays_sparse(tmp_path: Path) -> None:
    path = tmp_path / "f.vhdx"
    create(path, 256 * MiB, fixed=True)
    assert os.stat(path).st_size >= 256 * MiB
    assert os.stat(path).st_blocks * 512 < MiB
    with open_disk(path) as disk:
        states = {disk.payload(b)[0] for b in range(disk.geometry.data_blocks)}
        assert states == {6}  # PAYLOAD_BLOCK_FULLY_PRESENT
        assert disk.is_fixed


def test_write_session_changes_data_write_guid_once(tmp_path: Path) -> None:
    path = tmp_path / "d.vhdx"
    create(path, 16 * MiB)
    with open_disk(path) as disk:
        before = disk.data_write_guid
    with open_disk(path, writable=True) as disk:
        assert disk.data_write_guid == before  # opening alone changes nothing
        disk.write_at(0, b"a")
        during = disk.data_write_guid
        disk.write_at(MiB * 5, b"b")
        assert disk.data_write_guid == during != before
    with open_disk(path) as disk:
        assert disk.data_write_guid == during
        assert disk.header.log_guid.int == 0  # closed cleanly
    with open_disk(path, writable=True) as disk:
        disk.read_at(0, 10)  # reads are not modifications
    with open_disk(path) as disk:
        assert disk.data_write_guid == during


def test_read_only_open_does_not_touch_the_file(tmp_path: Path) -> None:
    path = tmp_path / "d.vhdx"
    create(path, 16 * MiB)
    before = path.read_bytes()
    with open_disk(path) as disk:
        disk.read_at(0, 16 * MiB)
        with pytest.raises(UsageError):
            disk.write_at(0, b"x")
    assert path.read_bytes() == before


def test_second_writer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.vhdx"
    create(path, 16 * MiB)
    with open_disk(path, writable=True), pytest.raises(VhdxError, match="open for writing"):
        open_disk(path, writable=True)


def test_out_of_range_access_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "d.vhdx"
    create(path, 16 * MiB)
    with open_disk(path, writable=True) as disk:
        with pytest.raises(VhdxError, match="outside the virtual disk"):
            disk.read_at(16 * MiB - 1, 2)
        with pytest.raises(VhdxError, match="outside the virtual disk"):
            disk.write_at(-1, b"x")
        assert disk.read_at(16 * MiB, 0) == b""


def test_create_refuses_to_replace_and_validates_parameters(tmp_path: Path) -> None:
    path = tmp_path / "d.vhdx"
    create(path, 16 * MiB)
    with pytest.raises(AlreadyExistsError):
        create(path, 16 * MiB)
    for kwargs in (
        {"block_size": 3 * MiB},
        {"block_size": 512 * 1024},
        {"block_size": 512 * MiB},
        {"logical_sector_size": 1024},
        {"physical_sector_size": 2048},
    ):
        with pytest.raises(UsageError):
            create(tmp_path / "x.vhdx", 16 * MiB, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        create(tmp_path / "x.vhdx", 1000)  # not a multiple of 512
    with pytest.raises(UsageError):
        create(tmp_path / "x.vhdx", 65 << 40)  # over 64 TiB
    with pytest.raises(UsageError):
        create(tmp_path / "nodir" / "x.vhdx", 16 * MiB)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.vhdx"]  # nothing left behind


def test_unaligned_small_writes_across_block_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "d.vhdx"
    create(path, 8 * MiB)
    model = bytearray(8 * MiB)
    with open_disk(path, writable=True) as disk:
        for i, offset in enumerate((MiB - 1, 2 * MiB - 300, 3 * MiB + 7, 0)):
            data = pattern(i, 700)
            disk.write_at(offset, data)
            model[offset : offset + 700] = data
        assert disk.read_at(0, 8 * MiB) == model
