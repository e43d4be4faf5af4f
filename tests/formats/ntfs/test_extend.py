"""extend_volume: the grown volume passes ntfs-3g's checks (cluster accounting included) and
can be filled; bad starting points are refused."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from dissect.ntfs import NTFS

from cimsnap.formats.blockdev import MemoryDevice, RawFileDevice
from cimsnap.formats.ntfs import NtfsError, NtfsVolume, extend_volume, format_volume
from cimsnap.formats.ntfs.records import FILE_USA_OFFSET, apply_fixups, remove_fixups
from tests.formats.ntfs.helpers import MiB, make_volume, ntfs3g_mount, ntfs_checks, run_tool


def _grow(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def _extend(path: Path):  # type: ignore[no-untyped-def]
    with RawFileDevice(path, writable=True) as dev:
        return extend_volume(dev)


def test_extend_then_fill(tmp_path: Path) -> None:
    path = tmp_path / "vol.img"
    make_volume(path, 40 * MiB)
    with RawFileDevice(path) as dev:
        old_free = NtfsVolume(dev).info().free_clusters * 4096
    _grow(path, 200 * MiB)
    result = _extend(path)
    assert result.changed and result.new_clusters == (200 * MiB // 512 - 1) // 8
    assert result.bitmap_clusters_added == 1
    ntfs_checks(path)
    assert (
        f"Volume Size in Clusters: {result.new_clusters}" in run_tool("ntfsinfo", "-m", path).stdout
    )
    with open(path, "rb") as fh:
        assert NTFS(fh).boot_sector.NumberSectors == 200 * MiB // 512 - 1
    with ntfs3g_mount(path, tmp_path / "mnt") as mnt:
        block = os.urandom(MiB)
        with open(mnt / "big.bin", "wb") as f:
            for _ in range(old_free // MiB + 20):
                f.write(block)
    ntfs_checks(path)
    # The backup boot sector is at the new end and matches the primary.
    with open(path, "rb") as f:
        primary = f.read(512)
        f.seek(200 * MiB - 512)
        assert f.read(512) == primary


def test_extend_after_ntfs3g_use_and_many_bitmap_clusters(tmp_path: Path) -> None:
    path = tmp_path / "vol.img"
    make_volume(path, 48 * MiB)
    with ntfs3g_mount(path, tmp_path / "mnt") as mnt:  # empties the log (0xFF), grows the MFT
        for i in range(300):
            (mnt / f"f{i}").write_bytes(b"x" * i)
    _grow(path, 3 << 30)
    result = _extend(path)
    assert result.bitmap_clusters_added == 24 - 1
    ntfs_checks(path)
    with RawFileDevice(path) as dev:
        vol = NtfsVolume(dev)
        state = vol.logfile_state()  # ntfs-3g keeps a clean log as it is
        assert state is not None and state.clean
        assert {e.name for e in vol.list_directory(5)} >= {"f0", "f299", "WcSandboxState"}
    assert os.stat(path).st_blocks * 512 < 8 * MiB  # still sparse


def test_tiny_growth_and_no_growth(tmp_path: Path) -> None:
    path = tmp_path / "vol.img"
    make_volume(path, 32 * MiB - 512)  # the last cluster is then one sector short
    assert not _extend(path).changed
    for size in (32 * MiB, 32 * MiB + 4096 * 9 + 512):
        _grow(path, size)
        result = _extend(path)
        assert result.new_clusters == (size // 512 - 1) // 8
        ntfs_checks(path)
    assert result.old_clusters == (32 * MiB // 512 - 1) // 8


def test_refusals() -> None:
    dev = MemoryDevice(16 * MiB)
    format_volume(dev)
    with pytest.raises(NtfsError, match="not shrunk"):
        extend_volume(MemoryDevice(data=bytes(dev.buf[: 16 * MiB - 1])))
    grown = MemoryDevice(data=bytes(dev.buf) + bytes(16 * MiB))
    vol = NtfsVolume(grown)
    offset = vol.record_offset(3)
    record = bytearray(grown.read_at(offset, 1024))
    remove_fixups(record, what="test")
    pos = record.find(b"\x70\x00\x00\x00")  # $VOLUME_INFORMATION
    value = pos + struct.unpack_from("<H", record, pos + 20)[0]
    struct.pack_into("<H", record, value + 10, 1)  # VOLUME_IS_DIRTY
    apply_fixups(record, FILE_USA_OFFSET, 3)
    grown.write_at(offset, bytes(record))
    before = bytes(grown.buf)
    with pytest.raises(NtfsError, match="dirty"):
        extend_volume(grown)
    assert bytes(grown.buf) == before


def test_large_growth_rewrites_the_bitmap_in_windows(tmp_path: Path) -> None:
    path = tmp_path / "vol.img"
    make_volume(path, 48 * MiB)
    _grow(path, 40 << 30)  # a 1.25 MiB $Bitmap: more than one rewrite window
    result = _extend(path)
    assert result.new_clusters == ((40 << 30) // 512 - 1) // 8
    ntfs_checks(path)
    with RawFileDevice(path) as dev:
        info = NtfsVolume(dev).info()
    assert info.free_clusters > result.new_clusters - 1000
    assert os.stat(path).st_blocks * 512 < 8 * MiB
