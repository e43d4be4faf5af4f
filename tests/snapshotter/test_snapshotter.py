"""The CimFS snapshotter behaves like containerd's (reference: snapshotter-and-scratch.md).

Scratch disks are judged with libvhdi (pyvhdi) and sgdisk, not with cimsnap's own readers.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from cimsnap.errors import (
    KIND_ALREADY_EXISTS,
    KIND_FAILED_PRECONDITION,
    KIND_INVALID_ARGUMENT,
    KIND_NOT_FOUND,
    KIND_NOT_IMPLEMENTED,
    CimsnapError,
)
from cimsnap.formats import vhdx
from cimsnap.formats.cim import CimWriter
from cimsnap.formats.cim.metadata import FileMetadata
from cimsnap.snapshotter.model import (
    LABEL_ROOTFS_SIZE_BYTES,
    LABEL_ROOTFS_SIZE_GB,
    LABEL_UVM_SCRATCH,
    Info,
    Kind,
    Mount,
)
from cimsnap.snapshotter.snapshotter import CimFSSnapshotter
from tests.conftest import require_tool
from tests.snapshotter.diskcheck import (
    BASIC_DATA,
    MS_RESERVED,
    DiskChain,
    gpt_partitions,
    libvhdi_link,
    ntfs_volume_size,
    sgdisk_verify,
)

GIB = 1 << 30


def error_of(fn: Callable[[], object]) -> CimsnapError:
    with pytest.raises(CimsnapError) as info:
        fn()
    return info.value


def unpack_layers(sn: CimFSSnapshotter, count: int, prefix: str = "layer") -> list[str]:
    """Commit ``count`` stacked layers the way containerd's unpacker does; base first."""
    names: list[str] = []
    parent = ""
    for i in range(count):
        key = f"extract-{i} sha256:{prefix}{i}"
        sn.prepare(key, parent)
        name = f"{prefix}{i}"
        sn.commit(name, key)
        names.append(name)
        parent = name
    return names


def snapshot_id(sn: CimFSSnapshotter, key: str) -> str:
    with sn.ms.transaction() as tx:
        return tx.get_info(key)[0]


def test_root_layout_has_one_template(sn: CimFSSnapshotter) -> None:
    root = sn.root
    assert (root / "metadata.db").is_file()
    assert (root / "snapshots").is_dir() and (root / "snapshots" / "cim-layers").is_dir()
    vhdx.check(root / "blank.vhdx")
    with DiskChain(root / "blank.vhdx") as chain:
        assert chain.parent_paths == [root / "blank-base.vhdx"]
        assert chain.media_size == 10 * GIB


def test_unpack_key_gets_no_scratch_and_reference_mounts(sn: CimFSSnapshotter) -> None:
    mounts = sn.prepare("default/1/extract-1 sha256:abc")
    sid = snapshot_id(sn, "default/1/extract-1 sha256:abc")
    snap_dir = sn.root / "snapshots" / sid
    assert mounts == [
        Mount(
            type="CimFS",
            source=str(snap_dir),
            options=("rw", f"cimpath={sn.root}/snapshots/cim-layers/{sid}.cim"),
        )
    ]
    assert snap_dir.is_dir() and os.listdir(snap_dir) == []
    assert sn.mounts("default/1/extract-1 sha256:abc") == mounts


def test_parent_options_are_json_lists_nearest_first(sn: CimFSSnapshotter) -> None:
    names = unpack_layers(sn, 3)
    ids = [snapshot_id(sn, n) for n in names]
    (mount,) = sn.prepare("extract-3 sha256:top", names[-1])
    top = snapshot_id(sn, "extract-3 sha256:top")
    snaps = f"{sn.root}/snapshots"
    layer_paths = ",".join(f'"{snaps}/{i}"' for i in reversed(ids))
    cim_paths = ",".join(f'"{snaps}/cim-layers/{i}.cim"' for i in reversed(ids))
    assert mount.options == (
        "rw",
        f"cimpath={snaps}/cim-layers/{top}.cim",
        f"parentLayerPaths=[{layer_paths}]",
        f"parentCimPaths=[{cim_paths}]",
    )
    assert mount.json_list_option("parentLayerPaths=")[-1] == f"{snaps}/{ids[0]}"  # base last


def test_container_snapshot_copies_the_shared_template(sn: CimFSSnapshotter) -> None:
    names = unpack_layers(sn, 2)
    (mount,) = sn.prepare("ctr-1", names[-1])
    assert mount.options[0] == "rw"
    sandbox = Path(mount.source) / "sandbox.vhdx"
    vhdx.check(sandbox)  # the whole chain, parent linkage included
    # The copy still finds its parent from its new place; libvhdi reads it through the base.
    assert libvhdi_link(sandbox) == (sn.root / "blank-base.vhdx", 10 * GIB)
    with DiskChain(sandbox) as chain:
        assert chain.parent_paths == [sn.root / "blank-base.vhdx"]
        parts = gpt_partitions(chain)
        assert [p.type_guid for p in parts] == [MS_RESERVED, BASIC_DATA]
        assert ntfs_volume_size(chain, parts[1]) <= parts[1].size
    assert sandbox.stat().st_blocks * 512 < 64 * 1024  # the point of the shared template
    assert sorted(p.name for p in sn.root.glob("**/blank-base.vhdx")) == ["blank-base.vhdx"]


def test_view_is_read_only(sn: CimFSSnapshotter) -> None:
    names = unpack_layers(sn, 1)
    (mount,) = sn.view("v", names[0])
    assert mount.options[0] == "ro"
    assert sn.stat("v").kind is Kind.VIEW
    vhdx.check(Path(mount.source) / "sandbox.vhdx")  # containerd makes one for views too


def test_scratch_without_parents_is_refused_and_leaves_nothing(sn: CimFSSnapshotter) -> None:
    err = error_of(lambda: sn.prepare("ctr-no-parent"))
    assert str(err) == "scratch snapshot without any parents isn't supported"
    assert err.kind == KIND_NOT_IMPLEMENTED
    assert list(sn.walk()) == []
    assert [p.name for p in (sn.root / "snapshots").iterdir()] == ["cim-layers"]


def test_commit_of_a_scratch_is_refused(sn: CimFSSnapshotter) -> None:
    names = unpack_layers(sn, 1)
    sn.prepare("ctr", names[0])
    err = error_of(lambda: sn.commit("img", "ctr"))
    assert str(err) == "committing a scratch snapshot to read-only cim layer isn't supported yet"
    assert sn.stat("ctr").kind is Kind.ACTIVE


def test_errors_have_containerd_kinds(sn: CimFSSnapshotter) -> None:
    names = unpack_layers(sn, 1)
    assert error_of(lambda: sn.prepare("extract-x", "missing")).kind == KIND_NOT_FOUND
    sn.prepare("extract-dup")
    assert error_of(lambda: sn.prepare("extract-dup")).kind == KIND_ALREADY_EXISTS
    assert error_of(lambda: sn.prepare("extract-y", "extract-dup")).kind == KIND_INVALID_ARGUMENT
    assert error_of(lambda: sn.stat("nope")).kind == KIND_NOT_FOUND
    assert error_of(lambda: sn.mounts(names[0])).kind == KIND_FAILED_PRECONDITION
    assert error_of(lambda: sn.commit(names[0], "extract-dup")).kind == KIND_ALREADY_EXISTS
    assert error_of(lambda: sn.usage("nope")).kind == KIND_NOT_FOUND
    assert error_of(lambda: sn.walk(["kind=="]).__next__()).kind == KIND_INVALID_ARGUMENT
    # containerd's Remove reports every failure as failed precondition
    assert error_of(lambda: sn.remove("nope")).kind == KIND_FAILED_PRECONDITION
    sn.prepare("extract-child", names[0])
    err = error_of(lambda: sn.remove(names[0]))
    assert err.kind == KIND_FAILED_PRECONDITION and "cannot remove snapshot with child" in str(err)


def write_layer_cim(path: Path, payload: bytes) -> None:
    with CimWriter.create(path) as writer:
        writer.add("Files", FileMetadata.directory())
        writer.add("Files\\data.bin", FileMetadata(), io.BytesIO(payload))


def test_usage_of_active_and_committed(sn: CimFSSnapshotter) -> None:
    sn.prepare("extract-1")
    sid = snapshot_id(sn, "extract-1")
    (sn.root / "snapshots" / sid / "outside-the-cim").write_bytes(b"x" * 10000)
    active = sn.usage("extract-1")
    assert active.inodes == 2 and active.size >= 10000
    write_layer_cim(sn.root / "snapshots" / "cim-layers" / f"{sid}.cim", os.urandom(50000))
    sn.commit("layer", "extract-1")
    committed = sn.usage("layer")
    # the stored usage of the directory plus the CIM's region and objectid files
    assert committed.inodes == active.inodes
    assert committed.size >= active.size + 50000


def test_update_stat_walk(sn: CimFSSnapshotter) -> None:
    names = unpack_layers(sn, 2)
    sn.prepare("extract-a", names[1], {"keep": "1"})
    info = sn.update(Info(name="extract-a", labels={"x": "y", "keep": ""}), ["labels.x"])
    assert info.labels == {"keep": "1", "x": "y"}
    assert [i.name for i in sn.walk(["labels.x==y"])] == ["extract-a"]
    assert [i.name for i in sn.walk([f"parent=={names[0]}"])] == [names[1]]
    assert sn.stat("extract-a").parent == names[1]


def test_remove_deletes_directory_and_cim(sn: CimFSSnapshotter) -> None:
    sn.prepare("extract-1")
    sid = snapshot_id(sn, "extract-1")
    cim = sn.root / "snapshots" / "cim-layers" / f"{sid}.cim"
    write_layer_cim(cim, b"layer data" * 1000)
    assert len(list(cim.parent.iterdir())) > 1  # the .cim and its region/objectid files
    sn.remove("extract-1")
    assert list(cim.parent.iterdir()) == []
    assert not (sn.root / "snapshots" / sid).exists()
    assert not (sn.root / "snapshots" / f"rm-{sid}").exists()


def test_size_label_in_bytes_expands_disk_partition_and_volume(
    sn: CimFSSnapshotter, tmp_path: Path
) -> None:
    require_tool("sgdisk")
    names = unpack_layers(sn, 1)
    size = 20 * GIB + 64 * (1 << 20)
    (mount,) = sn.prepare("ctr-big", names[0], {LABEL_ROOTFS_SIZE_BYTES: str(size)})
    sandbox = Path(mount.source) / "sandbox.vhdx"
    vhdx.check(sandbox)
    with DiskChain(sandbox) as chain:
        assert chain.media_size == size
        msr, data = gpt_partitions(chain)
        assert msr.type_guid == MS_RESERVED
        assert data.type_guid == BASIC_DATA
        # the data partition grew to the end of the usable space, the volume with it
        assert (data.last_lba + 1) * 512 >= size - (1 << 20)
        assert ntfs_volume_size(chain, data) >= data.size - 4096
        assert "No problems found" in sgdisk_verify(chain, tmp_path)
    assert sandbox.stat().st_blocks * 512 < 1 << 20  # still sparse


def test_deprecated_gib_label_warns_and_bytes_label_wins(
    sn: CimFSSnapshotter, caplog: pytest.LogCaptureFixture
) -> None:
    names = unpack_layers(sn, 1)
    with caplog.at_level(logging.WARNING, logger="cimsnap"):
        (mount,) = sn.prepare("ctr-gb", names[0], {LABEL_ROOTFS_SIZE_GB: "12"})
    assert f'"{LABEL_ROOTFS_SIZE_GB}" label is deprecated' in caplog.text
    with DiskChain(Path(mount.source) / "sandbox.vhdx") as chain:
        assert chain.media_size == 12 * GIB
    labels = {LABEL_ROOTFS_SIZE_GB: "12", LABEL_ROOTFS_SIZE_BYTES: str(11 * GIB)}
    (mount,) = sn.prepare("ctr-both", names[0], labels)
    with DiskChain(Path(mount.source) / "sandbox.vhdx") as chain:
        assert chain.media_size == 11 * GIB


@pytest.mark.parametrize(
    ("label", "value", "reason"),
    [
        (LABEL_ROOTFS_SIZE_BYTES, "12G", "invalid syntax"),
        (LABEL_ROOTFS_SIZE_BYTES, "-1", "invalid syntax"),
        (LABEL_ROOTFS_SIZE_BYTES, str(1 << 64), "value out of range"),
        (LABEL_ROOTFS_SIZE_GB, str(1 << 32), "value out of range"),
    ],
)
def test_bad_size_label_is_refused_and_leaves_nothing(
    sn: CimFSSnapshotter, label: str, value: str, reason: str
) -> None:
    names = unpack_layers(sn, 1)
    before = sorted(os.listdir(sn.root / "snapshots"))
    err = error_of(lambda: sn.prepare("ctr", names[0], {label: value}))
    assert str(err) == (f"failed to parse label {label!r}={value!r}: parsing {value!r}: {reason}")
    assert err.kind == KIND_INVALID_ARGUMENT
    assert sorted(os.listdir(sn.root / "snapshots")) == before
    assert error_of(lambda: sn.stat("ctr")).kind == KIND_NOT_FOUND


def make_uvm_template(base_layer_dir: Path) -> Path:
    """What layer import makes in a base layer: UtilityVM/SystemTemplate{Base,}.vhdx."""
    from cimsnap.scratch import create_scratch

    uvm = base_layer_dir / "UtilityVM"
    uvm.mkdir()
    create_scratch(uvm / "SystemTemplateBase.vhdx", size=10 * GIB)
    vhdx.create_differencing(uvm / "SystemTemplate.vhdx", uvm / "SystemTemplateBase.vhdx")
    return uvm / "SystemTemplate.vhdx"


def test_uvm_label_copies_the_base_layers_system_template(sn: CimFSSnapshotter) -> None:
    names = unpack_layers(sn, 3)
    base_dir = sn.root / "snapshots" / snapshot_id(sn, names[0])  # the LAST parent
    template = make_uvm_template(base_dir)
    (mount,) = sn.prepare("ctr-uvm", names[-1], {LABEL_UVM_SCRATCH: "true"})
    uvm_sandbox = Path(mount.source) / "vm" / "sandbox.vhdx"
    assert uvm_sandbox.read_bytes() == template.read_bytes()
    vhdx.check(uvm_sandbox)
    with DiskChain(uvm_sandbox) as chain:
        assert chain.parent_paths == [base_dir / "UtilityVM" / "SystemTemplateBase.vhdx"]
    vhdx.check(Path(mount.source) / "sandbox.vhdx")


def test_uvm_label_errors(sn: CimFSSnapshotter) -> None:
    names = unpack_layers(sn, 2)
    base_dir = sn.root / "snapshots" / snapshot_id(sn, names[0])
    err = error_of(lambda: sn.prepare("ctr", names[-1], {LABEL_UVM_SCRATCH: ""}))
    assert str(err).startswith(
        f"failed to make UVM's scratch layer: failed to find UtilityVM directory in base layer"
        f" '{base_dir}'"
    )
    (base_dir / "UtilityVM").mkdir()
    err = error_of(lambda: sn.prepare("ctr", names[-1], {LABEL_UVM_SCRATCH: ""}))
    template = base_dir / "UtilityVM" / "SystemTemplate.vhdx"
    assert str(err) == (
        f"failed to make UVM's scratch layer: '{template}' does not exist in Utility VM image"
    )
    assert error_of(lambda: sn.stat("ctr")).kind == KIND_NOT_FOUND


def test_wcifs_mode_keeps_one_template_pair_per_base_layer(
    make_snapshotter: Callable[..., CimFSSnapshotter],
) -> None:
    sn = make_snapshotter(mode="wcifs")
    a = unpack_layers(sn, 2, prefix="a")
    b = unpack_layers(sn, 1, prefix="b")
    assert not (sn.root / "blank-base.vhdx").exists()
    for n in range(2):
        sn.prepare(f"ctr-a{n}", a[-1])
    sn.prepare("ctr-b", b[-1])
    pairs = sorted(p.parent.name for p in sn.root.glob("snapshots/*/blank-base.vhdx"))
    assert pairs == sorted([snapshot_id(sn, a[0]), snapshot_id(sn, b[0])])
    for key, base in (("ctr-a0", a[0]), ("ctr-b", b[0])):
        sandbox = Path(sn.mounts(key)[0].source) / "sandbox.vhdx"
        with DiskChain(sandbox) as chain:
            base_dir = sn.root / "snapshots" / snapshot_id(sn, base)
            assert chain.parent_paths == [base_dir / "blank-base.vhdx"]
    assert sn.mounts("ctr-a0")[0].type == "CimFS"  # everything but the template is the same


def test_mount_json_matches_go_escaping(sn: CimFSSnapshotter) -> None:
    from cimsnap.snapshotter.model import go_json_string_list

    assert go_json_string_list(["a<b>&c", "é", "x\u2028"]) == (
        '["a\\u003cb\\u003e\\u0026c","é","x\\u2028"]'
    )
    assert json.loads(go_json_string_list(["a<b>&c"])) == ["a<b>&c"]


def test_durable_prepare_syncs_every_new_file_and_directory_before_the_record(
    sn: CimFSSnapshotter, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cimsnap.snapshotter.snapshotter as snapshotter_module

    names = unpack_layers(sn, 2)
    make_uvm_template(sn.root / "snapshots" / snapshot_id(sn, names[0]))
    from cimsnap.snapshotter.metastore import MetaStore

    synced: list[Path] = []
    real_fsync = snapshotter_module._fsync
    other_reader = MetaStore(sn.layout.metadata_db)

    def recording_fsync(path: Path) -> None:
        # the record must not be visible yet: the files are synced before the commit
        with other_reader.transaction() as tx:
            assert "ctr-uvm" not in {info.name for info in tx.walk_info()}
        synced.append(path)
        real_fsync(path)

    monkeypatch.setattr(snapshotter_module, "_fsync", recording_fsync)
    try:
        (mount,) = sn.prepare("ctr-uvm", names[-1], {LABEL_UVM_SCRATCH: "true"})
    finally:
        other_reader.close()
    snapshot_dir = Path(mount.source)
    assert synced == [
        snapshot_dir / "vm" / "sandbox.vhdx",
        snapshot_dir / "sandbox.vhdx",
        snapshot_dir / "vm",
        snapshot_dir,
        snapshot_dir.parent,
    ]
