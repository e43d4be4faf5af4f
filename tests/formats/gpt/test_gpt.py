"""GPT writing/reading, checked with sgdisk and sfdisk, plus damaged and hostile tables."""

from __future__ import annotations

import json
import struct
import subprocess
import uuid
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cimsnap.formats.blockdev import MemoryDevice, RawFileDevice
from cimsnap.formats.gpt import (
    BASIC_DATA,
    MICROSOFT_RESERVED,
    GptError,
    GptTable,
    new_table,
    read_gpt,
    write_gpt,
)
from tests.conftest import require_tool

MiB = 1 << 20


def _two_partition_table(size: int, sector_size: int = 512) -> GptTable:
    table = new_table(size, sector_size=sector_size)
    mib = MiB // sector_size
    table.add_partition(
        MICROSOFT_RESERVED,
        table.first_usable_lba,
        16 * mib - 1,
        name="Microsoft reserved partition",
    )
    table.add_partition(
        BASIC_DATA,
        16 * mib,
        table.disk_sectors - mib - 1,
        name="Basic data partition",
        attributes=0x8000000000000000,
    )
    return table


def _raw_disk(tmp_path: Path, size: int, name: str = "disk.raw") -> RawFileDevice:
    return RawFileDevice.create(tmp_path / name, size)


def test_round_trip_in_memory() -> None:
    dev = MemoryDevice(64 * MiB)
    table = _two_partition_table(dev.size)
    write_gpt(dev, table)
    back = read_gpt(dev)
    assert back.damaged == []
    assert back.disk_guid == table.disk_guid
    assert back.partitions == table.partitions
    assert back.backup_lba == back.last_lba == dev.size // 512 - 1
    assert [p.name for p in back.partitions] == [
        "Microsoft reserved partition",
        "Basic data partition",
    ]
    assert dev.read_at(510, 2) == b"\x55\xaa" and dev.read_at(450, 1) == b"\xee"


def test_round_trip_4k_sectors() -> None:
    dev = MemoryDevice(64 * MiB)
    table = _two_partition_table(dev.size, sector_size=4096)
    assert table.first_usable_lba == 6
    write_gpt(dev, table)
    back = read_gpt(dev)
    assert back.sector_size == 4096 and back.partitions == table.partitions


def test_sgdisk_and_sfdisk_accept_it(tmp_path: Path) -> None:
    sgdisk = require_tool("sgdisk")
    sfdisk = require_tool("sfdisk")
    with _raw_disk(tmp_path, 64 * MiB) as dev:
        table = _two_partition_table(dev.size)
        write_gpt(dev, table)
    path = str(tmp_path / "disk.raw")
    verify = subprocess.run([sgdisk, "-v", path], capture_output=True, text=True, check=True)
    assert "No problems found" in verify.stdout, verify.stdout
    info = subprocess.run([sgdisk, "-i", "2", path], capture_output=True, text=True, check=True)
    assert str(table.partitions[1].unique_guid).upper() in info.stdout
    assert "Basic data partition" in info.stdout and "8000000000000000" in info.stdout
    dump = json.loads(
        subprocess.run([sfdisk, "--json", path], capture_output=True, text=True, check=True).stdout
    )["partitiontable"]
    assert dump["label"] == "gpt" and dump["id"] == str(table.disk_guid).upper()
    assert [p["type"] for p in dump["partitions"]] == [
        str(MICROSOFT_RESERVED).upper(),
        str(BASIC_DATA).upper(),
    ]
    assert [p["start"] for p in dump["partitions"]] == [34, 32768]


def test_reads_what_sgdisk_writes(tmp_path: Path) -> None:
    sgdisk = require_tool("sgdisk")
    path = tmp_path / "sg.raw"
    _raw_disk(tmp_path, 32 * MiB, "sg.raw").close()
    subprocess.run(
        [
            *(sgdisk, "-n", "1:2048:+4M", "-t", "1:0c01", "-n", "2:0:0", "-t", "2:0700"),
            *("-c", "2:data", "-U", "11111111-2222-3333-4444-555555555555", str(path)),
        ],
        check=True,
        capture_output=True,
    )
    with RawFileDevice(path) as dev:
        table = read_gpt(dev)
    assert table.disk_guid == uuid.UUID("11111111-2222-3333-4444-555555555555")
    assert [p.type_guid for p in table.partitions] == [MICROSOFT_RESERVED, BASIC_DATA]
    assert table.partitions[1].name == "data" and table.partitions[0].first_lba == 2048


def test_damaged_primary_falls_back_to_backup_and_rewrite_repairs(tmp_path: Path) -> None:
    sgdisk = require_tool("sgdisk")
    with _raw_disk(tmp_path, 64 * MiB) as dev:
        table = _two_partition_table(dev.size)
        write_gpt(dev, table)
        dev.write_at(512 + 40, b"\xff")  # first usable LBA: header CRC no longer matches
        back = read_gpt(dev)
        assert back.partitions == table.partitions
        assert any("primary GPT header CRC32" in d for d in back.damaged)
        write_gpt(dev, back)
        assert read_gpt(dev).damaged == []
    verify = subprocess.run(
        [sgdisk, "-v", str(tmp_path / "disk.raw")], capture_output=True, text=True, check=True
    )
    assert "No problems found" in verify.stdout


def test_damaged_entry_array_falls_back() -> None:
    dev = MemoryDevice(32 * MiB)
    table = _two_partition_table(dev.size)
    write_gpt(dev, table)
    dev.write_at(2 * 512 + 100, b"garbage")
    back = read_gpt(dev)
    assert back.partitions == table.partitions
    assert any("entry array CRC32" in d for d in back.damaged)


def test_both_copies_damaged() -> None:
    dev = MemoryDevice(32 * MiB)
    write_gpt(dev, _two_partition_table(dev.size))
    dev.write_at(512 + 24, b"\x07")  # primary my_lba
    crc_at = dev.size - 512 + 16  # the backup header's CRC32 field: flipped, so always wrong
    dev.write_at(crc_at, bytes([dev.read_at(crc_at, 1)[0] ^ 0xFF]))
    with pytest.raises(GptError, match="primary GPT header CRC32 mismatch; backup"):
        read_gpt(dev)


def test_mbr_and_blank_disks(tmp_path: Path) -> None:
    sfdisk = require_tool("sfdisk")
    path = tmp_path / "mbr.raw"
    _raw_disk(tmp_path, 16 * MiB, "mbr.raw").close()
    subprocess.run([sfdisk, "-q", str(path)], input="label: dos\n,,7\n", text=True, check=True)
    with RawFileDevice(path) as dev, pytest.raises(GptError, match="MBR, not GPT"):
        read_gpt(dev)
    with pytest.raises(GptError, match="no GUID partition table"):
        read_gpt(MemoryDevice(1 * MiB))
    with pytest.raises(GptError, match="no GUID partition table"):
        read_gpt(MemoryDevice(100))


def _forge(dev: MemoryDevice, edit_header=None, entries: bytes | None = None) -> None:  # type: ignore[no-untyped-def]
    """Rewrite the primary header (and entries) with valid CRCs after editing fields."""
    raw = bytearray(dev.read_at(512, 92))
    if entries is not None:
        dev.write_at(1024, entries)
        struct.pack_into("<I", raw, 88, zlib.crc32(entries))
    if edit_header:
        edit_header(raw)
    struct.pack_into("<I", raw, 16, 0)
    struct.pack_into("<I", raw, 16, zlib.crc32(bytes(raw)))
    dev.write_at(512, bytes(raw))
    dev.write_at(dev.size - 512, bytes(512))  # no backup to fall back on


@pytest.mark.parametrize(
    ("field_offset", "value", "message"),
    [
        (80, 1_000_000, "implausible entry count"),
        (84, 100, "invalid entry size"),
        (72, 1 << 40, "out of range"),
        (48, 1 << 40, "out of range"),
        (12, 8, "header size"),
    ],
)
def test_hostile_headers_are_refused(field_offset: int, value: int, message: str) -> None:
    dev = MemoryDevice(32 * MiB)
    write_gpt(dev, _two_partition_table(dev.size))
    fmt = "<Q" if field_offset in (72, 48) else "<I"
    _forge(dev, lambda raw: struct.pack_into(fmt, raw, field_offset, value))
    with pytest.raises(GptError, match=message):
        read_gpt(dev)


def test_overlapping_and_out_of_range_entries_are_refused() -> None:
    dev = MemoryDevice(32 * MiB)
    table = _two_partition_table(dev.size)
    write_gpt(dev, table)
    entries = bytearray(table.entry_array()[: 128 * 128])
    struct.pack_into("<Q", entries, 128 + 32, 100)  # partition 2 starts inside partition 1
    _forge(dev, entries=bytes(entries))
    with pytest.raises(GptError, match="overlap"):
        read_gpt(dev)
    struct.pack_into("<Q", entries, 128 + 32, 1 << 50)
    _forge(dev, entries=bytes(entries))
    with pytest.raises(GptError, match="outside the usable range"):
        read_gpt(dev)


def test_grow_disk_moves_backup_and_grows_partition(tmp_path: Path) -> None:
    sgdisk = require_tool("sgdisk")
    path = tmp_path / "disk.raw"
    with _raw_disk(tmp_path, 32 * MiB) as dev:
        write_gpt(dev, _two_partition_table(dev.size))
    with open(path, "r+b") as f:
        f.truncate(96 * MiB)
    with RawFileDevice(path, writable=True) as dev:
        table = read_gpt(dev)
        assert table.damaged == [] and table.backup_lba == 32 * MiB // 512 - 1
        table.move_backup_to_end(dev.size // 512)
        table.grow_partition(1, table.disk_sectors - MiB // 512 - 1)
        with pytest.raises(GptError, match="shrink"):
            table.grow_partition(1, 40000)
        with pytest.raises(GptError, match="outside the usable range"):
            table.grow_partition(1, table.disk_sectors)
        write_gpt(dev, table)
        again = read_gpt(dev)
    assert again.backup_lba == 96 * MiB // 512 - 1
    assert again.partitions[1].last_lba == 96 * MiB // 512 - 2049
    verify = subprocess.run([sgdisk, "-v", str(path)], capture_output=True, text=True, check=True)
    assert "No problems found" in verify.stdout, verify.stdout


def test_table_editing_errors() -> None:
    table = new_table(8 * MiB)
    table.add_partition(BASIC_DATA, 2048, 4095)
    with pytest.raises(GptError, match="overlap"):
        table.add_partition(BASIC_DATA, 4000, 5000)
    with pytest.raises(GptError, match="no partition 3"):
        table.partition(2)
    with pytest.raises(GptError, match="longer than 36"):
        table.add_partition(BASIC_DATA, 5000, 6000, name="x" * 37)
        table.entry_array()
    with pytest.raises(GptError, match="too small"):
        new_table(16 * 1024)
    with pytest.raises(GptError, match="multiple of the sector size"):
        new_table(8 * MiB + 1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 34 * 512 - 1), st.binary(min_size=1, max_size=8))))
def test_random_damage_never_crashes(edits: list[tuple[int, bytes]]) -> None:
    dev = MemoryDevice(2 * MiB)
    table = new_table(dev.size)
    table.add_partition(MICROSOFT_RESERVED, table.first_usable_lba, 2047)
    table.add_partition(BASIC_DATA, 2048, 4000, name="data")
    write_gpt(dev, table)
    for off, data in edits:
        dev.write_at(off, data[: 34 * 512 - off])
    try:
        back = read_gpt(dev)
    except GptError:
        return
    # Whatever copy was used, it must be a consistent one.
    assert back.partitions == table.partitions
