"""Hives written by cimsnap, read back by independent readers (and the other way round).

The readers: hivex (C library, through Debian's python3-hivex in the system Python),
dissect.regf, python-registry and regipy.  hivex and dissect.regf give raw bytes, which must
equal exactly what was stored; python-registry and regipy decode, so their values are compared
with what cimsnap decodes.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cimsnap.formats.regf import Hive, RegType

from .readers import (
    Tree,
    cimsnap_decoded,
    cimsnap_raw,
    dissect_tree,
    hivex_tree,
    python_registry_tree,
    regipy_tree,
)
from .samples import SAMPLE_VALUES, build_sample, expected_keys


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("oracle") / "SAMPLE"
    build_sample(path)
    return path


def _require_hivex() -> None:
    if not Path("/usr/bin/python3").exists():
        pytest.skip("system python3 not found")
    probe = subprocess.run(["/usr/bin/python3", "-c", "import hivex"], capture_output=True)
    if probe.returncode:
        pytest.skip("python3-hivex is not installed (./run.sh test installs it)")


def _fold(tree: Tree) -> dict[str, dict[str, tuple[int, object]]]:
    """Key paths compare case-sensitively here: every reader must keep the exact names."""
    return tree


def test_cimsnap_reads_back_everything(sample: Path) -> None:
    tree = cimsnap_decoded(sample)
    assert set(tree) == expected_keys()
    for key, name, value_type, _data, decoded in SAMPLE_VALUES:
        assert tree[key][name] == (value_type, decoded), (key, name)
    assert Hive.open(sample).check() == []


def test_hivex_reads_identical_bytes(sample: Path) -> None:
    _require_hivex()
    assert hivex_tree(sample) == cimsnap_raw(sample)


def test_dissect_reads_identical_bytes(sample: Path) -> None:
    assert dissect_tree(sample) == cimsnap_raw(sample)


def test_python_registry_reads_identical_values(sample: Path) -> None:
    theirs = python_registry_tree(sample)
    ours = cimsnap_decoded(sample)
    assert set(theirs) == set(ours)
    compared = 0
    for key, values in ours.items():
        assert set(theirs[key]) == set(values), key
        for name, (value_type, decoded) in values.items():
            # python-registry reads REG_DWORD_BIG_ENDIAN from a data cell, but data of four
            # bytes is stored inline (Windows does the same: offreg testhive "dword-big-endian")
            if value_type == RegType.REG_DWORD_BIG_ENDIAN:
                continue
            their_type, their_value = theirs[key][name]
            assert their_type == value_type, (key, name)
            if value_type == RegType.REG_LINK:  # python-registry leaves links as bytes
                their_value = bytes(their_value).decode("utf-16-le")
            if (
                isinstance(decoded, int)
                or value_type == RegType.REG_LINK
                or value_type
                in (
                    RegType.REG_SZ,
                    RegType.REG_EXPAND_SZ,
                    RegType.REG_MULTI_SZ,
                )
            ):
                assert their_value == decoded, (key, name)
            else:
                assert bytes(their_value) == decoded, (key, name)
            compared += 1
    assert compared >= len(SAMPLE_VALUES) - 1


_REGIPY_TYPES = {t.name: int(t) for t in RegType}


def test_regipy_reads_identical_values(sample: Path) -> None:
    theirs = regipy_tree(sample)
    ours = cimsnap_decoded(sample)
    assert set(theirs) == set(ours)
    for key, values in ours.items():
        assert set(theirs[key]) == set(values), key
        for name, (value_type, decoded) in values.items():
            their_type, their_value = theirs[key][name]
            assert _REGIPY_TYPES.get(their_type, their_type) == value_type, (key, name)
            # regipy leaves REG_DWORD_BIG_ENDIAN undecoded ("")
            if value_type == RegType.REG_DWORD_BIG_ENDIAN:
                continue
            if isinstance(decoded, bytes) and isinstance(their_value, str):
                their_value = bytes.fromhex(their_value)  # regipy shows short binaries as hex
            if value_type == RegType.REG_LINK and isinstance(their_value, bytes):
                their_value = their_value.decode("utf-16-le").rstrip("\0")
            assert their_value == decoded, (key, name)


def test_cimsnap_reads_a_hive_edited_by_hivex(tmp_path: Path) -> None:
    """hivexsh edits a cimsnap hive (new keys, values of several types, a deletion)."""
    hivexsh = shutil.which("hivexsh")
    if hivexsh is None:
        pytest.skip("hivexsh is not installed (Debian libhivex-bin)")
    path = tmp_path / "EDITED"
    build_sample(path)
    script = "\n".join(
        [
            "cd \\Types",
            "add FromHivex",
            "cd FromHivex",
            "setval 4",
            "greeting",
            "string:hello from hivex",
            "count",
            "dword:0x2a",
            "blob",
            "hex:3:de,ad,be,ef,00",
            "lines",
            "hex:7:61,00,00,00,62,00,00,00,00,00",
            "cd \\Empty",
            "del",
            "commit",
            "",
        ]
    )
    subprocess.run([hivexsh, "-w", str(path)], input=script, text=True, check=True, timeout=60)
    hive = Hive.open(path)
    edited = hive.key("Types\\FromHivex")
    assert edited.value("greeting").decoded() == "hello from hivex"  # type: ignore[union-attr]
    assert edited.value("count").decoded() == 0x2A  # type: ignore[union-attr]
    assert edited.value("blob").data == b"\xde\xad\xbe\xef\x00"  # type: ignore[union-attr]
    assert edited.value("lines").decoded() == ["a", "b"]  # type: ignore[union-attr]
    assert hive.find_key("Empty") is None
    # everything else is untouched
    tree = cimsnap_decoded(path)
    for key, name, value_type, _data, decoded in SAMPLE_VALUES:
        assert tree[key][name] == (value_type, decoded)
    # and cimsnap can keep editing what hivex wrote
    hive.set_value("Types\\FromHivex", "after", RegType.REG_SZ, "cimsnap again")
    hive.delete_key("Many")
    hive.save(path)
    again = Hive.open(path)
    assert again.key("Types\\FromHivex").value("after").decoded() == "cimsnap again"  # type: ignore[union-attr]
    assert again.check() == []
    _require_hivex()
    assert hivex_tree(path) == cimsnap_raw(path)
