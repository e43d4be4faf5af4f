"""Importing the realistic image layer by layer: each CIM reads as the model says, hives are
merged, the base layer carries Hives/*_BASE, ``layout`` and its utility VM's boot setup."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import pytest

from cimsnap.cli.main import main as cimsnap_main
from cimsnap.formats import vhdx
from cimsnap.formats.cim import CimImage
from cimsnap.layers import layout
from cimsnap.layers.cimlayer import import_cim_layer
from tests.conftest import require_tool
from tests.formats.regf.readers import hivex_tree, python_registry_tree
from tests.images.builder import LayerSpec, base_layer
from tests.images.model import assert_cim_matches, expected_trees, fold
from tests.layers.conftest import FIXED_NOW, ImportedImage

HIVE_BASES = {fold(h.base_path) for h in layout.HIVE_TABLE}
REWRITTEN = {fold(layout.BCD_FILE), fold(layout.UVM_SYSTEM_HIVE)}


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    assert cimsnap_main(list(args)) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("index", [0, 1, 2])
def test_each_layer_reads_as_the_merged_model(imported: ImportedImage, index: int) -> None:
    tree = expected_trees(imported.specs)[index]
    with CimImage.open(imported.cim(index)) as image:
        # Hives\*_BASE and layout are made by the import (checked below); the base layer's
        # Hives directory too, later layers bring their own.
        ignore = HIVE_BASES | {"layout"} | ({"hives"} if index == 0 else set())
        assert_cim_matches(image, tree, ignore=ignore, ignore_content=REWRITTEN)
        listing = {fold(e.path.lstrip("\\")) for _, d, f in image.walk("\\") for e in [*d, *f]}
        assert HIVE_BASES | {"layout", "hives"} <= listing


def test_returns_total_file_size(imported: ImportedImage) -> None:
    for spec, result in zip(imported.specs, imported.results, strict=True):
        assert result.size == sum(len(op.data) for op in spec.ops if op.kind == "file")


def test_base_layer_hives_links_and_layout(imported: ImportedImage) -> None:
    layer_dir = imported.layer_dirs[0]
    with CimImage.open(imported.cim(0)) as image:
        for hive in layout.HIVE_TABLE:
            base, config = image.stat(hive.base_path), image.stat(hive.config_path)
            assert base.file_id == config.file_id, f"{hive.base_path} is not a link"
            host_base = layout.host_path(layer_dir, hive.base_path)
            host_config = layout.host_path(layer_dir, hive.config_path)
            assert os.stat(host_base).st_ino == os.stat(host_config).st_ino
            assert host_base.read_bytes() == image.read(hive.base_path)
        assert image.read("layout") == b"vhd-with-hives\n"
        generated = image.stat("layout")
        assert generated.creation_time == generated.last_write_time == FIXED_NOW
        assert image.is_dir("Hives") and image.stat("Hives").creation_time == FIXED_NOW
    assert (layer_dir / "layout").read_bytes() == b"vhd-with-hives\n"
    assert (layer_dir / "uvmbuildversion").read_text() == "26100"
    for later in imported.layer_dirs[1:]:
        assert not (later / "layout").exists()


def _cim_file(image_path: Path, inner: str, out: Path) -> Path:
    with CimImage.open(image_path) as image:
        out.write_bytes(image.read(inner))
    return out


def test_delta_hives_are_merged_with_the_parents(imported: ImportedImage, tmp_path: Path) -> None:
    soft2 = python_registry_tree(
        _cim_file(imported.cim(1), "Hives\\SOFTWARE_BASE", tmp_path / "s2")
    )
    current = soft2["Microsoft\\Windows NT\\CurrentVersion"]
    assert current["CurrentBuild"][1] == "20348"  # kept from the base
    assert current["ProductName"][1] == "Windows Server 2022 Datacenter (layered)"  # changed
    assert "EditionID" not in current  # tombstone value
    assert soft2["Microsoft\\Cimsnap"]["Added"][1] == "by layer 2"
    assert soft2["Microsoft\\Cimsnap\\Deep\\Er"]["Count"][1] == 42
    assert not any(k.startswith("Microsoft\\Obsolete") for k in soft2)  # tombstone key
    assert soft2["Classes\\.txt"][""][1] == "txtfile"

    sys2 = python_registry_tree(_cim_file(imported.cim(1), "Hives\\SYSTEM_BASE", tmp_path / "y2"))
    assert sys2["ControlSet001\\Services\\MyService"]["Start"][1] == 2
    assert "ControlSet001\\Services\\Legacy" not in sys2
    assert sys2["ControlSet001\\Services\\Tcpip\\Parameters"]["Hostname"][1] == "box"

    soft3 = python_registry_tree(
        _cim_file(imported.cim(2), "Hives\\SOFTWARE_BASE", tmp_path / "s3")
    )
    assert soft3["Microsoft\\Cimsnap"]["Layer3"][1] == 3
    assert "Added" not in soft3["Microsoft\\Cimsnap"]  # tombstoned by layer 3
    assert soft3["Microsoft\\Cimsnap\\Deep\\Er"]["Count"][1] == 42  # from layer 2's merge
    # The merged hive on the host (read by children in hcsshim) is the one in the CIM.
    host = layout.host_path(imported.layer_dirs[2], "Hives\\SOFTWARE_BASE")
    assert host.read_bytes() == (tmp_path / "s3").read_bytes()
    with CimImage.open(imported.cim(2)) as image:
        # Hives a layer has no delta for are its parents' (same file through the fork).
        assert (
            image.stat("Hives\\SAM_BASE").file_id == image.stat(layout.REG_FILES + "\\SAM").file_id
        )
        assert image.read("Hives\\SYSTEM_BASE") == (tmp_path / "y2").read_bytes()


def test_uvm_scratch_guids_are_those_of_the_bcd(
    imported: ImportedImage, capsys: pytest.CaptureFixture[str]
) -> None:
    uvm = imported.layer_dirs[0] / "UtilityVM"
    info = json.loads(
        run_cli(capsys, "scratch", "info", "--json", str(uvm / "SystemTemplateBase.vhdx"))
    )
    bcd = layout.host_path(imported.layer_dirs[0], layout.BCD_FILE)
    objects = json.loads(run_cli(capsys, "bcd", "--store", str(bcd), "enum", "all", "--json"))[
        "objects"
    ]
    elements = {(o["identifier"], e["name"]): e["value"] for o in objects for e in o["elements"]}
    primary = elements[("{e1787220-d17f-49e7-977a-d8fe4c8537e2}", "primarydevice")]
    assert primary["kind"] == "GptPartition"
    assert primary["disk"].strip("{}").upper() == info["disk_guid"]
    assert primary["partition"].strip("{}").upper() == info["partition_guid"]
    assert elements[("{763e9fea-502d-434f-aad9-5fabe9c91a7b}", "cimfsrootdirectory")] == (
        f"\\cim-layers\\{imported.layer_dirs[0].name}.cim"
    )
    assert elements[("{default}", "path")] == "\\UtilityVM\\Files\\Windows\\System32\\winload.efi"
    # The CIM holds the same BCD as the layer directory (the UVM boots from both).
    with CimImage.open(imported.cim(0)) as image:
        assert image.read(layout.BCD_FILE) == bcd.read_bytes()
        assert (
            image.read(layout.BOOTMGR_FILE)
            == layout.host_path(imported.layer_dirs[0], layout.BOOTMGR_FILE).read_bytes()
        )


@pytest.mark.tool
def test_uvm_system_hive_enables_cim_boot(imported: ImportedImage, tmp_path: Path) -> None:
    require_tool("hivexget")
    host = layout.host_path(imported.layer_dirs[0], layout.UVM_SYSTEM_HIVE)
    in_cim = _cim_file(imported.cim(0), layout.UVM_SYSTEM_HIVE, tmp_path / "SYSTEM")
    assert in_cim.read_bytes() == host.read_bytes()

    def get(key: str, value: str) -> str:
        out = subprocess.run(
            ["hivexget", str(host), key, value], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()

    assert (
        get("ControlSet001\\Control", "BootContainerGuid")
        == "{b890454c-80de-4e98-a7ab-56b74b4fbd0c}"
    )
    assert get("ControlSet001\\Services\\UnionFS", "Start") == "0"
    assert get("ControlSet001\\Services\\wcifs", "Start") == "4"
    assert get("Setup", "BootPathOverride") == "\\Windows\\"
    tree = hivex_tree(host)  # the rest of the hive is untouched
    assert (
        tree["ControlSet001\\Control"]["WaitToKillServiceTimeout"][1].decode("utf-16-le")
        == "5000\0"
    )


@pytest.mark.tool
def test_system_template_is_a_valid_child(imported: ImportedImage) -> None:
    import pyvhdi

    uvm = imported.layer_dirs[0] / "UtilityVM"
    base, child = uvm / "SystemTemplateBase.vhdx", uvm / "SystemTemplate.vhdx"
    vhdx.check(child)
    vhdx.check(base)
    top = pyvhdi.file()
    top.open(str(child))
    parent = pyvhdi.file()
    try:
        assert Path(top.get_parent_filename()).resolve() == base.resolve()
        parent.open(str(base))
        assert top.parent_identifier == parent.identifier
        assert top.media_size == parent.media_size == 10 << 30
    finally:
        parent.close()
        top.close()
    # Through the chain (dissect resolves the parent itself) the child shows the base's GPT.
    from dissect.hypervisor.disk.vhdx import VHDX

    with open(child, "rb") as handle:
        disk = VHDX(handle)
        disk.seek(512)
        assert disk.read(8) == b"EFI PART"
    info = vhdx.info(child)
    assert info["type"] == "differencing" and info["block_size"] == 1 << 20
    assert vhdx.info(base)["block_size"] == 1 << 20


def test_old_utility_vm_is_not_set_up_for_cim_boot(tmp_path: Path) -> None:
    spec = base_layer(uvm_build="20348")
    layer_dir = tmp_path / "snapshots" / "7"
    layer_dir.parent.mkdir()
    result = import_cim_layer(io.BytesIO(spec.tar()), layer_dir)
    assert result.uvm_build == 20348 and result.uvm is None
    assert (layer_dir / "uvmbuildversion").read_text() == "20348"
    assert not list((layer_dir / "UtilityVM").glob("*.vhdx"))
    original = next(op.data for op in spec.ops if op.path == layout.BCD_FILE)
    assert layout.host_path(layer_dir, layout.BCD_FILE).read_bytes() == original


def test_non_base_layer_with_its_own_utility_vm(tmp_path: Path) -> None:
    """hcsshim processes a non-base layer's UtilityVM too (after merging its hives)."""
    base = base_layer(uvm=False)
    full = base_layer()
    update = LayerSpec(ops=[op for op in full.ops if op.path.startswith("UtilityVM")])
    snapshots = tmp_path / "snapshots"
    import_cim_layer(io.BytesIO(base.tar()), snapshots / "1")
    result = import_cim_layer(io.BytesIO(update.tar()), snapshots / "2", [snapshots / "1"])
    assert result.uvm is not None and result.uvm.cim_root == "\\cim-layers\\2.cim"
    assert (snapshots / "2" / "UtilityVM" / "SystemTemplate.vhdx").is_file()
    assert not (snapshots / "1" / "UtilityVM").exists()
    assert not (snapshots / "2" / "layout").exists()
