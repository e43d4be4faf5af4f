"""End to end: ``cimsnap image unpack`` through a real containerd, then a container's scratch.

containerd (Debian's) runs with ``cimsnap serve`` as its proxy snapshotter (fixtures of
conftest.py).  The image is unpacked through containerd's snapshots API, so containerd records
the snapshots: ``ctr snapshots ls`` must show the chain.  A container snapshot prepared with the
utility VM label then gets ``sandbox.vhdx`` (a child of the shared ``blank-base.vhdx``) and
``vm/sandbox.vhdx`` (a copy of the base layer's ``SystemTemplate.vhdx``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cimsnap.formats import vhdx
from cimsnap.formats.cim import CimImage
from cimsnap.layers import layout
from cimsnap.snapshotter.metastore import MetaStore
from tests.conftest import PROJECT_ROOT
from tests.e2e.containerd import NAMESPACE, SNAPSHOTTER_NAME, CimsnapService, Containerd
from tests.images.builder import LayerSpec, pack_oci_layout
from tests.images.fixtures import image_specs_fixture, image_tars_fixture
from tests.images.model import assert_cim_matches, expected_trees, fold
from tests.snapshotter.diskcheck import libvhdi_link

pytestmark = pytest.mark.tool
__all__ = ["image_specs_fixture", "image_tars_fixture"]  # fixtures used below

UVM_LABEL = "containerd.io/snapshot/io.microsoft.vm.storage.scratch"
GC_ROOT = {"containerd.io/gc.root": "2024-02-15T00:00:00Z"}
HIVE_BASES = {fold(h.base_path) for h in layout.HIVE_TABLE}
REWRITTEN = {fold(layout.BCD_FILE), fold(layout.UVM_SYSTEM_HIVE)}


def backend_dirs(service: CimsnapService) -> dict[str, Path]:
    """containerd snapshot name -> its directory in the service's root."""
    store = MetaStore(service.root / "metadata.db")
    try:
        with store.transaction() as tx:
            ids = {name.split("/", 2)[2]: i for i, name in tx.id_map().items()}
    finally:
        store.close()
    return {name: service.root / "snapshots" / i for name, i in ids.items()}


def cimsnap_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "cimsnap.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=PROJECT_ROOT,
    )


def vhdx_parent(path: Path) -> Path:
    """The parent a differencing VHDX resolves to, per libvhdi (cross-checked with cimsnap)."""
    named, _ = libvhdi_link(path)
    assert Path(vhdx.info(path)["parent"]["resolved_path"]) == named
    return named


def test_unpack_through_containerd_then_prepare_a_uvm_container(
    containerd: Containerd,
    cimsnap_service: CimsnapService,
    snapshots_client,  # type: ignore[no-untyped-def]
    image_specs: list[LayerSpec],
    image_tars: list[bytes],
    tmp_path: Path,
) -> None:
    oci = pack_oci_layout(tmp_path / "oci", image_tars, compression=["gzip", "zstd", "none"])
    proc = cimsnap_cli(
        "image",
        "unpack",
        str(oci.layout_dir),
        "--ref",
        oci.ref,
        "--address",
        str(containerd.address),
        "--snapshotter",
        SNAPSHOTTER_NAME,
        "--namespace",
        NAMESPACE,
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["chain_id"] == oci.chain_ids[-1]
    assert [layer["key"].split(" ")[1] for layer in report["layers"]] == oci.chain_ids

    # containerd recorded the chain: three committed snapshots, each on the previous one.
    rows = [line.split() for line in containerd.snapshots("ls").splitlines()[1:]]
    ours = sorted(row for row in rows if row[0] in oci.chain_ids)
    assert ours == sorted(
        [[oci.chain_ids[0], "Committed"]]
        + [[oci.chain_ids[i], oci.chain_ids[i - 1], "Committed"] for i in (1, 2)]
    )
    assert not [row for row in rows if row[0].startswith("extract-")]

    # Each committed snapshot's CIM reads as the merged model.
    dirs = backend_dirs(cimsnap_service)
    trees = expected_trees(image_specs)
    for i, chain in enumerate(oci.chain_ids):
        layer_dir = dirs[chain]
        with CimImage.open(layer_dir.parent / "cim-layers" / f"{layer_dir.name}.cim") as image:
            ignore = HIVE_BASES | {"layout"} | ({"hives"} if i == 0 else set())
            assert_cim_matches(image, trees[i], ignore=ignore, ignore_content=REWRITTEN)

    # Unpacking again finds everything there.
    again = json.loads(
        cimsnap_cli(
            "image",
            "unpack",
            str(oci.layout_dir),
            "--address",
            str(containerd.address),
            "--snapshotter",
            SNAPSHOTTER_NAME,
            "--namespace",
            NAMESPACE,
            "--json",
        ).stdout
    )
    assert all(layer["skipped"] for layer in again["layers"])

    # A container on top, with the utility VM label.
    labels = {**GC_ROOT, UVM_LABEL: "true"}
    (mount,) = snapshots_client.prepare("uvm-container", oci.chain_ids[-1], labels)
    container_dir = Path(mount.source)
    root = cimsnap_service.root
    sandbox = container_dir / "sandbox.vhdx"
    vhdx.check(sandbox)
    assert vhdx_parent(sandbox) == root / "blank-base.vhdx"
    base_dir = dirs[oci.chain_ids[0]]
    uvm_sandbox = container_dir / "vm" / "sandbox.vhdx"
    template = base_dir / "UtilityVM" / "SystemTemplate.vhdx"
    assert uvm_sandbox.read_bytes() == template.read_bytes()
    assert vhdx_parent(uvm_sandbox) == base_dir / "UtilityVM" / "SystemTemplateBase.vhdx"
    # Mounts name the whole chain, nearest parent first.
    parents = [str(dirs[c]) for c in reversed(oci.chain_ids)]
    assert f"parentLayerPaths={json.dumps(parents, separators=(',', ':'))}" in mount.options

    rows = [line.split() for line in containerd.snapshots("ls").splitlines()[1:]]
    assert ["uvm-container", oci.chain_ids[-1], "Active"] in rows
