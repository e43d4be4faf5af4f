"""Differencing chains: reads through bitmaps and parents, locators, linkage, checked with
libvhdi (pyvhdi, vhdiinfo) and dissect.hypervisor."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

from cimsnap.formats.vhdx import (
    ParentLinkageError,
    ParentNotFoundError,
    VhdxError,
    check,
    create,
    create_differencing,
    info,
    open_disk,
    resize,
)
from tests.conftest import require_tool
from tests.formats.vhdx.helpers import pattern, random_writes, run

MiB = 1 << 20
SIZE = 24 * MiB


def _chain(tmp_path: Path, depth: int = 2) -> tuple[list[Path], bytearray]:
    """base <- child1 <- ... each written through the engine; returns paths and the model."""
    rng = random.Random(depth)
    model = bytearray(SIZE)
    paths = [tmp_path / "base.vhdx"]
    create(paths[0], SIZE)
    with open_disk(paths[0], writable=True) as disk:
        random_writes(disk, model, rng, 25, 2 * MiB)
    for level in range(1, depth):
        paths.append(tmp_path / f"child{level}.vhdx")
        create_differencing(paths[-1], paths[-2])
        with open_disk(paths[-1], writable=True) as disk:
            random_writes(disk, model, rng, 25, 300_000)  # mostly partial blocks
            disk.write_at(5 * MiB, pattern(level, 2 * MiB))  # and whole ones
            model[5 * MiB : 7 * MiB] = pattern(level, 2 * MiB)
    return paths, model


def _pyvhdi_chain(paths: list[Path]) -> object:
    pyvhdi = pytest.importorskip("pyvhdi")
    files = []
    for path in paths:
        f = pyvhdi.file()
        f.open(str(path))
        if files:
            f.set_parent(files[-1])
        files.append(f)
    return files[-1]


def test_chain_reads_identically_in_engine_libvhdi_and_dissect(tmp_path: Path) -> None:
    paths, model = _chain(tmp_path, depth=3)
    with open_disk(paths[-1]) as disk:
        assert disk.is_differencing and disk.parent is not None
        assert disk.parent.parent is not None and disk.parent.parent.parent is None
        assert disk.read_at(0, SIZE) == model
    check(paths[-1])
    top = _pyvhdi_chain(paths)
    assert top.read_buffer_at_offset(SIZE, 0) == model  # type: ignore[attr-defined]
    # dissect.hypervisor 3.21 drops sectors when a bitmap run in a *middle* layer starts inside
    # a byte and is shorter than the rest of that byte (its _iter_partial_runs), so it checks
    # the two-layer chain: the middle layer's own reads through its base.
    vhdx_mod = pytest.importorskip("dissect.hypervisor.disk.vhdx")
    with open_disk(paths[1]) as middle:
        assert vhdx_mod.VHDX(paths[1]).read(SIZE) == middle.read_at(0, SIZE)


def test_locator_holds_linkage_and_windows_relative_path(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    base = tmp_path / "x" / "p.vhdx"
    create(base, SIZE)
    create_differencing(tmp_path / "y" / "c.vhdx", base)
    create_differencing(tmp_path / "x" / "c.vhdx", base)
    far = info(tmp_path / "y" / "c.vhdx")["parent"]
    near = info(tmp_path / "x" / "c.vhdx")["parent"]
    assert far["relative_path"] == "..\\x\\p.vhdx"
    assert near["relative_path"] == ".\\p.vhdx"
    assert far["absolute_path"] == str(base)
    with open_disk(base) as disk:
        assert far["linkage"] == "{" + str(disk.data_write_guid) + "}"
    require_tool("vhdiinfo")
    out = run("vhdiinfo", tmp_path / "y" / "c.vhdx").stdout
    assert "Differential" in out
    with open_disk(base) as disk:
        assert f"Parent identifier\t: {disk.data_write_guid}" in out


def test_copied_child_finds_parent_by_absolute_path(tmp_path: Path) -> None:
    """The snapshotter copies blank.vhdx to snapshots/<id>/sandbox.vhdx."""
    paths, model = _chain(tmp_path)
    elsewhere = tmp_path / "snapshots" / "7"
    elsewhere.mkdir(parents=True)
    copy = elsewhere / "sandbox.vhdx"
    shutil.copyfile(paths[-1], copy)
    with open_disk(copy) as disk:
        assert disk.parent is not None
        assert Path(disk.parent.path) == paths[0]
        assert disk.read_at(0, SIZE) == model
    vhdx_mod = pytest.importorskip("dissect.hypervisor.disk.vhdx")
    assert vhdx_mod.VHDX(copy).read(SIZE) == model


def test_moved_chain_finds_parent_by_relative_path(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    paths, model = _chain(old)
    new = tmp_path / "new"
    old.rename(new)  # the absolute path in the locator is now wrong
    with open_disk(new / paths[-1].name) as disk:
        assert disk.parent is not None and Path(disk.parent.path).parent == new
        assert disk.read_at(0, SIZE) == model
    vhdx_mod = pytest.importorskip("dissect.hypervisor.disk.vhdx")
    assert vhdx_mod.VHDX(new / paths[-1].name).read(SIZE) == model


def test_modified_parent_breaks_linkage_in_engine_and_libvhdi(tmp_path: Path) -> None:
    paths, _model = _chain(tmp_path)
    top = _pyvhdi_chain(paths)  # linkage fine before
    del top
    with open_disk(paths[0], writable=True) as disk:
        disk.write_at(0, b"changed")
    with pytest.raises(ParentLinkageError) as err:
        open_disk(paths[1])
    message = str(err.value)
    assert str(paths[0]) in message and str(paths[1]) in message
    assert "linkage mismatch" in message
    with pytest.raises(ParentLinkageError):
        check(paths[1])
    status = info(paths[1])["parent"]["linkage_status"]
    assert status.startswith("mismatch")
    pyvhdi = pytest.importorskip("pyvhdi")
    parent, child = pyvhdi.file(), pyvhdi.file()
    parent.open(str(paths[0]))
    child.open(str(paths[1]))
    with pytest.raises(OSError, match="mismatch in identifier"):
        child.set_parent(parent)


def test_missing_parent_is_a_clear_error(tmp_path: Path) -> None:
    paths, _ = _chain(tmp_path)
    paths[0].unlink()
    with pytest.raises(ParentNotFoundError, match="parent disk not found"):
        open_disk(paths[1])
    with pytest.raises(ParentNotFoundError):
        check(paths[1])
    assert info(paths[1])["parent"]["linkage_status"].startswith("missing")


def test_child_larger_than_parent_reads_zeros_beyond_it(tmp_path: Path) -> None:
    paths, model = _chain(tmp_path)
    resize(paths[1], SIZE + 5 * MiB + 512)
    with open_disk(paths[1], writable=True) as disk:
        assert disk.size == SIZE + 5 * MiB + 512
        assert disk.read_at(0, SIZE) == model
        assert disk.read_at(SIZE, 5 * MiB + 512) == bytes(5 * MiB + 512)
        disk.write_at(SIZE + 5 * MiB, b"tail")
        assert disk.read_at(SIZE + 5 * MiB - 2, 8) == b"\0\0tail\0\0"
    check(paths[1])
    # libvhdi reads every block below state 6 from the parent, so it cannot read past the
    # parent's end; it agrees on the part the parent covers and on the block written past it
    # (a whole block of the child: no parent needed).
    top = _pyvhdi_chain(paths)
    assert top.read_buffer_at_offset(SIZE, 0) == model  # type: ignore[attr-defined]
    got = top.read_buffer_at_offset(512, SIZE + 5 * MiB)  # type: ignore[attr-defined]
    assert got == b"tail" + bytes(508)


def test_block_size_may_differ_from_parent(tmp_path: Path) -> None:
    base = tmp_path / "b.vhdx"
    create(base, SIZE, block_size=4 * MiB)
    model = bytearray(SIZE)
    with open_disk(base, writable=True) as disk:
        random_writes(disk, model, random.Random(5), 10, MiB)
    child = tmp_path / "c.vhdx"
    create_differencing(child, base, block_size=MiB)
    with open_disk(child, writable=True) as disk:
        assert disk.block_size == MiB
        random_writes(disk, model, random.Random(6), 10, 100_000)
        assert disk.read_at(0, SIZE) == model
    assert _pyvhdi_chain([base, child]).read_buffer_at_offset(SIZE, 0) == model  # type: ignore[attr-defined]


def test_parent_loop_is_detected(tmp_path: Path) -> None:
    a, b = tmp_path / "a.vhdx", tmp_path / "b.vhdx"
    create(b, SIZE)
    create_differencing(a, b)  # a -> b
    create_differencing(tmp_path / "b2.vhdx", a)  # b2 -> a (locator .\\a.vhdx)
    os.replace(tmp_path / "b2.vhdx", b)  # now b -> a -> b
    for path in (a, b):
        with pytest.raises(VhdxError, match="loops"):
            open_disk(path)
        with pytest.raises(VhdxError, match="loops"):
            check(path)
        assert info(path)["chain"][-1]["linkage_status"].startswith("loop")


def test_non_durable_creation_makes_the_same_valid_files(tmp_path: Path) -> None:
    base, child = tmp_path / "b.vhdx", tmp_path / "c.vhdx"
    create(base, SIZE, durable=False)
    create_differencing(child, base, durable=False)
    check(child)
    with open_disk(child) as disk:
        assert disk.parent is not None and disk.read_at(0, 4096) == bytes(4096)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.vhdx", "c.vhdx"]  # no temp files


def test_fresh_child_reads_its_parent_in_libvhdi_and_stays_small(tmp_path: Path) -> None:
    """An unwritten child spanning several sector-bitmap chunks reads as its parent everywhere.

    libvhdi misreads chunks that have no sector bitmap block, so new children carry (sparse,
    all-zero) bitmap blocks for every chunk; they must cost no stored bytes.
    """
    size = 9 << 30  # 3 chunks of 4 GiB at 512-byte sectors and 1 MiB blocks
    base, child = tmp_path / "base.vhdx", tmp_path / "child.vhdx"
    create(base, size)
    spots = [0, 3 * MiB, (4 << 30) + 7 * MiB, size - MiB]
    with open_disk(base, writable=True) as disk:
        for n, at in enumerate(spots):
            disk.write_at(at, pattern(n, MiB))
    create_differencing(child, base)
    check(child)
    assert os.stat(child).st_blocks * 512 < 256 * 1024
    top = _pyvhdi_chain([base, child])
    assert top.read_buffer_at_offset(MiB, 6 << 30) == bytes(MiB)  # type: ignore[attr-defined]
    for n, at in enumerate(spots):
        assert top.read_buffer_at_offset(MiB, at) == pattern(n, MiB)  # type: ignore[attr-defined]
    with open_disk(child) as disk:
        assert all(disk.read_at(at, MiB) == pattern(n, MiB) for n, at in enumerate(spots))


def test_child_of_a_huge_sparse_parent_stays_small(tmp_path: Path) -> None:
    """Bitmap blocks go only to chunks over parent data: a child of a 1 TiB template whose data
    sits at both ends costs as little as one of a small disk (sandbox copies stay cheap)."""
    size = 1 << 40
    base, child = tmp_path / "base.vhdx", tmp_path / "child.vhdx"
    create(base, size)
    with open_disk(base, writable=True) as disk:
        disk.write_at(0, pattern(1, MiB))
        disk.write_at(size - MiB, pattern(2, MiB))
    create_differencing(child, base)
    assert os.stat(child).st_blocks * 512 <= 64 * 1024
    with open_disk(child, writable=True) as disk:
        assert disk.chunks_with_data() == {0, 255}
        disk.resize(size + (8 << 30))  # two new chunks, nothing of the parent under them
        assert disk.read_at(size, MiB) == bytes(MiB)
    check(child)
    top = _pyvhdi_chain([base, child])
    assert top.read_buffer_at_offset(MiB, 0) == pattern(1, MiB)  # type: ignore[attr-defined]
    assert top.read_buffer_at_offset(MiB, size - MiB) == pattern(2, MiB)  # type: ignore[attr-defined]
