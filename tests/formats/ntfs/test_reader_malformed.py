"""The NTFS reader on damaged and hostile volumes: clear NtfsErrors, never a crash or a hang."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cimsnap.errors import FormatError
from cimsnap.formats.blockdev import MemoryDevice
from cimsnap.formats.ntfs import NtfsError, NtfsVolume, format_volume
from cimsnap.formats.ntfs.records import (
    FILE_USA_OFFSET,
    Run,
    apply_fixups,
    decode_runlist,
    encode_runlist,
    remove_fixups,
)

MiB = 1 << 20
SIZE = 8 * MiB


@pytest.fixture(scope="module")
def pristine() -> bytes:
    dev = MemoryDevice(SIZE)
    format_volume(dev, serial=1, timestamp=132_000_000_000_000_000, log_size=256 * 1024)
    return bytes(dev.buf)


def _dev(pristine: bytes) -> MemoryDevice:
    return MemoryDevice(data=pristine)


def _patch_record(dev: MemoryDevice, number: int, edit: Callable[[bytearray], None]) -> None:
    """Edit MFT record ``number`` in its fixed-up form and re-protect it (valid fixups)."""
    offset = NtfsVolume(dev).record_offset(number)
    record = bytearray(dev.read_at(offset, 1024))
    remove_fixups(record, what="test")
    edit(record)
    apply_fixups(record, FILE_USA_OFFSET, 7)
    dev.write_at(offset, bytes(record))


def _attr_offset(record: bytearray, attr_type: int) -> int:
    pos = struct.unpack_from("<H", record, 20)[0]
    while True:
        t, length = struct.unpack_from("<II", record, pos)
        if t == attr_type:
            return pos
        pos += length


def test_pristine_volume_reads(pristine: bytes) -> None:
    vol = NtfsVolume(_dev(pristine))
    assert vol.info().version == (3, 1)
    assert vol.lookup("wcsandboxstate") > 11


@pytest.mark.parametrize(
    ("offset", "data", "message"),
    [
        (3, b"EXFAT   ", "not an NTFS boot sector"),
        (11, struct.pack("<H", 520), "bytes per sector"),
        (13, b"\x03", "sectors per cluster"),
        (14, b"\x01\x00", "FAT fields"),
        (510, b"\x00\x00", "0xAA55"),
        (40, struct.pack("<q", 1 << 40), "describes"),
        (48, struct.pack("<q", 1 << 30), "outside the volume"),
        (64, b"\x07", "record sizes"),
    ],
)
def test_bad_boot_sectors(pristine: bytes, offset: int, data: bytes, message: str) -> None:
    dev = _dev(pristine)
    dev.write_at(offset, data)
    with pytest.raises(NtfsError, match=message):
        NtfsVolume(dev)


def test_tiny_and_empty_devices() -> None:
    with pytest.raises(NtfsError, match="smaller than one sector"):
        NtfsVolume(MemoryDevice(100))
    with pytest.raises(NtfsError, match="not an NTFS boot sector"):
        NtfsVolume(MemoryDevice(SIZE))


def test_truncated_device(pristine: bytes) -> None:
    with pytest.raises(NtfsError, match="describes"):
        NtfsVolume(MemoryDevice(data=pristine[: SIZE // 2]))


def test_mft_record_damage(pristine: bytes) -> None:
    vol = NtfsVolume(_dev(pristine))
    off = vol.record_offset(5)
    dev = _dev(pristine)
    dev.write_at(off, b"BAAD")
    with pytest.raises(NtfsError, match="MFT record 5 has no FILE signature"):
        NtfsVolume(dev).list_directory(5)
    dev = _dev(pristine)
    dev.write_at(off + 510, b"\x12\x34")  # a torn write: stride 0 no longer ends with the USN
    with pytest.raises(NtfsError, match="update sequence check"):
        NtfsVolume(dev).record(5)
    with pytest.raises(NtfsError, match="outside the MFT"):
        vol.record(10_000)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: struct.pack_into("<I", r, _attr_offset(r, 0x10) + 4, 0), "invalid length"),
        (lambda r: struct.pack_into("<I", r, _attr_offset(r, 0x10) + 4, 4000), "invalid length"),
        (lambda r: struct.pack_into("<I", r, 24, 5000), "inconsistent sizes"),
        (lambda r: struct.pack_into("<H", r, _attr_offset(r, 0x10) + 20, 900), "outside"),
        (lambda r: struct.pack_into("<I", r, _attr_offset(r, 0x90), 0xFFFFFFFF) or None, "$I30"),
    ],
)
def test_attribute_damage(pristine: bytes, edit: Callable[[bytearray], None], message: str) -> None:
    dev = _dev(pristine)
    _patch_record(dev, 5, edit)
    with pytest.raises(NtfsError, match=message.replace("$", r"\$")):
        NtfsVolume(dev).list_directory(5)


def test_runlist_outside_volume(pristine: bytes) -> None:
    dev = _dev(pristine)

    def point_far(record: bytearray) -> None:
        attr = _attr_offset(record, 0x80)
        mp = attr + struct.unpack_from("<H", record, attr + 32)[0]
        record[mp : mp + 4] = encode_runlist([Run(1 << 30, 1)])

    _patch_record(dev, 6, point_far)  # $Bitmap
    with pytest.raises(NtfsError, match="outside the volume"):
        NtfsVolume(dev).info()


def test_index_loop_and_bad_subnode(pristine: bytes) -> None:
    dev = _dev(pristine)
    vol = NtfsVolume(dev)
    root = vol.record(5)
    block_lcn = root.require(0xA0, "$I30").runs[0].lcn
    assert block_lcn is not None
    block_off = block_lcn * 4096
    block = bytearray(dev.read_at(block_off, 4096))
    remove_fixups(block, what="test")
    entries_off, index_len = struct.unpack_from("<II", block, 0x18)
    pos = 0x18 + entries_off
    while not struct.unpack_from("<H", block, pos + 12)[0] & 2:
        pos += struct.unpack_from("<H", block, pos + 8)[0]
    # Turn the end entry into a node pointing back at this very block (VCN 0).
    struct.pack_into("<HHH", block, pos + 8, 24, 0, 3)
    struct.pack_into("<q", block, pos + 16, 0)
    struct.pack_into("<I", block, 0x18 + 4, index_len + 8)
    apply_fixups(block, 0x28, 9)
    dev.write_at(block_off, bytes(block))
    with pytest.raises(NtfsError, match="loop"):
        NtfsVolume(dev).list_directory(5)

    dev = _dev(pristine)

    def far_subnode(record: bytearray) -> None:
        ir = _attr_offset(record, 0x90)
        value = ir + struct.unpack_from("<H", record, ir + 20)[0]
        struct.pack_into("<q", record, value + 32 + 16, 1 << 40)

    _patch_record(dev, 5, far_subnode)
    with pytest.raises(NtfsError, match="past the allocation"):
        NtfsVolume(dev).list_directory(5)


def test_security_index_damage(pristine: bytes) -> None:
    dev = _dev(pristine)

    def bad_sii(record: bytearray) -> None:
        ir = record.find("$SII".encode("utf-16-le")) - 24
        value = ir + struct.unpack_from("<H", record, ir + 20)[0]
        first_entry = value + 32
        # Data of the first $SII entry: the $SDS offset (u64 at data+8).
        data_off = struct.unpack_from("<H", record, first_entry)[0]
        struct.pack_into("<Q", record, first_entry + data_off + 8, 1 << 40)

    _patch_record(dev, 9, bad_sii)
    with pytest.raises(NtfsError, match="points outside"):
        NtfsVolume(dev).security_descriptor(0)


def test_logfile_damage(pristine: bytes) -> None:
    dev = _dev(pristine)
    vol = NtfsVolume(dev)
    log_lcn = vol.record(2).require(0x80).runs[0].lcn
    assert log_lcn is not None
    assert vol.logfile_restart().clean
    dev.write_at(log_lcn * 4096 + 4096 + 0x30 + 24, struct.pack("<q", 12345))  # 2nd copy size
    with pytest.raises(NtfsError):
        NtfsVolume(dev).logfile_restart()
    dev.write_at(log_lcn * 4096, b"\xff" * 8192)
    assert NtfsVolume(dev).logfile_state() is None  # "empty" log, as ntfs-3g leaves it


def test_runlist_round_trip_and_errors() -> None:
    runs = [Run(100, 5), Run(None, 1000), Run(7, 1), Run(1 << 33, 70000), Run(2, 3)]
    assert decode_runlist(encode_runlist(runs), what="t") == runs
    with pytest.raises(NtfsError, match="not terminated"):
        decode_runlist(b"\x01\x05", what="t")
    with pytest.raises(NtfsError, match="header byte"):
        decode_runlist(b"\x90\x00", what="t")
    with pytest.raises(NtfsError, match="runs past"):
        decode_runlist(b"\x44\x01", what="t")
    with pytest.raises(NtfsError, match="run of"):
        decode_runlist(b"\x11\x00\x05\x00", what="t")
    with pytest.raises(NtfsError, match="outside the volume"):
        decode_runlist(encode_runlist([Run(10, 10)]), what="t", max_lcn=15)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.one_of(st.none(), st.integers(0, 1 << 40)), st.integers(1, 1 << 36)),
        min_size=1,
        max_size=20,
    )
)
def test_runlist_round_trip_property(pairs: list[tuple[int | None, int]]) -> None:
    runs = [Run(lcn, length) for lcn, length in pairs]
    assert decode_runlist(encode_runlist(runs), what="t") == runs


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_metadata_damage_gives_clean_errors(pristine: bytes, data: st.DataObject) -> None:
    dev = _dev(pristine)
    vol = NtfsVolume(dev)
    # Damage anywhere in the metadata: boot sector, MFT, index block, $Secure, log restart.
    hot = [0, vol.record_offset(0), vol.record_offset(5), vol.record_offset(9)]
    for _ in range(data.draw(st.integers(1, 6))):
        base = data.draw(st.sampled_from(hot))
        pos = base + data.draw(st.integers(0, 1023))
        dev.write_at(pos, data.draw(st.binary(min_size=1, max_size=4)))
    try:
        v = NtfsVolume(dev)
        v.info()
        for entry in v.list_directory(5):
            v.security_descriptor(entry.record)
        v.logfile_restart()
    except (NtfsError, FormatError):
        pass
