"""The generated upcase table against Windows' own (in a CIM) and mkntfs' $UpCase."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from cimsnap.formats.upcase import (
    TABLE_BYTES,
    name_key,
    names_equal,
    upcase_name,
    upcase_table,
    upcase_table_bytes,
)
from tests.conftest import require_tool

_OFFSET_MASK = (1 << 48) - 1


def _cim_upcase_table(image_dir: Path) -> bytes:
    """The upcase table of a CIM: FilesystemHeader -> filesystem object -> upcase RegionOffset.

    A deliberately small parse (layouts in cimfs-format.md); the full reader lives elsewhere.
    """
    cim = next(image_dir.glob("*.cim")).read_bytes()
    assert cim[:8] == b"cimfile0" and cim[12] == 0  # image file
    region_set = cim[32:48]
    guid = "{:08x}-{:04x}-{:04x}-{}-{}".format(
        *struct.unpack_from("<IHH", region_set), region_set[8:10].hex(), region_set[10:].hex()
    )

    def region(index: int) -> bytes:
        return (image_dir / f"region_{guid}_{index}").read_bytes()

    (fs_object,) = struct.unpack_from("<Q", cim, 56)
    fs_region = region(fs_object >> 48)
    (upcase_ref,) = struct.unpack_from("<Q", fs_region, fs_object & _OFFSET_MASK)
    start = upcase_ref & _OFFSET_MASK
    table = region(upcase_ref >> 48)[start : start + TABLE_BYTES]
    assert len(table) == TABLE_BYTES
    return table


def test_equals_windows_cim_table(testdata: Path) -> None:
    windows = _cim_upcase_table(testdata / "cim" / "pinball")
    ours = upcase_table_bytes()
    differing = [i for i in range(0, TABLE_BYTES, 2) if windows[i : i + 2] != ours[i : i + 2]]
    assert not differing, [hex(i // 2) for i in differing[:20]]


def test_equals_mkntfs_upcase(tmp_path: Path) -> None:
    mkntfs = require_tool("mkntfs")
    ntfscat = require_tool("ntfscat")
    image = tmp_path / "vol.img"
    with open(image, "wb") as f:
        f.truncate(16 << 20)
    subprocess.run([mkntfs, "-q", "-F", "-Q", str(image)], check=True, capture_output=True)
    mkntfs_table = subprocess.run(
        [ntfscat, str(image), "$UpCase"], check=True, capture_output=True
    ).stdout
    assert mkntfs_table == upcase_table_bytes()


def test_table_shape_and_known_entries() -> None:
    table = upcase_table()
    assert len(table) == 0x10000 and len(upcase_table_bytes()) == TABLE_BYTES
    assert upcase_table() is table  # cached
    assert [table[ord(c)] for c in "az{"] == [ord("A"), ord("Z"), ord("{")]
    assert table[0xFF] == 0x178 and table[0xE9] == 0xC9
    assert table[0x1F80] == 0x1F88  # simple (not full) uppercase
    assert table[0x2D00] == 0x10A0 and table[0xA641] == 0xA640  # Unicode 4.1 / 5.1 additions
    # Not round-trip pairs, and pairs newer than Unicode 5.1, map to themselves.
    for unit in (0xB5, 0x131, 0x17F, 0x3C2, 0x345, 0x1C5, 0xDF, 0x10D0, 0xAB70, 0x0265, 0xD800):
        assert table[unit] == unit, hex(unit)


def test_upcase_name() -> None:
    assert upcase_name("System Volume Information") == "SYSTEM VOLUME INFORMATION"
    assert upcase_name("straße µ") == "STRAßE µ"
    assert upcase_name("a\U0001f600b") == "A\U0001f600B"
    assert names_equal("WcSandboxState", "wcsandboxSTATE")
    assert not names_equal("ı", "I")


def test_name_key_orders_by_utf16_units() -> None:
    # U+FF21 (fullwidth A) sorts after a surrogate pair in UTF-16, before it in code points.
    names = ["\uff21", "\U00010000", "b", "A", "a_"]
    ordered = sorted(names, key=name_key)
    assert ordered == ["A", "a_", "b", "\U00010000", "\uff21"]


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_upcase_name_properties(text: str) -> None:
    up = upcase_name(text)
    assert len(up) == len(text)
    assert upcase_name(up) == up
    assert name_key(text) == name_key(up)


def test_every_mapping_is_a_unicode_simple_case_pair() -> None:
    table = upcase_table()
    for cp, up in enumerate(table):
        if up != cp:
            assert chr(up).lower() == chr(cp), hex(cp)
            assert table[up] == up  # uppercase letters are fixed points


def test_windows_crc64_constant_matches_the_table() -> None:
    from cimsnap.formats.ntfs.values import WINDOWS_UPCASE_CRC64, crc64, upcase_info

    assert crc64(upcase_table_bytes()) == WINDOWS_UPCASE_CRC64
    assert upcase_info(b"\0" * 10)[8:16] == crc64(b"\0" * 10).to_bytes(8, "little")
