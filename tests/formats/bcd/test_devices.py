"""Device element values: bytes for every device kind, text round trips, a real Windows dump."""

from __future__ import annotations

import uuid

import pytest

from cimsnap.errors import FormatError
from cimsnap.formats.bcd import (
    BootDevice,
    CimfsDevice,
    CompositeDevice,
    GptPartition,
    MbrPartition,
    RawDevice,
    decode_device,
    encode_device,
    format_device,
    parse_device,
)

ZERO = uuid.UUID(int=0)
DISK = uuid.UUID("d148fb7c-be81-4d12-8dcf-62260299abde")
PART = uuid.UUID("ecd43012-88cf-4f80-a8de-8d3719d0653a")
# the "device" element of {347518e1-...} in the winefi BCD (written by Windows)
WINDOWS_PARTITION = bytes.fromhex(
    "00000000000000000000000000000000"
    "06000000000000004800000000000000"
    "1230d4eccf88804fa8de8d3719d0653a"
    "00000000000000007cfb48d181be124d"
    "8dcf62260299abde0000000000000000"
    "0000000000000000"
)


def test_windows_partition_record_decodes_and_reencodes() -> None:
    device = decode_device(WINDOWS_PARTITION)
    assert device == GptPartition(ZERO, disk=DISK, partition=PART)
    assert encode_device(device) == WINDOWS_PARTITION
    assert format_device(device) == f"gpt_partition={{{DISK}}};{{{PART}}}"


def test_boot_device_bytes() -> None:
    data = encode_device(BootDevice(ZERO))
    assert data == bytes(16) + bytes.fromhex("05000000000000004800000000000000") + bytes(0x38)
    assert len(data) == 0x58
    assert parse_device("boot") == BootDevice(ZERO)


def test_mbr_partition_bytes() -> None:
    device = parse_device("mbr_partition=0x1234ABCD;1048576")
    assert device == MbrPartition(ZERO, signature=0x1234ABCD, offset=1048576)
    data = encode_device(device)
    assert data[0x20:0x28] == (1048576).to_bytes(8, "little")
    assert data[0x34:0x38] == b"\x01\0\0\0"  # partition style MBR
    assert data[0x38:0x3C] == bytes.fromhex("cdab3412")
    assert len(data) == 0x58
    assert decode_device(data) == device
    assert format_device(device) == "mbr_partition=0x1234abcd;1048576"


def test_vmbus_bytes() -> None:
    instance = uuid.UUID("c63c9bdf-5fa5-4208-b03f-6b458b365592")
    data = encode_device(parse_device(f"vmbus={{{instance}}}"))
    assert data.hex() == (
        "00000000000000000000000000000000"
        "07000000000000003000000000000000"
        "c3c176c376d2d24890a9c04748072c60"  # VmbFs interface type (openvmm)
        "df9b3cc6a55f0842b03f6b458b365592"  # the instance given to vmbus=
    )
    assert format_device(decode_device(data)) == f"vmbus={{{instance}}}"


def test_composite_and_cimfs_bytes() -> None:
    options = uuid.UUID("e1787220-d17f-49e7-977a-d8fe4c8537e2")
    composite = encode_device(CompositeDevice(options, 0))
    assert composite.hex() == (
        "207278e17fd1e749977ad8fe4c8537e2"
        "0a000000000000002c00000000000000"
        "00000000000000000000000000000000"
        "000000000000000000000000"
    )
    cim_options = uuid.UUID("763e9fea-502d-434f-aad9-5fabe9c91a7b")
    volume = uuid.UUID("b890454c-80de-4e98-a7ab-56b74b4fbd0c")
    cimfs = encode_device(CimfsDevice(cim_options, volume=volume))
    assert cimfs.hex() == (
        "ea9f3e762d504f43aad95fabe9c91a7b"
        "0b000000000000003000000000000000"
        "02000000000000000000000000000000"
        "4c4590b8de80984ea7ab56b74b4fbd0c"
    )
    assert decode_device(cimfs) == CimfsDevice(cim_options, volume=volume)
    assert decode_device(composite) == CompositeDevice(options, 0)


@pytest.mark.parametrize(
    "text",
    [
        "boot",
        "boot,{763e9fea-502d-434f-aad9-5fabe9c91a7b}",
        "gpt_partition={d148fb7c-be81-4d12-8dcf-62260299abde};{ecd43012-88cf-4f80-a8de-8d3719d0653a}",
        "mbr_partition=0xdeadbeef;32256",
        "vmbus={c63c9bdf-5fa5-4208-b03f-6b458b365592}",
        "composite=0,{e1787220-d17f-49e7-977a-d8fe4c8537e2}",
        "composite=7,{e1787220-d17f-49e7-977a-d8fe4c8537e2}",
        "cimfs={b890454c-80de-4e98-a7ab-56b74b4fbd0c},{763e9fea-502d-434f-aad9-5fabe9c91a7b}",
    ],
)
def test_text_round_trip(text: str) -> None:
    device = parse_device(text)
    assert format_device(decode_device(encode_device(device))) == text


def test_partition_alias_and_case() -> None:
    text = "PARTITION={D148FB7C-BE81-4D12-8DCF-62260299ABDE};{ECD43012-88CF-4F80-A8DE-8D3719D0653A}"
    assert parse_device(text) == GptPartition(ZERO, disk=DISK, partition=PART)


def test_unknown_records_are_kept_byte_for_byte() -> None:
    ramdisk = bytes.fromhex("e3187534ccf3ea11911ec7eaa7d84b6c00000000010000002000000000000000")
    ramdisk += bytes(16)
    device = decode_device(ramdisk)
    assert isinstance(device, RawDevice) and device.device_type == 0
    assert encode_device(device) == ramdisk
    assert format_device(device) == "hex:" + ramdisk.hex()
    assert encode_device(parse_device(format_device(device))) == ramdisk
    # records that would not come back identical are raw too (a boot record with data)
    odd = bytearray(encode_device(BootDevice(ZERO)))
    odd[0x30] = 1
    assert isinstance(decode_device(bytes(odd)), RawDevice)
    assert isinstance(decode_device(b"\x01\x02"), RawDevice)


@pytest.mark.parametrize(
    "text",
    [
        "floppy",
        "vmbus=xyz",
        "gpt_partition={d148fb7c-be81-4d12-8dcf-62260299abde}",
        "composite=x,{e1787220-d17f-49e7-977a-d8fe4c8537e2}",
        "composite=0",
        "cimfs={b890454c-80de-4e98-a7ab-56b74b4fbd0c}",
        "mbr_partition=zz;1",
        "hex:zz",
    ],
)
def test_bad_device_text(text: str) -> None:
    with pytest.raises(FormatError):
        parse_device(text)
