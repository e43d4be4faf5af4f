"""Merging a base hive with a differencing hive (ORMergeHives semantics)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cimsnap.formats.regf import Hive, Key, LayerSemantics, RegType, merge_hives, merge_into
from cimsnap.formats.secdesc import sddl_to_sd

from .readers import cimsnap_raw, dissect_tree

BASE_TIME = 0x01D0_0000_0000_0000
DELTA_TIME = 0x01D8_0000_0000_0000


def _base() -> Hive:
    hive = Hive.create(root_name="BASE")
    hive.set_clock(lambda: BASE_TIME)
    hive.set_value("Software\\App", "keep", RegType.REG_SZ, "base keeps this")
    hive.set_value("Software\\App", "Override", RegType.REG_DWORD, 1)
    hive.set_value("Software\\App", "gone", RegType.REG_SZ, "deleted by a tombstone value")
    hive.set_value("Software\\App\\Child", "c", RegType.REG_SZ, "child of App")
    hive.set_value("Software\\Doomed", "x", RegType.REG_SZ, "deleted with its key")
    hive.set_value("Software\\Doomed\\Deep\\Deeper", "y", RegType.REG_BINARY, b"\x00" * 20000)
    hive.set_value("Software\\Local", "base-only", RegType.REG_SZ, "dropped by supersede local")
    hive.set_value("Software\\Local\\Sub", "s", RegType.REG_SZ, "subkeys still merge")
    hive.set_value("Software\\Tree", "base-only", RegType.REG_SZ, "dropped by supersede tree")
    hive.set_value("Software\\Tree\\OldSub", "o", RegType.REG_SZ, "dropped by supersede tree")
    return hive


def _delta() -> Hive:
    hive = Hive.create(root_name="DELTA", minor_version=6, layered=True)
    hive.set_clock(lambda: DELTA_TIME)
    hive.set_value("Software\\App", "override", RegType.REG_DWORD, 2)
    hive.set_value("Software\\App", "added", RegType.REG_MULTI_SZ, ["new", "value"])
    hive.set_value_tombstone(hive.key("Software\\App"), "gone")
    hive.set_value("Software\\App\\NewChild", "n", RegType.REG_SZ, "added key")
    doomed = hive.create_key("Software\\Doomed")
    hive.set_layer_semantics(doomed, LayerSemantics.TOMBSTONE)
    local = hive.create_key("Software\\Local")
    hive.set_layer_semantics(local, LayerSemantics.SUPERSEDE_LOCAL)
    hive.set_value("Software\\Local", "delta-only", RegType.REG_SZ, "from the delta")
    hive.set_value("Software\\Local\\Sub", "s2", RegType.REG_SZ, "merged into Sub")
    tree = hive.create_key("Software\\Tree")
    hive.set_layer_semantics(tree, LayerSemantics.SUPERSEDE_TREE)
    hive.set_value("Software\\Tree", "delta-only", RegType.REG_SZ, "replaces the tree")
    new_sub = hive.create_key("Software\\Tree\\NewSub")
    hive.set_layer_semantics(new_sub, LayerSemantics.SUPERSEDE_TREE)
    missing = hive.create_key("Software\\NotInBase")
    hive.set_layer_semantics(missing, LayerSemantics.TOMBSTONE)
    return hive


@pytest.fixture
def merged() -> Hive:
    base = _base()
    merge_into(base, Hive.from_bytes(_delta().to_bytes()))
    return Hive.from_bytes(base.to_bytes())


def _values(hive: Hive, path: str) -> dict[str, object]:
    return {v.name: v.decoded() for v in hive.key(path).values()}


def test_add_and_override(merged: Hive) -> None:
    app = _values(merged, "Software\\App")
    assert app["keep"] == "base keeps this"
    assert app["Override"] == 2  # delta wins; the name keeps the base's spelling
    assert app["added"] == ["new", "value"]
    assert merged.key("Software\\App\\NewChild").value("n").decoded() == "added key"  # type: ignore[union-attr]
    assert merged.key("Software\\App\\Child").value("c").decoded() == "child of App"  # type: ignore[union-attr]


def test_value_tombstone(merged: Hive) -> None:
    assert "gone" not in _values(merged, "Software\\App")


def test_key_tombstone(merged: Hive) -> None:
    assert merged.find_key("Software\\Doomed") is None
    assert merged.find_key("Software\\NotInBase") is None  # tombstone of nothing: no key


def test_supersede_local(merged: Hive) -> None:
    assert _values(merged, "Software\\Local") == {"delta-only": "from the delta"}
    assert _values(merged, "Software\\Local\\Sub") == {
        "s": "subkeys still merge",
        "s2": "merged into Sub",
    }


def test_supersede_tree(merged: Hive) -> None:
    assert _values(merged, "Software\\Tree") == {"delta-only": "replaces the tree"}
    assert [k.name for k in merged.key("Software\\Tree").subkeys()] == ["NewSub"]


def test_merged_hive_is_consistent_and_normal(merged: Hive) -> None:
    assert merged.check() == []
    assert merged.root.name == "BASE"
    assert not merged.layered
    assert all(k.layer_semantics == LayerSemantics.NORMAL for k in merged.walk())
    assert all(not v.is_tombstone for k in merged.walk() for v in k.values())


def test_timestamps_are_the_later_of_both(merged: Hive) -> None:
    assert merged.key("Software\\App").timestamp == DELTA_TIME
    assert merged.key("Software\\App\\Child").timestamp == BASE_TIME


def test_new_keys_take_the_delta_security_descriptor() -> None:
    base = _base()
    delta = Hive.create(minor_version=6, layered=True)
    special = sddl_to_sd("O:SYG:SYD:(A;CI;KA;;;SY)")
    key = delta.create_key("Software\\Secured")
    delta.set_security_descriptor(key, special)
    merge_into(base, delta)
    assert base.key("Software\\Secured").security_descriptor == special
    assert base.key("Software\\App").security_descriptor != special
    assert base.check() == []


def test_merge_hives_files(tmp_path: Path) -> None:
    _base().save(tmp_path / "SYSTEM_BASE")
    _delta().save(tmp_path / "SYSTEM_DELTA")
    out = merge_hives(tmp_path / "SYSTEM_BASE", tmp_path / "SYSTEM_DELTA", tmp_path / "MERGED")
    hive = Hive.open(out)
    assert hive.find_key("Software\\Doomed") is None
    assert hive.key("Software\\App").value("added") is not None
    assert dissect_tree(out) == cimsnap_raw(out)  # an independent reader agrees
    # the inputs are untouched
    assert Hive.open(tmp_path / "SYSTEM_BASE").find_key("Software\\Doomed") is not None


def test_windows_system_delta(testdata: Path) -> None:
    """Windows' own differencing hive merged onto a base holding the keys it changes."""
    base = Hive.create(root_name="SYSTEM")
    services = "ControlSet001\\Services\\"
    base.set_value(services + "XBOXGIP", "Start", RegType.REG_DWORD, 3)
    base.set_value(services + "XBOXGIP\\Parameters", "p", RegType.REG_SZ, "base")
    base.set_value(services + "XboxNetApiSvc", "DisplayName", RegType.REG_SZ, "base name")
    base.set_value(services + "xboxgipsvc", "base-only", RegType.REG_SZ, "superseded")
    base.set_value(services + "xboxgipsvc\\BaseOnlySub", "x", RegType.REG_SZ, "superseded")
    base.set_value(services + "Untouched", "u", RegType.REG_SZ, "stays")
    delta = Hive.open(testdata / "registry" / "yarp" / "System_Delta")
    merge_into(base, delta)
    merged = Hive.from_bytes(base.to_bytes())
    assert merged.find_key(services + "XBOXGIP") is None
    net = merged.key(services + "XboxNetApiSvc")
    assert net.value("displayname") is None
    assert net.value("start") is not None
    svc = merged.key(services + "xboxgipsvc")
    assert svc.value("base-only") is None
    assert svc.subkey("BaseOnlySub") is None
    assert svc.subkey("a_subkey") is not None
    assert merged.key(services + "Untouched").value("u").decoded() == "stays"  # type: ignore[union-attr]
    # everything the delta adds is there
    for key in delta.walk():
        if key.is_tombstone or any(p.is_tombstone for p in _ancestors(key)):
            continue
        target = merged.key(key.path)
        for value in key.values():
            if not value.is_tombstone:
                assert target.value(value.name).data == value.data  # type: ignore[union-attr]
    assert merged.check() == []


def _ancestors(key: Key) -> Iterator[Key]:
    parent = key.parent
    while parent is not None:
        yield parent
        parent = parent.parent
