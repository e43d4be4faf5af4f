"""Disks made by Windows 10 (from dissect.hypervisor's test data) read with the documented facts."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import pytest

from cimsnap.formats.vhdx import check, export_raw, info, open_disk

MiB = 1 << 20


def _gunzip(testdata: Path, name: str, tmp_path: Path) -> Path:
    src = testdata / "vhdx" / name
    if not src.is_file():
        pytest.skip(f"{src} is not available")
    out = tmp_path / name.removesuffix(".gz")
    with gzip.open(src, "rb") as fin, out.open("wb") as fout:
        shutil.copyfileobj(fin, fout)
    return out


@pytest.mark.parametrize(
    ("name", "block_size", "kind", "disk_id", "sha256", "sequence"),
    [
        ("dissect_fixed.vhdx.gz", 2 * MiB, "fixed", "4a49d245-db0a-4634-9818-9f93db5ba6c1",
         "bc0be4623b15aa84216fb31ba24e3b621ec7f1c72d198c990ac0eced222d9f62", 7),
        ("dissect_dynamic.vhdx.gz", 32 * MiB, "dynamic", "788015f0-5e93-4bd2-a5de-b0cd8459db11",
         "8e2b5e9265d694b42b81819e3bff29770eff4ed0f4f9f311693ff3dbdc93efac", 15),
    ],
)  # fmt: skip
def test_windows_made_disk(
    testdata: Path,
    tmp_path: Path,
    name: str,
    block_size: int,
    kind: str,
    disk_id: str,
    sha256: str,
    sequence: int,
) -> None:
    path = _gunzip(testdata, name, tmp_path)
    with open_disk(path) as disk:
        assert disk.creator == "Microsoft Windows 10.0.18363.0"
        assert disk.virtual_size == 10 * MiB == 0xA00000
        assert disk.block_size == block_size
        assert (disk.logical_sector_size, disk.physical_sector_size) == (512, 4096)
        assert disk.geometry.chunk_ratio == (0x800 if kind == "fixed" else 0x80)
        assert not disk.is_differencing
        assert disk.is_fixed == (kind == "fixed")
        assert str(disk.virtual_disk_id) == disk_id
        assert disk.header.sequence_number == sequence
        assert disk.header.log_guid.int == 0
        assert (disk.header.log_offset, disk.header.log_length) == (MiB, MiB)
        assert (disk.metadata_region.file_offset, disk.bat_region.file_offset) == (2 * MiB, 3 * MiB)
        raw = disk.read_at(0, disk.size)
        if kind == "fixed":
            states = {disk.payload(b)[0] for b in range(disk.geometry.data_blocks)}
            assert states == {6}
    assert hashlib.sha256(raw).hexdigest() == sha256
    # MBR: one partition of type 0x07 at sector 128, 14336 sectors.
    assert raw[510:512] == b"\x55\xaa"
    entry = raw[446:462]
    assert entry[4] == 0x07
    assert int.from_bytes(entry[8:12], "little") == 128
    assert int.from_bytes(entry[12:16], "little") == 14336
    assert raw[2 * MiB : 2 * MiB + 512] == b"\xff" * 512
    check(path)
    described = info(path)
    assert described["type"] == kind and described["virtual_size"] == 10 * MiB
    out = tmp_path / "out.raw"
    export_raw(path, out)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == sha256


def test_windows_disk_written_by_engine_stays_readable_by_qemu(
    testdata: Path, tmp_path: Path
) -> None:
    from tests.conftest import require_tool
    from tests.formats.vhdx.helpers import qemu_raw

    path = _gunzip(testdata, "dissect_dynamic.vhdx.gz", tmp_path)
    with open_disk(path) as disk:
        model = bytearray(disk.read_at(0, disk.size))
    with open_disk(path, writable=True) as disk:
        disk.write_at(5 * MiB + 3, b"written by cimsnap")
        model[5 * MiB + 3 : 5 * MiB + 21] = b"written by cimsnap"
    check(path)
    require_tool("qemu-img")
    assert qemu_raw(path, tmp_path / "q.raw") == model
