"""End to end: a real containerd drives ``cimsnap serve`` as its proxy snapshotter via ``ctr``.

containerd's metadata layer names backend snapshots ``<namespace>/<n>/<key>``; the tests map
them back to this service's snapshot IDs through the service's own metadata database.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from cimsnap.formats import vhdx
from cimsnap.snapshotter.metastore import MetaStore
from cimsnap.snapshotter.model import LABEL_ROOTFS_SIZE_BYTES, LABEL_UVM_SCRATCH
from tests.e2e.containerd import CimsnapService, Containerd, CtrError
from tests.snapshotter.diskcheck import (
    BASIC_DATA,
    DiskChain,
    gpt_partitions,
    libvhdi_link,
    ntfs_volume_size,
    sgdisk_verify,
)

pytestmark = pytest.mark.tool

GC_ROOT = {"containerd.io/gc.root": "2024-02-15T00:00:00Z"}  # keeps API-made snapshots alive
GIB = 1 << 30


def backend_ids(service: CimsnapService) -> dict[str, str]:
    """containerd key -> snapshot ID in the service (backend names end with '/<key>')."""
    store = MetaStore(service.root / "metadata.db")
    try:
        with store.transaction() as tx:
            return {name.split("/", 2)[2]: i for i, name in tx.id_map().items()}
    finally:
        store.close()


def wait_gone(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not path.exists(), f"{path} still exists (containerd GC did not remove it)"


def unpack(ctd: Containerd, name: str, parent: str = "") -> None:
    """Prepare + commit with an unpack key, as containerd's unpacker does for a layer."""
    key = f"extract-{time.monotonic_ns()} sha256:{name}"
    ctd.snapshots("prepare", key, *([parent] if parent else []))
    ctd.snapshots("commit", name, key)


def test_ctr_workflow(containerd: Containerd, cimsnap_service: CimsnapService) -> None:
    ctd, root = containerd, cimsnap_service.root
    unpack(ctd, "base")
    unpack(ctd, "delta", "base")
    ctd.snapshots("prepare", "ctr1", "delta")
    ctd.snapshots("view", "v1", "delta")
    ids = backend_ids(cimsnap_service)
    snaps = root / "snapshots"

    # mounts: exactly the reference's options, nearest parent first
    parents = [ids["delta"], ids["base"]]
    layer_paths = ",".join(f'"{snaps}/{i}"' for i in parents)
    cim_paths = ",".join(f'"{snaps}/cim-layers/{i}.cim"' for i in parents)
    for key, flag in (("ctr1", "rw"), ("v1", "ro")):
        out = ctd.snapshots("mounts", "/mnt/target", key)
        assert out == (
            f"mount -t CimFS {snaps}/{ids[key]} /mnt/target -o {flag},"
            f"cimpath={snaps}/cim-layers/{ids[key]}.cim,"
            f"parentLayerPaths=[{layer_paths}],parentCimPaths=[{cim_paths}]\n"
        )

    # the container scratch is a copy of blank.vhdx whose chain reaches blank-base.vhdx
    sandbox = snaps / ids["ctr1"] / "sandbox.vhdx"
    vhdx.check(sandbox)
    assert libvhdi_link(sandbox) == (root / "blank-base.vhdx", 10 * GIB)
    with DiskChain(sandbox) as chain:
        assert chain.parent_paths == [root / "blank-base.vhdx"]
        assert [p.type_guid for p in gpt_partitions(chain)][-1] == BASIC_DATA
    assert sandbox.stat().st_blocks * 512 < 64 * 1024

    # ls / info / tree
    rows = [line.split() for line in ctd.snapshots("ls").splitlines()[1:]]
    assert sorted(rows) == sorted(
        [
            ["base", "Committed"],
            ["ctr1", "delta", "Active"],
            ["delta", "base", "Committed"],
            ["v1", "delta", "View"],
        ]
    )
    info = json.loads(ctd.snapshots("info", "ctr1"))
    assert (info["Kind"], info["Parent"], info["Name"]) == ("Active", "delta", "ctr1")
    tree = ctd.snapshots("tree")
    assert re.search(r"^\s*base\n\s+\\_ delta\n(\s+\\_ (ctr1|v1)\n){2}", tree, re.M), tree

    # label: containerd passes "containerd.io/snapshot/" labels down to the snapshotter
    out = ctd.snapshots("label", "delta", "containerd.io/snapshot/team=windows", "plain=1")
    assert "containerd.io/snapshot/team=windows" in out and "plain=1" in out
    from cimsnap.service.client import SnapshotsClient

    with SnapshotsClient(str(cimsnap_service.address)) as direct:
        labels = next(i.labels for i in direct.walk() if i.name.endswith("/delta"))
    assert labels.get("containerd.io/snapshot/team") == "windows" and "plain" not in labels

    # usage: the active snapshot's directory (dir + sandbox.vhdx) as this service measured it
    usage = {r.split()[0]: r.split()[1:] for r in ctd.snapshots("usage").splitlines()[1:]}
    assert usage["ctr1"][-1] == "2"  # inodes
    assert usage["base"][-1] == "1"

    # commit of a container scratch and scratch without parents: the reference's errors
    with pytest.raises(CtrError, match="committing a scratch snapshot to read-only cim layer"):
        ctd.snapshots("commit", "image", "ctr1")
    with pytest.raises(CtrError, match="scratch snapshot without any parents isn't supported"):
        ctd.snapshots("prepare", "lonely")

    # rm: containerd's garbage collector removes the snapshot from this service; the view is
    # no GC root (ctr view sets no gc.root label), so the same collection takes it too
    ctd.snapshots("rm", "ctr1")
    for key in ("ctr1", "v1"):  # renamed to rm-<id> first, then deleted
        wait_gone(snaps / ids[key])
        wait_gone(snaps / f"rm-{ids[key]}")
    assert [r.split()[0] for r in ctd.snapshots("ls").splitlines()[1:]] == ["base", "delta"]
    assert set(backend_ids(cimsnap_service)) == {"base", "delta"}


def test_labels_through_containerd_api(
    containerd: Containerd, cimsnap_service: CimsnapService, snapshots_client, tmp_path: Path
) -> None:
    from cimsnap.scratch import create_scratch

    ctd, root = containerd, cimsnap_service.root
    unpack(ctd, "uvm-base")
    base_dir = root / "snapshots" / backend_ids(cimsnap_service)["uvm-base"]
    uvm = base_dir / "UtilityVM"
    uvm.mkdir()
    create_scratch(uvm / "SystemTemplateBase.vhdx", size=10 * GIB)
    vhdx.create_differencing(uvm / "SystemTemplate.vhdx", uvm / "SystemTemplateBase.vhdx")

    size = 25 * GIB
    labels = {**GC_ROOT, LABEL_ROOTFS_SIZE_BYTES: str(size), LABEL_UVM_SCRATCH: "1"}
    (mount,) = snapshots_client.prepare("big-uvm", "uvm-base", labels)
    snap_dir = Path(mount.source)
    assert snap_dir.parent == root / "snapshots"

    uvm_sandbox = snap_dir / "vm" / "sandbox.vhdx"
    assert uvm_sandbox.read_bytes() == (uvm / "SystemTemplate.vhdx").read_bytes()
    with DiskChain(uvm_sandbox) as chain:
        assert chain.parent_paths == [uvm / "SystemTemplateBase.vhdx"]

    with DiskChain(snap_dir / "sandbox.vhdx") as chain:
        assert chain.media_size == size
        data = gpt_partitions(chain)[-1]
        assert (data.last_lba + 1) * 512 >= size - (1 << 20)
        assert ntfs_volume_size(chain, data) >= data.size - 4096
        assert "No problems found" in sgdisk_verify(chain, tmp_path)


def test_one_blank_base_for_many_base_layers(
    containerd: Containerd, cimsnap_service: CimsnapService
) -> None:
    for n in range(3):
        unpack(containerd, f"image{n}-base")
        containerd.snapshots("prepare", f"image{n}-ctr", f"image{n}-base")
    root = cimsnap_service.root
    assert [p.relative_to(root) for p in root.rglob("blank-base.vhdx")] == [Path("blank-base.vhdx")]
    assert [p.relative_to(root) for p in root.rglob("blank.vhdx")] == [Path("blank.vhdx")]
