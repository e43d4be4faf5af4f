"""partition_info validates like GetScratchVhdPartitionInfo: good disks and every kind of bad."""

from __future__ import annotations

import gzip
import subprocess
import uuid
from pathlib import Path

import pytest

from cimsnap.errors import NotFoundError
from cimsnap.formats import vhdx
from cimsnap.formats.blockdev import RawFileDevice
from cimsnap.formats.gpt import BASIC_DATA, MICROSOFT_RESERVED, new_table, write_gpt
from cimsnap.scratch import ScratchError, create_scratch, partition_info, scratch_info
from tests.conftest import require_tool
from tests.scratch.scratch_helpers import MiB

DISK = uuid.UUID("11111111-2222-3333-4444-555555555555")


def _raw(tmp_path: Path, name: str = "disk.raw", size: int = 64 * MiB) -> Path:
    path = tmp_path / name
    RawFileDevice.create(path, size).close()
    return path


def _sgdisk(path: Path, *args: str) -> None:
    subprocess.run([require_tool("sgdisk"), *args, str(path)], check=True, capture_output=True)


def _gpt(path: Path, parts: list[tuple[uuid.UUID, int, int]]) -> None:
    """A GPT with exactly ``parts`` (type, first LBA, last LBA), written by our GPT module."""
    with RawFileDevice(path, writable=True) as dev:
        table = new_table(dev.size, disk_guid=DISK)
        for type_guid, first, last in parts:
            table.add_partition(type_guid, first, last)
        write_gpt(dev, table)


def test_scratch_disk_and_its_differencing_child(tmp_path: Path) -> None:
    base = tmp_path / "blank-base.vhdx"
    layout = create_scratch(base, size=64 * MiB, disk_guid=DISK)
    info = partition_info(base)
    assert info == (DISK, layout.partition_guid)
    disk_guid, partition_guid = info  # unpacks like hcsshim's pair
    assert (info.disk_guid, info.partition_guid) == (disk_guid, partition_guid)
    child = tmp_path / "blank.vhdx"
    vhdx.create_differencing(child, base)
    assert partition_info(child) == info


def test_sgdisk_made_scratch_layout_is_accepted(tmp_path: Path) -> None:
    path = _raw(tmp_path)
    _sgdisk(
        path, "-U", str(DISK), "-n", "1:2048:+16M", "-t", "1:0c01", "-n", "2:0:0", "-t", "2:0700"
    )
    assert partition_info(path).disk_guid == DISK


def test_mbr_disk(tmp_path: Path) -> None:
    path = _raw(tmp_path)
    sfdisk = require_tool("sfdisk")
    subprocess.run(
        [sfdisk, "-q", str(path)], input="label: dos\n,16M,7\n,,7\n", text=True, check=True
    )
    with pytest.raises(ScratchError, match=r"expected partition style GPT.*MBR, not GPT"):
        partition_info(path)


def test_blank_disk(tmp_path: Path) -> None:
    with pytest.raises(ScratchError, match=r"expected partition style GPT.*no GUID partition"):
        partition_info(_raw(tmp_path))


def test_gpt_without_partitions(tmp_path: Path) -> None:
    path = _raw(tmp_path)
    _sgdisk(path, "-o")
    with pytest.raises(ScratchError, match="expected exactly 2 partitions, found 0"):
        partition_info(path)


def test_one_and_three_partitions(tmp_path: Path) -> None:
    one = _raw(tmp_path, "one.raw")
    _sgdisk(one, "-n", "1:0:0", "-t", "1:0700")
    with pytest.raises(ScratchError, match="found 1"):
        partition_info(one)
    three = _raw(tmp_path, "three.raw")
    _gpt(three, [(MICROSOFT_RESERVED, 34, 32767), (BASIC_DATA, 32768, 65535)])
    _gpt(three, [(MICROSOFT_RESERVED, 34, 32767), (BASIC_DATA, 32768, 65535),
                 (BASIC_DATA, 65536, 100000)])  # fmt: skip
    with pytest.raises(ScratchError, match="found 3"):
        partition_info(three)


def test_wrong_type_of_second_partition(tmp_path: Path) -> None:
    path = _raw(tmp_path)
    linux = uuid.UUID("0FC63DAF-8483-4772-8E79-3D69D8477DE4")
    _gpt(path, [(MICROSOFT_RESERVED, 34, 32767), (linux, 32768, 100000)])
    with pytest.raises(ScratchError, match=r"EBD0A0A2.*found 0FC63DAF-8483-4772-8E79-3D69D8477DE4"):
        partition_info(path)
    _gpt(path, [(BASIC_DATA, 34, 32767), (MICROSOFT_RESERVED, 32768, 100000)])  # swapped
    with pytest.raises(ScratchError, match="found E3C9E316"):
        partition_info(path)


def test_corrupt_gpt_crc(tmp_path: Path) -> None:
    base = tmp_path / "s.vhdx"
    create_scratch(base, size=64 * MiB, disk_guid=DISK)
    expected = partition_info(base)
    with vhdx.open_disk(base, writable=True) as disk:
        disk.write_at(512 + 16, b"\x00\x00\x00\x00")  # primary header CRC32
    # Like Windows' disk driver, the intact backup copy is used ...
    assert partition_info(base) == expected
    assert any("primary GPT header CRC32" in d for d in scratch_info(base).gpt_damage)
    with vhdx.open_disk(base, writable=True) as disk:
        disk.write_at(disk.size - 512 + 16, b"\x00\x00\x00\x00")  # ... until it is bad too
    with pytest.raises(ScratchError, match="primary GPT header CRC32 mismatch; backup"):
        partition_info(base)


def test_corrupt_entry_array_crc(tmp_path: Path) -> None:
    path = _raw(tmp_path)
    _gpt(path, [(MICROSOFT_RESERVED, 34, 32767), (BASIC_DATA, 32768, 100000)])
    with open(path, "r+b") as f:
        for offset in (1024 + 60, 64 * MiB - 33 * 512 + 60):  # both entry arrays
            f.seek(offset)
            f.write(b"\xff")
    with pytest.raises(ScratchError, match="entry array CRC32 mismatch"):
        partition_info(path)


def test_missing_and_non_disk_files(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        partition_info(tmp_path / "nope.vhdx")
    junk = tmp_path / "junk.vhdx"
    junk.write_bytes(b"vhdxfile" + b"\0" * 100)
    with pytest.raises(vhdx.VhdxError):
        partition_info(junk)
    tiny = tmp_path / "tiny.raw"
    tiny.write_bytes(b"\0" * 100)
    with pytest.raises(ScratchError):
        partition_info(tiny)


def test_windows_made_mbr_vhdx(testdata: Path, tmp_path: Path) -> None:
    """A VHDX Windows 10 partitioned with MBR (and formatted NTFS) is refused as not GPT."""
    path = tmp_path / "fixed.vhdx"
    path.write_bytes(gzip.decompress((testdata / "vhdx" / "dissect_fixed.vhdx.gz").read_bytes()))
    with pytest.raises(ScratchError, match="MBR, not GPT"):
        partition_info(path)
