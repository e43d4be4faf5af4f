"""The device interface every disk format writes through."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cimsnap.errors import FormatError
from cimsnap.formats.blockdev import BlockDevice, MemoryDevice, RawFileDevice, WindowDevice


def test_raw_file_stays_sparse_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "disk.raw"
    with RawFileDevice.create(path, 1 << 30) as dev:
        assert isinstance(dev, BlockDevice)
        dev.write_at(512 << 20, b"hello")
        dev.flush()
        assert dev.read_at(512 << 20, 5) == b"hello"
        assert dev.read_at(0, 4) == b"\0" * 4
    st = os.stat(path)
    assert st.st_size == 1 << 30
    assert st.st_blocks * 512 < 1 << 20


def test_reads_outside_are_errors(tmp_path: Path) -> None:
    dev = MemoryDevice(4096)
    with pytest.raises(FormatError):
        dev.read_at(4000, 200)
    with pytest.raises(FormatError):
        dev.write_at(-1, b"x")


def test_window_maps_offsets_and_bounds() -> None:
    base = MemoryDevice(8192)
    win = WindowDevice(base, 1024, 2048)
    win.write_at(0, b"abc")
    assert base.read_at(1024, 3) == b"abc"
    with pytest.raises(FormatError):
        win.read_at(2047, 2)
    with pytest.raises(FormatError):
        WindowDevice(base, 8000, 1000)
