"""Our volume next to one formatted by Windows 10 (build 18363): the NTFS partition inside
``testdata/vhdx/dissect_fixed.vhdx.gz`` (MBR partition at sector 128, 14336 sectors).

Everything a fresh format fixes is compared byte for byte where it must be equal: security
descriptors, $AttrDef, $UpCase, the boot sector's BPB, the flags, attributes, namespaces and
attribute lists of the system files, the $Quota entries, the $LogFile restart area layout.  The
Windows volume also carries what Windows adds when it first mounts a volume (TxF's $RmMetadata
tree, $Deleted) and its label "New Volume"; those are left out of the comparison.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest

from cimsnap.formats import vhdx
from cimsnap.formats.blockdev import MemoryDevice, RawFileDevice, WindowDevice
from cimsnap.formats.ntfs import NtfsVolume, format_volume
from cimsnap.formats.ntfs.security import parse_sds_header
from tests.formats.ntfs.helpers import MiB

PARTITION_LBA, PARTITION_SECTORS = 128, 14336
SYSTEM_RECORDS = [*range(0, 16), 24, 25, 26]


@pytest.fixture(scope="module")
def windows(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> NtfsVolume:
    path = tmp_path_factory.mktemp("win") / "fixed.vhdx"
    path.write_bytes(gzip.decompress((testdata / "vhdx" / "dissect_fixed.vhdx.gz").read_bytes()))
    disk = vhdx.open_disk(path)
    part = WindowDevice(disk, PARTITION_LBA * 512, PARTITION_SECTORS * 512)
    return NtfsVolume(MemoryDevice(data=part.read_at(0, part.size)))


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> NtfsVolume:
    path = tmp_path_factory.mktemp("ours") / "vol.img"
    with RawFileDevice.create(path, PARTITION_SECTORS * 512) as dev:
        format_volume(dev, hidden_sectors=PARTITION_LBA, zeroed=True)
    return NtfsVolume(RawFileDevice(path))


def test_boot_sector_bpb(windows: NtfsVolume, ours: NtfsVolume) -> None:
    a, b = windows.dev.read_at(0, 0x48), ours.dev.read_at(0, 0x48)
    # Everything up to the MFT LCN (jump, OEM id, BPB, geometry, hidden and total sectors)...
    assert a[:0x30] == b[:0x30]
    # ... and the record sizes; $MFT's place differs ($MFTMirr is at cluster 2 on both).
    assert a[0x40:0x48] == b[0x40:0x48]
    assert windows.boot.mftmirr_lcn == ours.boot.mftmirr_lcn == 2


def test_system_files(windows: NtfsVolume, ours: NtfsVolume) -> None:
    for number in SYSTEM_RECORDS:
        w, o = windows.record(number), ours.record(number)
        assert o.header.flags == w.header.flags, number
        assert o.header.sequence == w.header.sequence and o.header.link_count == w.header.link_count
        w_names = [(f.name, f.namespace, f.file_attributes) for f in w.file_names]
        assert [(f.name, f.namespace, f.file_attributes) for f in o.file_names] == w_names
        w_si = w.require(0x10).value
        o_si = o.require(0x10).value
        assert len(o_si) == len(w_si), number  # 48-byte (own descriptor) or 72-byte
        assert o.standard_information.file_attributes == w.standard_information.file_attributes
        w_attrs = [(a.type, a.name) for a in w.attributes if a.type != 0x100]  # TxF's $TXF_DATA
        assert [(a.type, a.name) for a in o.attributes] == w_attrs, number
        if len(w_si) == 72:
            assert o.standard_information.security_id == w.standard_information.security_id


def test_security_descriptors(windows: NtfsVolume, ours: NtfsVolume) -> None:
    for number in SYSTEM_RECORDS:
        assert ours.security_descriptor(number) == windows.security_descriptor(number), number
    # The first two $SDS entries (0x100, 0x101): same bytes, same hashes, same offsets.
    for volume in (windows, ours):
        sds = volume.record(9).require(0x80, "$SDS")
        entries = volume.read_range(sds, 0, 248)
        assert [parse_sds_header(entries[o : o + 20]) for o in (0, 128)] == [
            (0x32FEC6CB, 0x100, 0, 120),
            (0x3414C8F7, 0x101, 128, 120),
        ]


def test_attrdef_upcase_and_quota(windows: NtfsVolume, ours: NtfsVolume) -> None:
    for number, name in ((4, ""), (10, ""), (10, "$Info")):
        w = windows.read_attribute(windows.record(number).require(0x80, name))
        o = ours.read_attribute(ours.record(number).require(0x80, name))
        if name == "$Info":  # Windows records the OS that wrote the table: 10.0.18363
            assert struct.unpack_from("<III", w, 16) == (10, 0, 18363)
            w, o = w[:16], o[:16]  # length and CRC-64 of the table
        assert o == w, (number, name)
    for index in ("$O", "$Q"):
        w_entries = windows.index_entries(windows.record(24), index, view=True)
        o_entries = ours.index_entries(ours.record(24), index, view=True)
        assert [e.key for e in o_entries] == [e.key for e in w_entries]
        # Quota control entries: equal but for the change time (bytes 16-24).
        strip = [e.data[:16] + e.data[24:] for e in w_entries]
        assert [e.data[:16] + e.data[24:] for e in o_entries] == strip


def test_logfile_restart_area_layout(windows: NtfsVolume, ours: NtfsVolume) -> None:
    w_log = windows.record(2).require(0x80)
    o_log = ours.record(2).require(0x80)
    assert o_log.data_size == w_log.data_size == 2 * MiB  # a 7 MiB volume gets a 2 MiB log
    w_page = windows.read_range(w_log, 0, 0x30 + 0x40)
    o_page = ours.read_range(o_log, 0, 0x30 + 0x40)
    # Restart page header: RSTR, USA at 0x1E with 9 entries, 4 KiB pages, area at 0x30, LFS 1.1.
    assert o_page[:8] == w_page[:8] and o_page[16:0x1E] == w_page[16:0x1E]
    # Restart area: one client slot, sequence-number bits, area length 0xE0 with the client
    # array at 0x40, file size, record header length and page data offset as Windows has them.
    w_area, o_area = w_page[0x30:], o_page[0x30:]
    assert o_area[8:10] == w_area[8:10]  # log clients
    assert o_area[16:32] == w_area[16:32]
    assert o_area[36:40] == w_area[36:40]
    assert windows.logfile_restart().clean and ours.logfile_restart().clean
