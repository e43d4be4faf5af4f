"""Interoperability with qemu: images qemu made and wrote read identically through the engine;
imports and engine writes compare equal in qemu-img."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from cimsnap.formats.vhdx import check, export_raw, import_raw, info, open_disk
from tests.conftest import require_tool
from tests.formats.vhdx.helpers import pattern, qemu_raw, random_writes, run

MiB = 1 << 20


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tool("qemu-img")
    require_tool("qemu-io")


def _qemu_image(path: Path, size: int, *options: str) -> None:
    proc = run("qemu-img", "create", "-f", "vhdx", "-o", ",".join(options), path, str(size))
    assert proc.returncode == 0, proc.stderr
    rng = random.Random(size)
    commands = []
    for _ in range(12):
        length = rng.randrange(1, 64) * 4096
        offset = rng.randrange(0, (size - length) // 512) * 512
        commands += ["-c", f"write -P {rng.randrange(1, 255)} {offset} {length}"]
    commands += ["-c", "write -z 0 65536"]  # an explicit zero write as well
    proc = run("qemu-io", "-f", "vhdx", *commands, path)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "options",
    [
        ("subformat=dynamic", "block_state_zero=on"),
        ("subformat=dynamic", "block_state_zero=off"),
        ("subformat=dynamic", "block_size=8M", "block_state_zero=off"),
        ("subformat=fixed",),
    ],
)
def test_qemu_made_images_read_identically(tmp_path: Path, options: tuple[str, ...]) -> None:
    path = tmp_path / "q.vhdx"
    size = 40 * MiB
    _qemu_image(path, size, *options)
    expected = qemu_raw(path, tmp_path / "q.raw")
    with open_disk(path) as disk:
        assert disk.size == size
        assert disk.read_at(0, size) == expected
    check(path)
    assert info(path)["type"] == ("fixed" if "subformat=fixed" in options else "dynamic")
    # Written by the engine, the image stays valid for qemu and holds what was written.
    model = bytearray(expected)
    with open_disk(path, writable=True) as disk:
        random_writes(disk, model, random.Random(3), 15, 700_000)
    assert run("qemu-img", "check", path).returncode == 0
    assert qemu_raw(path, tmp_path / "q2.raw") == model


def test_import_allocates_only_nonzero_blocks_and_compares_equal(tmp_path: Path) -> None:
    raw = tmp_path / "in.raw"
    size = 64 * MiB + 1000  # not a sector multiple: padded with zeros to 512
    with raw.open("wb") as f:
        f.truncate(size)
        for block in (0, 3, 4, 17, 63):
            f.seek(block * MiB + 12345)
            f.write(pattern(block, 100_000))
        f.seek(size - 10)
        f.write(b"0123456789")
    out = tmp_path / "out.vhdx"
    import_raw(raw, out)
    assert os.stat(out).st_blocks * 512 < 12 * MiB
    described = info(out)
    assert described["virtual_size"] == 64 * MiB + 1024
    assert described["blocks"]["fully_present"] == 6  # blocks 0, 3, 4, 17, 63 and the tail
    proc = run("qemu-img", "compare", "-f", "raw", "-F", "vhdx", raw, out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert run("qemu-img", "check", out).returncode == 0
    back = tmp_path / "back.raw"
    export_raw(out, back)
    assert back.read_bytes()[:size] == raw.read_bytes()
    assert os.stat(back).st_blocks * 512 < 12 * MiB  # export keeps holes


def test_import_with_large_blocks_and_qemu_convert_agrees(tmp_path: Path) -> None:
    raw = tmp_path / "in.raw"
    raw.write_bytes(pattern(9, 3 * MiB) + bytes(40 * MiB) + pattern(10, 5 * MiB))
    out = tmp_path / "out.vhdx"
    import_raw(raw, out, block_size=16 * MiB)
    with open_disk(out) as disk:
        assert disk.block_size == 16 * MiB
    assert qemu_raw(out, tmp_path / "q.raw") == raw.read_bytes()


def test_export_of_qemu_image_matches_qemu_convert(tmp_path: Path) -> None:
    path = tmp_path / "q.vhdx"
    _qemu_image(path, 24 * MiB, "subformat=dynamic")
    ours = tmp_path / "ours.raw"
    export_raw(path, ours)
    assert ours.read_bytes() == qemu_raw(path, tmp_path / "theirs.raw")
