"""Malformed VHDX files: each gives a clear VhdxError (and a one-line CLI error), never a hang,
a crash or a traceback."""

from __future__ import annotations

import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import crc32c
import pytest

from cimsnap.cli.main import main
from cimsnap.formats.vhdx import VhdxError, check, create, info, open_disk

MiB = 1 << 20
KiB = 1 << 10
H1, H2 = 64 * KiB, 128 * KiB
RT1, RT2 = 192 * KiB, 256 * KiB
META = 2 * MiB
BAT = 3 * MiB
LOG = 1 * MiB


def _patch(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def _read(path: Path, offset: int, n: int) -> bytearray:
    with path.open("rb") as f:
        f.seek(offset)
        return bytearray(f.read(n))


def _fix_crc(buf: bytearray) -> bytes:
    struct.pack_into("<I", buf, 4, 0)
    struct.pack_into("<I", buf, 4, crc32c.crc32c(bytes(buf)))
    return bytes(buf)


def _edit_region_tables(path: Path, edit: Callable[[bytearray], None], *, which=(RT1, RT2)) -> None:
    for off in which:
        table = _read(path, off, 64 * KiB)
        edit(table)
        _patch(path, off, _fix_crc(table))


def _edit_headers(path: Path, edit: Callable[[bytearray], None]) -> None:
    for off in (H1, H2):
        header = _read(path, off, 4096)
        edit(header)
        _patch(path, off, _fix_crc(header))


def _meta_entry_offset(path: Path, guid_prefix: bytes) -> int:
    """File offset of the metadata table entry whose item GUID starts with ``guid_prefix``."""
    table = _read(path, META, 64 * KiB)
    count = struct.unpack_from("<H", table, 10)[0]
    for i in range(count):
        if table[32 + 32 * i : 32 + 32 * i + len(guid_prefix)] == guid_prefix:
            return META + 32 + 32 * i
    raise AssertionError("metadata entry not found")


FILE_PARAMS = bytes.fromhex("3767a1ca36fa434d")  # CAA16737-FA36-4D43 in bytes_le
DISK_SIZE = bytes.fromhex("2442a52f1bcd7648")  # 2FA54224-CD1B-4876
LSS = bytes.fromhex("1dbf41816fa90947")  # 8141BF1D-A96F-4709


def _item_offset(path: Path, prefix: bytes) -> int:
    entry = _meta_entry_offset(path, prefix)
    return META + struct.unpack_from("<I", _read(path, entry + 16, 4))[0]


def _set_bat(index: int, value: int) -> Callable[[Path], None]:
    return lambda p: _patch(p, BAT + 8 * index, struct.pack("<Q", value))


def _damage(offset: int) -> Callable[[Path], None]:
    return lambda p: _patch(p, offset + 100, b"\xde\xad")


def _truncate(size: int) -> Callable[[Path], None]:
    def edit(p: Path) -> None:
        with p.open("r+b") as f:
            f.truncate(size)

    return edit


def _region_count(n: int) -> Callable[[Path], None]:
    return lambda p: _edit_region_tables(p, lambda t: struct.pack_into("<I", t, 8, n))


def _region_field(entry: int, field_offset: int, fmt: str, value: int) -> Callable[[Path], None]:
    at = 16 + 32 * entry + field_offset
    return lambda p: _edit_region_tables(p, lambda t: struct.pack_into(fmt, t, at, value))


def _unknown_required_region(p: Path) -> None:
    def edit(t: bytearray) -> None:
        struct.pack_into("<I", t, 8, 3)
        t[16 + 64 : 16 + 96] = b"\x11" * 16 + struct.pack("<QII", 10 * MiB, MiB, 1)

    _edit_region_tables(p, edit)


def _unknown_item(path: Path, *, required: bool) -> None:
    """Replace the virtual size item's GUID by an unknown one."""
    entry = _meta_entry_offset(path, DISK_SIZE)
    _patch(path, entry, b"\x99" * 16)
    _patch(path, entry + 24, struct.pack("<I", 4 if required else 0))


def _item(prefix: bytes, fmt: str, value: int) -> Callable[[Path], None]:
    return lambda p: _patch(p, _item_offset(p, prefix), struct.pack(fmt, value))


def _meta_entry_field(prefix: bytes, field_offset: int, value: int) -> Callable[[Path], None]:
    return lambda p: _patch(
        p, _meta_entry_offset(p, prefix) + field_offset, struct.pack("<I", value)
    )


def _header_field(offset: int, fmt: str, value: int) -> Callable[[Path], None]:
    return lambda p: _edit_headers(p, lambda h: struct.pack_into(fmt, h, offset, value))


# (name, damage, message pattern, where the error shows: "open", "check" or "read")
CASES: list[tuple[str, Callable[[Path], None], str, str]] = [
    ("empty file", _truncate(0), "truncated", "open"),
    ("truncated in the header section", _truncate(300 * KiB), "truncated", "open"),
    (
        "truncated in the metadata region",
        _truncate(2 * MiB + 100),
        "truncated|past the end",
        "open",
    ),
    ("truncated in the BAT region", _truncate(3 * MiB + 4096), "truncated|past the end", "open"),
    ("truncated inside a data block", _truncate(4 * MiB + 4096), "past the end", "read"),
    ("not a VHDX file", lambda p: _patch(p, 0, b"NOTVHDX!"), "not a VHDX file", "open"),
    ("both headers damaged", lambda p: (_damage(H1)(p), _damage(H2)(p)), "no valid header", "open"),
    ("header version 2", _header_field(66, "<H", 2), "unsupported VHDX version", "open"),
    ("log version 1", _header_field(64, "<H", 1), "unsupported log version", "open"),
    ("log past end of file", _header_field(72, "<Q", 1 << 40), "log .* past the end", "open"),
    ("unaligned log", _header_field(68, "<I", 4096), "multiples of 1 MiB", "open"),
    ("region table 1 damaged", _damage(RT1), "region table 1 is damaged", "check"),
    ("region table 2 damaged", _damage(RT2), "region table 2 is damaged", "check"),
    (
        "both region tables damaged",
        lambda p: (_damage(RT1)(p), _damage(RT2)(p)),
        "no valid region table",
        "open",
    ),
    (
        "region tables differ",
        lambda p: _edit_region_tables(p, lambda t: struct.pack_into("<I", t, 12, 1), which=(RT2,)),
        "differ",
        "check",
    ),
    ("absurd region count", _region_count(100_000), "entries", "open"),
    ("region count past the entries", _region_count(2047), "twice", "open"),
    ("BAT region past end of file", _region_field(0, 16, "<Q", 1 << 44), "past the end", "open"),
    ("BAT region overlaps metadata", _region_field(0, 16, "<Q", 2 * MiB), "overlaps", "open"),
    ("BAT region overlaps the log", _region_field(0, 16, "<Q", 1 * MiB), "overlaps", "open"),
    ("BAT region in the header section", _region_field(0, 16, "<Q", 0), "invalid offset", "open"),
    ("unaligned region", _region_field(1, 16, "<Q", 2 * MiB + 4096), "aligned", "open"),
    ("zero-length region", _region_field(1, 24, "<I", 0), "invalid offset or length", "open"),
    ("unknown required region", _unknown_required_region, "unsupported required region", "open"),
    (
        "metadata signature",
        lambda p: _patch(p, META, b"METADATA"),
        "metadata table signature",
        "open",
    ),
    (
        "absurd metadata count",
        lambda p: _patch(p, META + 10, struct.pack("<H", 65535)),
        "entries",
        "open",
    ),
    (
        "metadata item outside region",
        _meta_entry_field(DISK_SIZE, 16, 0xFFFFFF00),
        "outside the metadata region",
        "open",
    ),
    (
        "metadata item inside the table",
        _meta_entry_field(DISK_SIZE, 16, 8),
        "outside the metadata region",
        "open",
    ),
    ("huge metadata item", _meta_entry_field(DISK_SIZE, 20, 64 * MiB), "larger than 1 MiB", "open"),
    ("metadata items overlap", _meta_entry_field(DISK_SIZE, 16, 64 * KiB + 4), "overlap", "open"),
    (
        "missing virtual size item",
        lambda p: _unknown_item(p, required=False),
        "virtual disk size.* missing",
        "open",
    ),
    (
        "unknown required metadata item",
        lambda p: _unknown_item(p, required=True),
        "unsupported required",
        "open",
    ),
    ("block size 3 MiB", _item(FILE_PARAMS, "<I", 3 * MiB), "invalid block size", "open"),
    ("block size 0", _item(FILE_PARAMS, "<I", 0), "invalid block size", "open"),
    ("logical sector size 1000", _item(LSS, "<I", 1000), "logical sector size", "open"),
    ("virtual size 2^63", _item(DISK_SIZE, "<Q", 1 << 63), "invalid virtual disk size", "open"),
    ("virtual size 0", _item(DISK_SIZE, "<Q", 0), "invalid virtual disk size", "open"),
    (
        "virtual size not a sector multiple",
        _item(DISK_SIZE, "<Q", 16 * MiB + 7),
        "multiple",
        "open",
    ),
    (
        "BAT too small for the size",
        _item(DISK_SIZE, "<Q", 1 << 40),
        "BAT region .* too small",
        "open",
    ),
    (
        "has parent without locator",
        lambda p: _patch(p, _item_offset(p, FILE_PARAMS) + 4, struct.pack("<I", 2)),
        "without a parent locator",
        "open",
    ),
    ("BAT entry past end of file", _set_bat(0, (1 << 40) | 6), "past the end", "read"),
    ("BAT entry into the metadata region", _set_bat(0, (2 * MiB) | 6), "metadata region", "read"),
    ("BAT entry into the header section", _set_bat(0, 6), "header section", "read"),
    ("BAT entry into the log", _set_bat(0, (1 * MiB) | 6), "into the log", "read"),
    ("BAT entry invalid state", _set_bat(0, 4), "invalid payload state", "read"),
    ("partially present without parent", _set_bat(0, (4 * MiB) | 7), "partially present", "read"),
    ("BAT entry reserved bits", _set_bat(0, (4 * MiB) | 6 | 0x100), "reserved bits", "check"),
    (
        "two blocks at one offset",
        lambda p: (_set_bat(0, (4 * MiB) | 6)(p), _set_bat(1, (4 * MiB) | 6)(p)),
        "overlaps",
        "check",
    ),
]


def _dynamic(tmp_path: Path) -> Path:
    path = tmp_path / "d.vhdx"
    create(path, 16 * MiB)
    with open_disk(path, writable=True) as disk:
        disk.write_at(0, b"x" * 4096)  # block 0 at 4 MiB
    with path.open("r+b") as f:  # room for "BAT entry" cases to point at real bytes
        f.truncate(8 * MiB)
    return path


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("name", "damage", "pattern", "where"), CASES, ids=[c[0] for c in CASES])
def test_malformed(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    damage: Callable[[Path], None],
    pattern: str,
    where: str,
) -> None:
    path = _dynamic(tmp_path)
    damage(path)
    if where == "open":
        with pytest.raises(VhdxError, match=pattern):
            open_disk(path)
    elif where == "read":
        with open_disk(path) as disk, pytest.raises(VhdxError, match=pattern):
            disk.read_at(0, 16 * MiB)
    with pytest.raises(VhdxError, match=pattern):
        check(path)
    # The command line prints one line naming the file, and exits 1.
    assert main(["vhdx", "check", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cimsnap: error: ") and str(path) in err
    if where == "open":
        assert main(["vhdx", "info", str(path)]) == 1
        assert capsys.readouterr().err.count("\n") == 1


def test_one_damaged_header_falls_back_to_the_other(tmp_path: Path) -> None:
    path = _dynamic(tmp_path)
    with open_disk(path) as disk:
        current = disk.header.sequence_number
        slot = disk._header_slot
    _damage((H1, H2)[slot])(path)  # the current one: the older copy takes over
    with open_disk(path) as disk:
        assert disk.header.sequence_number < current
        assert disk.read_at(0, 4096) == b"x" * 4096
    check(path)  # a torn header copy is what a crash during a header update leaves
    assert info(path)["headers_valid"].count(False) == 1
    with open_disk(path, writable=True) as disk:  # the next session rewrites the bad copy
        disk.write_at(0, b"y")
    assert info(path)["headers_valid"] == [True, True]


@pytest.mark.parametrize("table", [RT1, RT2])
def test_one_damaged_region_table_still_opens(tmp_path: Path, table: int) -> None:
    path = _dynamic(tmp_path)
    _damage(table)(path)
    with open_disk(path) as disk:
        assert disk.read_at(0, 4096) == b"x" * 4096


def test_parent_locator_garbage(tmp_path: Path) -> None:
    from cimsnap.formats.vhdx import create_differencing

    create(tmp_path / "p.vhdx", 16 * MiB)
    child = tmp_path / "c.vhdx"
    create_differencing(child, tmp_path / "p.vhdx")
    locator_entry = _meta_entry_offset(child, bytes.fromhex("2d5fd3a80bb34d45"))
    locator = META + struct.unpack_from("<I", _read(child, locator_entry + 16, 4))[0]
    for patch_at, data, pattern in (
        (locator + 18, struct.pack("<H", 60000), "claims 60000 entries"),
        (locator + 20, struct.pack("<I", 0xFFFFFF), "outside the item"),
        (locator, b"\x01" * 16, "unsupported parent locator type"),
    ):
        saved = _read(child, locator, 64)
        _patch(child, patch_at, data)
        with pytest.raises(VhdxError, match=pattern):
            open_disk(child)
        assert main(["vhdx", "info", str(child)]) == 1
        _patch(child, locator, bytes(saved))
    with open_disk(child):
        pass


def test_cli_error_has_no_traceback_in_a_real_process(tmp_path: Path) -> None:
    path = tmp_path / "bad.vhdx"
    path.write_bytes(b"vhdxfile" + bytes(5000))
    proc = subprocess.run(
        [sys.executable, "-m", "cimsnap.cli", "vhdx", "info", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "truncated" in proc.stderr


@pytest.mark.timeout(30)
def test_fifo_or_directory_is_refused_without_hanging(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import os

    fifo = tmp_path / "fifo.vhdx"
    os.mkfifo(fifo)
    for path, pattern in ((fifo, "not a regular file"), (tmp_path, "directory")):
        with pytest.raises(VhdxError, match=pattern):
            open_disk(path)
        assert main(["vhdx", "info", str(path)]) == 1
        assert capsys.readouterr().err.count("\n") == 1
    assert main(["vhdx", "import", str(fifo), str(tmp_path / "x.vhdx")]) == 1
    assert "not a regular file" in capsys.readouterr().err
