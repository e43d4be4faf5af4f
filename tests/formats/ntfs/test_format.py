"""The formatter's volumes, checked with ntfs-3g's tools, dissect.ntfs and our own reader."""

from __future__ import annotations

import io
import os
import re
import struct
from pathlib import Path

import pytest
from dissect.ntfs import NTFS
from dissect.ntfs.secure import SecurityDescriptor

from cimsnap.formats.blockdev import MemoryDevice, RawFileDevice
from cimsnap.formats.ntfs import SCRATCH_DIRECTORIES, NtfsError, NtfsVolume, format_volume
from cimsnap.formats.ntfs.security import (
    SD_ROOT,
    SD_SYSTEM_ONLY_DIRECTORY,
    SD_SYSTEM_READONLY,
    SD_SYSTEM_READWRITE,
)
from cimsnap.formats.secdesc import sd_to_sddl
from tests.formats.ntfs.helpers import MiB, make_volume, ntfs_checks, run_tool

SYSTEM_FILES = [
    "$AttrDef",
    "$BadClus",
    "$Bitmap",
    "$Boot",
    "$Extend",
    "$LogFile",
    "$MFT",
    "$MFTMirr",
    "$Secure",
    "$UpCase",
    "$Volume",
]
SYSTEM_ONLY_SDDL = "O:BAG:SYD:P(A;OICI;FA;;;SY)"


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ntfs") / "vol.img"
    make_volume(path, 64 * MiB, label="scratch", serial=0x1122334455667788)
    return path


def test_ntfs3g_tools_accept_it(volume: Path) -> None:
    ntfs_checks(volume)
    info = run_tool("ntfsinfo", "-m", volume).stdout
    assert re.search(r"Volume Version: 3\.1", info)
    assert re.search(r"Cluster Size: 4096", info) and re.search(r"MFT Record Size: 1024", info)
    assert re.search(r"Index Block Size: 4096", info)
    assert "Volume Name: scratch" in info


def test_ntfsls_lists_system_files_and_scratch_directories(volume: Path) -> None:
    listing = run_tool("ntfsls", "-a", "-s", volume).stdout.split("\n")
    names = [n for n in listing if n and n not in (".", "..")]
    assert sorted(names) == sorted([*SYSTEM_FILES, *SCRATCH_DIRECTORIES])
    visible = run_tool("ntfsls", "-a", volume).stdout.split()
    assert "WcSandboxState" in visible and "Information" in visible
    extend = run_tool("ntfsls", "-a", "-s", "-p", "/$Extend", volume).stdout.split()
    assert sorted(set(extend) - {".", ".."}) == ["$ObjId", "$Quota", "$Reparse"]


@pytest.mark.parametrize("name", SCRATCH_DIRECTORIES)
def test_ntfsinfo_shows_hidden_system_directories(volume: Path, name: str) -> None:
    out = run_tool("ntfsinfo", "-F", f"/{name}", volume).stdout
    assert "MFT Record Flags:\t IN_USE DIRECTORY" in out
    assert "File attributes:\t HIDDEN SYSTEM (0x00000006)" in out  # $STANDARD_INFORMATION
    assert "HIDDEN SYSTEM I30_INDEX (0x10000006)" in out  # $FILE_NAME
    assert "Security ID:\t\t 258 (0x102)" in out


def test_dissect_reads_volume_and_security_descriptors(volume: Path) -> None:
    with open(volume, "rb") as fh:
        fs = NTFS(fh)
        assert fs.serial == 0x1122334455667788 and fs.volume_name == "scratch"
        assert fs.cluster_size == 4096
        root = fs.mft.get("\\")
        assert sorted(root.listdir()) == sorted([*SYSTEM_FILES, ".", *SCRATCH_DIRECTORIES])
        for name in SCRATCH_DIRECTORIES:
            record = fs.mft.get(name)
            assert record.is_dir() and record.listdir() == {}
            si = record.attributes[0x10][0]
            assert si.file_attributes == 0x6
            sd = fs.secure.lookup(si.security_id)
            assert str(sd.owner) == "S-1-5-32-544" and str(sd.group) == "S-1-5-18"
            assert int(sd.header.Control) & 0x1000  # DACL protected
            [ace] = sd.dacl.ace
            assert (str(ace.sid), ace.mask, int(ace.header.AceFlags)) == ("S-1-5-18", 0x1F01FF, 3)
        # The root keeps its own descriptor (as on Windows), not one in $Secure.
        root_sd = SecurityDescriptor(io.BytesIO(root.attributes[0x50][0].data()))
        assert [str(a.sid) for a in root_sd.dacl.ace] == [
            *("S-1-5-32-544", "S-1-5-32-544", "S-1-5-18", "S-1-5-18"),
            *("S-1-5-11", "S-1-5-11", "S-1-5-32-545", "S-1-5-32-545"),
        ]
        assert len(list(fs.secure.descriptors())) == 2 * 3  # each one and its mirror copy
        upcase = fs.mft.get("$UpCase").open().read()
        assert len(upcase) == 128 * 1024


def test_security_descriptors_render_as_expected_sddl() -> None:
    """The SDDL of each descriptor, as Windows 10 wrote them on the volume in the test data."""
    assert sd_to_sddl(SD_SYSTEM_ONLY_DIRECTORY) == SYSTEM_ONLY_SDDL
    assert sd_to_sddl(SD_SYSTEM_READONLY) == "O:SYG:BAD:(A;;FR;;;SY)(A;;FR;;;BA)"
    assert sd_to_sddl(SD_SYSTEM_READWRITE) == "O:SYG:BAD:(A;;0x12019f;;;SY)(A;;0x12019f;;;BA)"
    assert sd_to_sddl(SD_ROOT) == (
        "O:SYG:SYD:(A;;FA;;;BA)(A;OICIIO;GA;;;BA)(A;;FA;;;SY)(A;OICIIO;GA;;;SY)(A;;0x1301bf;;;AU)"
        "(A;OICIIO;SDGXGWGR;;;AU)(A;;0x1200a9;;;BU)(A;OICIIO;GXGR;;;BU)"
    )


@pytest.mark.parametrize(
    "sd", [SD_SYSTEM_ONLY_DIRECTORY, SD_SYSTEM_READONLY, SD_SYSTEM_READWRITE, SD_ROOT]
)
def test_security_descriptors_are_laid_out_as_windows_keeps_them_in_sds(sd: bytes) -> None:
    """Header, DACL, owner, group, nothing between or after (the order Windows 10 wrote)."""
    revision, _sbz, control, owner, group, sacl, dacl = struct.unpack_from("<BBHIIII", sd)
    assert (revision, sacl, dacl) == (1, 0, 20) and control & 0x8004 == 0x8004
    dacl_size = struct.unpack_from("<H", sd, dacl + 2)[0]
    owner_size = 8 + 4 * sd[owner + 1]
    assert owner == dacl + dacl_size and group == owner + owner_size
    assert len(sd) == group + 8 + 4 * sd[group + 1]


def test_own_reader(volume: Path) -> None:
    with RawFileDevice(volume) as dev:
        vol = NtfsVolume(dev)
        info = vol.info()
        assert info.version == (3, 1) and info.label == "scratch" and info.flags == 0
        assert info.total_clusters == (64 * MiB // 512 - 1) // 8
        assert 0 < info.total_clusters - info.free_clusters < 1000
        restart = vol.logfile_restart()
        assert restart.clean and (restart.major, restart.minor) == (1, 1)
        for name in SCRATCH_DIRECTORIES:
            number = vol.lookup(name.upper())
            assert vol.security_descriptor(number) == SD_SYSTEM_ONLY_DIRECTORY
            assert vol.list_directory(number) == []
        assert vol.security_descriptor(5) == SD_ROOT
        assert vol.security_descriptor(vol.lookup("$Extend/$Quota")) == SD_SYSTEM_READWRITE


def test_logfile_is_two_restart_pages_then_unwritten(volume: Path) -> None:
    with RawFileDevice(volume) as dev:
        vol = NtfsVolume(dev)
        log = vol.record(2).require(0x80)
        data = vol.read_attribute(log)
    assert data[:4] == b"RSTR" and data[4096:4100] == b"RSTR"
    assert data[8192:] == bytes(len(data) - 8192)
    run_tool("ntfsfix", "-n", volume)  # ntfs-3g's $LogFile consistency check


def test_ten_gib_volume_stores_little(tmp_path: Path) -> None:
    path = tmp_path / "big.img"
    layout = make_volume(path, 10 << 30)
    assert layout.total_clusters == (10 * 1024 * MiB // 512 - 1) // 8
    assert layout.logfile_size == 64 * MiB
    assert layout.bytes_written < 640 * 1024
    assert os.stat(path).st_blocks * 512 < 1 * MiB
    ntfs_checks(path)


@pytest.mark.parametrize(
    ("sector_size", "cluster_size"), [(4096, 4096), (512, 1024), (512, 512), (2048, 4096)]
)
def test_other_geometries(tmp_path: Path, sector_size: int, cluster_size: int) -> None:
    path = tmp_path / "geo.img"
    make_volume(path, 48 * MiB, sector_size=sector_size, cluster_size=cluster_size)
    ntfs_checks(path)
    with open(path, "rb") as fh:
        fs = NTFS(fh)
        assert fs.cluster_size == cluster_size and fs.sector_size == sector_size
        assert "WcSandboxState" in fs.mft.get("\\").listdir()


def test_no_scratch_directories_option(tmp_path: Path) -> None:
    path = tmp_path / "plain.img"
    make_volume(path, 16 * MiB, scratch_directories=False)
    ntfs_checks(path)
    assert run_tool("ntfsls", "-a", path).stdout.split() == []


def test_dirty_device_needs_no_zeroes(tmp_path: Path) -> None:
    """Without zeroed=True every metadata byte is written: garbage underneath must not show."""
    path = tmp_path / "garbage.img"
    with open(path, "wb") as f:
        f.write(bytes([0xA5]) * (24 * MiB))
    with RawFileDevice(path, writable=True) as dev:
        layout = format_volume(dev, zeroed=False)
    assert layout.bytes_written > layout.used_clusters * 4096
    ntfs_checks(path)
    with open(path, "rb") as fh:
        assert "System Volume Information" in NTFS(fh).mft.get("\\").listdir()


def test_reformat_over_an_old_volume(tmp_path: Path) -> None:
    path = tmp_path / "twice.img"
    make_volume(path, 32 * MiB, label="first")
    with RawFileDevice(path, writable=True) as dev:
        format_volume(dev, label="second")
    assert "Volume Name: second" in run_tool("ntfsinfo", "-m", path).stdout
    ntfs_checks(path)


def test_argument_errors() -> None:
    with pytest.raises(NtfsError, match="too small"):
        format_volume(MemoryDevice(512 * 1024))
    with pytest.raises(NtfsError, match="cluster size"):
        format_volume(MemoryDevice(16 * MiB), cluster_size=8192)
    with pytest.raises(NtfsError, match="sector size"):
        format_volume(MemoryDevice(16 * MiB), sector_size=520)
    with pytest.raises(NtfsError, match="label"):
        format_volume(MemoryDevice(16 * MiB), label="x" * 129)
    with pytest.raises(NtfsError, match="MFT"):
        format_volume(MemoryDevice(16 * MiB), mft_records=8)
    with pytest.raises(NtfsError, match="LogFile"):
        format_volume(MemoryDevice(16 * MiB), log_size=1000)


def test_format_is_deterministic_given_serial_and_time() -> None:
    a, b = MemoryDevice(16 * MiB), MemoryDevice(16 * MiB)
    for dev in (a, b):
        format_volume(dev, serial=7, timestamp=132_000_000_000_000_000)
    # Only the $LogFile's open count (random, as Windows makes it) differs.
    diff = [i for i in range(0, len(a.buf), 4096) if a.buf[i : i + 4096] != b.buf[i : i + 4096]]
    log_lcn = NtfsVolume(a).record(2).require(0x80).runs[0].lcn
    assert log_lcn is not None
    assert {d // 4096 for d in diff} <= {log_lcn, log_lcn + 1}


def test_fill_log_option(tmp_path: Path) -> None:
    path = tmp_path / "ff.img"
    layout = make_volume(path, 32 * MiB, fill_log=True)
    ntfs_checks(path)
    with RawFileDevice(path) as dev:
        vol = NtfsVolume(dev)
        data = vol.read_attribute(vol.record(2).require(0x80))
        assert vol.logfile_restart().clean
    assert data[:4] == data[4096:4100] == b"RSTR"
    assert set(data[8192:]) == {0xFF} and len(data) == layout.logfile_size
