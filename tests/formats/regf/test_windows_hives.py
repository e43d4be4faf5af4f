"""Hives written by Windows (offreg and the yarp samples) read with the facts in PROVENANCE.md."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from cimsnap.formats.regf import Hive, LayerSemantics, RegfError, RegType
from cimsnap.formats.secdesc import parse_security_descriptor


@pytest.fixture(scope="module")
def registry_data(testdata: Path) -> Path:
    return testdata / "registry"


@pytest.fixture(scope="module")
def testhive(registry_data: Path) -> Hive:
    return Hive.open(registry_data / "offreg" / "testhive")


def test_offreg_root_and_versions(testhive: Hive) -> None:
    assert testhive.root.name == "ROOT"
    assert testhive.minor_version == 5
    assert testhive.sequence_numbers == (1, 1)
    assert [k.name for k in testhive.root.subkeys()] == [
        "big-data-test",
        "character-encoding-test",
        "data-test",
        "subkey-test",
        "subpath-test",
    ]


def test_offreg_big_data(testhive: Hive) -> None:
    key = testhive.key("big-data-test")
    values = {v.name: v for v in key.values()}
    assert values["A"].data == b"A" * 16343
    assert values["B"].data == b"B" * 16344
    assert values["C"].data == b"C" * 16345
    assert all(v.type == RegType.REG_BINARY for v in values.values())


def test_offreg_character_encoding(testhive: Hive) -> None:
    key = testhive.key("character-encoding-test")
    assert sorted(k.name for k in key.subkeys()) == sorted(["äöü", "Ａ", "𐐐", "𐐸"])
    assert key.subkey("ａ") is not None and key.subkey("ａ").name == "Ａ"  # type: ignore[union-attr]
    assert key.subkey("ÄÖÜ").name == "äöü"  # type: ignore[union-attr]
    # case-insensitivity stops at the BMP: U+10410 and U+10438 are different keys
    assert key.subkey("𐐐").name == "𐐐"  # type: ignore[union-attr]
    assert key.subkey("𐐸").name == "𐐸"  # type: ignore[union-attr]


def test_offreg_data_types(testhive: Hive) -> None:
    key = testhive.key("data-test")
    got = {v.name: (v.type, v.decoded()) for v in key.values()}
    assert got["reg-sz"] == (RegType.REG_SZ, "sz-test")
    assert got["reg-sz-with-terminating-nul"] == (RegType.REG_SZ, "sz-test")
    assert got["reg-expand-sz"] == (RegType.REG_EXPAND_SZ, "sz-test")
    assert got["reg-multi-sz"] == (RegType.REG_MULTI_SZ, ["multi-sz-test", "line2"])
    assert got["reg-multi-sz-big"] == (RegType.REG_MULTI_SZ, ["0123456789" * 820, "0123456789"])
    assert got["dword"] == (RegType.REG_DWORD, 42)
    assert key.value("dword-big-endian").data == b"\x2a\x00\x00\x00"  # type: ignore[union-attr]
    assert got["qword"] == (RegType.REG_QWORD, 0xFFFFFFFFFFFFFFFF)
    assert got["binary"] == (RegType.REG_BINARY, b"\x01\x02\x03\x04\x05")


def test_offreg_index_root_order(testhive: Hive) -> None:
    names = [k.name for k in testhive.key("subkey-test").subkeys()]
    assert len(names) == 512
    assert names[:5] == ["Key0", "key1", "Key10", "Key100", "key101"]
    assert names == sorted(names, key=str.upper)
    assert testhive.find_key("SUBKEY-TEST\\KEY511").name == "key511"  # type: ignore[union-attr]


def test_offreg_subpaths(testhive: Hive) -> None:
    assert testhive.key("subpath-test\\no-subkeys").subkey_count == 0
    assert testhive.key("subpath-test\\with-single-level-subkey\\subkey")
    two = testhive.key("subpath-test\\with-two-levels-of-subkeys\\subkey1\\subkey2")
    assert two.path == "subpath-test\\with-two-levels-of-subkeys\\subkey1\\subkey2"
    assert testhive.find_key("subpath-test\\nothing") is None


def test_yarp_empty_hive(registry_data: Path) -> None:
    hive = Hive.open(registry_data / "yarp" / "EmptyHive")
    assert hive.root.subkey_count == 0 and hive.root.subkeys() == []
    written = dt.datetime(2017, 3, 4, 16, 37, 31, tzinfo=dt.UTC)
    assert abs(hive.root.last_written - written) < dt.timedelta(seconds=1)
    assert str(parse_security_descriptor(hive.root.security_descriptor).owner) == "S-1-5-32-544"


def test_yarp_big_data_hive(registry_data: Path) -> None:
    key = Hive.open(registry_data / "yarp" / "BigDataHive").key("key_with_bigdata")
    assert key.value_count == 2
    assert key.value("").data == b"1" * 16345  # type: ignore[union-attr]
    assert key.value("V").data == b"2" * 81725  # type: ignore[union-attr]


def test_yarp_many_subkeys(registry_data: Path) -> None:
    hive = Hive.open(registry_data / "yarp" / "ManySubkeysHive")
    key = hive.key("key_with_many_subkeys")
    assert sorted(int(k.name) for k in key.subkeys()) == list(range(1, 5001))
    found = hive.key("\\key_with_maNY_sUBkeys\\2119\\Find_me")
    assert found.path == "key_with_many_subkeys\\2119\\find_me"
    assert hive.find_key("key_with_many_subkeys\\3000") is not None
    assert hive.find_key("key_with_many_subkeys\\3000\\doesnt_exist") is None


def test_yarp_unicode_hive(registry_data: Path) -> None:
    hive = Hive.open(registry_data / "yarp" / "UnicodeHive")
    assert hive.key("ПриВет\\КлюЧ").path == "Привет\\Ключ"
    assert len(hive.root.security_descriptor) == 144


def test_yarp_multi_sz_hive(registry_data: Path) -> None:
    key = Hive.open(registry_data / "yarp" / "MultiSzHive").key("key")
    assert key.value("") is None
    assert key.value("1").decoded() == []  # type: ignore[union-attr]
    assert key.value("2").decoded() == ["привет", "как дела?"]  # type: ignore[union-attr]


def test_yarp_string_values_hive(registry_data: Path) -> None:
    hive = Hive.open(registry_data / "yarp" / "StringValuesHive")
    assert hive.minor_version == 3
    key = hive.key("key")
    assert key.value("").decoded() == "test тест"  # type: ignore[union-attr]
    assert key.value("1").data == b"test"  # type: ignore[union-attr]
    assert key.value("2").decoded() == "test тест"  # type: ignore[union-attr]
    assert key.value("3").decoded() == "test тест "  # type: ignore[union-attr]


def test_yarp_system_delta_layered_keys(registry_data: Path) -> None:
    hive = Hive.open(registry_data / "yarp" / "System_Delta")
    assert hive.minor_version == 6
    assert hive.layered
    assert hive.file_name == "SandboxState\\Hives\\system_Delta"
    svc = hive.key("ControlSet001\\Services\\xboxgipsvc")
    assert svc.inherit_class and svc.layer_semantics == LayerSemantics.SUPERSEDE_TREE
    sub = hive.key("ControlSet001\\Services\\xboxgipsvc\\a_subkey")
    assert sub.is_supersede_tree and not sub.inherit_class
    assert hive.key("ControlSet001\\Services\\XBOXGIP").is_tombstone
    net = hive.key("ControlSet001\\Services\\XboxNetApiSvc")
    assert net.layer_semantics == LayerSemantics.NORMAL
    assert net.value("displayname").is_tombstone  # type: ignore[union-attr]
    assert not net.value("start").is_tombstone  # type: ignore[union-attr]


def test_yarp_truncated_hive(registry_data: Path) -> None:
    with pytest.raises(RegfError, match="truncated"):
        Hive.open(registry_data / "yarp" / "TruncatedHive")


def test_yarp_bad_list_hive(registry_data: Path) -> None:
    hive = Hive.open(registry_data / "yarp" / "BadListHive")
    with pytest.raises(RegfError) as err:
        for key in hive.root.subkeys():
            for sub in key.subkeys():
                sub.subkeys()
        list(hive.walk())
    assert "BadListHive" in str(err.value)


def test_yarp_garbage_hive(registry_data: Path) -> None:
    path = registry_data / "yarp" / "GarbageHive"
    hive = Hive.open(path)
    assert hive.hbins_size == 4096
    assert path.stat().st_size > 4096 + 4096
    assert [k.path for k in hive.walk()] == [""]
    # its base block checksum is deliberately wrong: strict opening refuses it
    assert hive.dirty and hive.warnings
    with pytest.raises(RegfError, match="checksum"):
        Hive.open(path, strict=True)


def test_windows_bcd_hive(testdata: Path) -> None:
    hive = Hive.open(testdata / "bcd" / "winefi_Boot_BCD")
    assert hive.minor_version == 3
    assert hive.sequence_numbers == (110, 110)
    assert hive.recovered_from == []  # clean: the stale BCD.LOG beside it is not applied
    assert hive.root.name == "NewStoreRoot"
    description = hive.key("Description")
    assert description.value("KeyName").decoded() == "BCD00000000"  # type: ignore[union-attr]
    assert len(description.value("GuidCache").data) == 24  # type: ignore[union-attr]
    assert len(hive.key("Objects").subkeys()) == 15


def test_every_windows_hive_walks(registry_data: Path) -> None:
    """Every readable sample: every key, value and data block decodes without error."""
    names = [
        "EmptyHive",
        "BigDataHive",
        "ManySubkeysHive",
        "MultiSzHive",
        "StringValuesHive",
        "UnicodeHive",
        "System_Delta",
        "GarbageHive",
    ]
    for name in names:
        hive = Hive.open(registry_data / "yarp" / name)
        for key in hive.walk():
            _ = (key.class_name, key.security_descriptor)
            for value in key.values():
                value.decoded()
