"""``cimsnap layer import/export`` and ``cimsnap image unpack`` (local snapshotter root)."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from cimsnap.cli.main import main as cimsnap_main
from cimsnap.formats.cim import CimImage
from cimsnap.layers import layout
from cimsnap.snapshotter.snapshotter import CimFSSnapshotter
from tests.images.builder import LayerSpec, pack_oci_layout
from tests.images.model import assert_cim_matches, expected_trees, fold

HIVE_BASES = {fold(h.base_path) for h in layout.HIVE_TABLE}
REWRITTEN = {fold(layout.BCD_FILE), fold(layout.UVM_SYSTEM_HIVE)}


def cli(capsys: pytest.CaptureFixture[str], *args: str, rc: int = 0) -> str:
    capsys.readouterr()
    assert cimsnap_main([str(a) for a in args]) == rc
    captured = capsys.readouterr()
    return captured.out if rc == 0 else captured.err


def test_layer_import_export_round_trip(
    tmp_path: Path, image_tars: list[bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "l1.tar").write_bytes(image_tars[0])
    (tmp_path / "l2.tar.gz").write_bytes(gzip.compress(image_tars[1]))
    snaps = tmp_path / "snapshots"
    one = json.loads(cli(capsys, "layer", "import", tmp_path / "l1.tar", snaps / "a", "--json"))
    assert one["cim"] == str(snaps / "cim-layers" / "a.cim") and one["compression"] == "none"
    assert one["uvm"]["cim_root"] == "\\cim-layers\\a.cim" and one["uvm_build"] == 26100
    two = json.loads(
        cli(
            capsys,
            "layer",
            "import",
            tmp_path / "l2.tar.gz",
            snaps / "b",
            "--parent",
            snaps / "a",
            "--json",
        )
    )
    assert two["compression"] == "gzip" and set(two["merged_hives"]) == {
        "Hives\\SYSTEM_BASE",
        "Hives\\SOFTWARE_BASE",
    }
    out = cli(capsys, "layer", "export", snaps / "b", tmp_path / "b.tar", "--parent", snaps / "a")
    assert "2 whiteouts" in out
    three = json.loads(
        cli(
            capsys,
            "layer",
            "import",
            tmp_path / "b.tar",
            snaps / "c",
            "--parent",
            snaps / "a",
            "--json",
        )
    )
    assert three["diff_id"] != two["diff_id"] and three["size"] == two["size"]
    with (
        CimImage.open(snaps / "cim-layers" / "b.cim") as b,
        CimImage.open(snaps / "cim-layers" / "c.cim") as c,
    ):
        from tests.images.model import assert_same_cims

        assert_same_cims(b, c, ignore_content=HIVE_BASES | {"hives"})
    # Errors: one line, exit status 1, nothing changed.
    err = cli(capsys, "layer", "import", tmp_path / "l1.tar", snaps / "a", rc=1)
    assert err.startswith("cimsnap: error:") and "not empty" in err and err.count("\n") == 1
    err = cli(capsys, "layer", "export", tmp_path / "nothing", tmp_path / "x.tar", rc=1)
    assert "not a layer" in err and not (tmp_path / "x.tar").exists()


def test_legacy_import_and_export(
    tmp_path: Path, image_tars: list[bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "l1.tar").write_bytes(image_tars[0])
    out = cli(capsys, "layer", "import", tmp_path / "l1.tar", tmp_path / "L1", "--legacy")
    assert "legacy layout" in out and not (tmp_path / "cim-layers").exists()
    report = json.loads(
        cli(capsys, "layer", "export", tmp_path / "L1", tmp_path / "e.tar", "--json")
    )
    assert report["format"] == "legacy" and report["whiteouts"] == 0


@pytest.fixture
def oci(tmp_path: Path, image_tars: list[bytes]):  # type: ignore[no-untyped-def]
    return pack_oci_layout(tmp_path / "oci", image_tars, compression=["zstd", "gzip", "none"])


def test_image_unpack_then_prepare_a_container(
    tmp_path: Path,
    oci,
    image_specs: list[LayerSpec],
    capsys: pytest.CaptureFixture[str],  # type: ignore[no-untyped-def]
) -> None:
    root = tmp_path / "root"
    report = json.loads(
        cli(capsys, "image", "unpack", oci.layout_dir, "--root", root, "--ref", oci.ref, "--json")
    )
    assert report["chain_id"] == oci.chain_ids[-1] and report["manifest"] == oci.manifest_digest
    for layer, chain, diff in zip(report["layers"], oci.chain_ids, oci.diff_ids, strict=True):
        assert (layer["chain_id"], layer["diff_id"], layer["skipped"]) == (chain, diff, False)
        assert re.fullmatch(r"extract-\d+-[A-Za-z0-9_-]{4} " + re.escape(chain), layer["key"])
    again = json.loads(cli(capsys, "image", "unpack", oci.layout_dir, "--root", root, "--json"))
    assert all(layer["skipped"] for layer in again["layers"])

    sn = CimFSSnapshotter(root, template_at_start=False)
    try:
        infos = {i.name: i for i in sn.walk()}
        assert set(infos) == set(oci.chain_ids)  # only committed layers: no unpack keys left
        for i, chain in enumerate(oci.chain_ids):
            assert infos[chain].parent == (oci.chain_ids[i - 1] if i else "")
            assert infos[chain].labels["containerd.io/snapshot.ref"] == chain
        trees = expected_trees(image_specs)
        for i, chain in enumerate(oci.chain_ids):
            with CimImage.open(_committed_cim(sn, chain)) as image:
                ignore = HIVE_BASES | {"layout"} | ({"hives"} if i == 0 else set())
                assert_cim_matches(image, trees[i], ignore=ignore, ignore_content=REWRITTEN)
    finally:
        sn.close()
    cli(
        capsys,
        "snapshot",
        "--root",
        root,
        "prepare",
        "ctr1",
        oci.chain_ids[-1],
        "--label",
        "containerd.io/snapshot/io.microsoft.vm.storage.scratch=true",
    )
    snaps = root / "snapshots"
    sandboxes = list(snaps.glob("*/sandbox.vhdx"))
    assert len(sandboxes) == 1
    vm = sandboxes[0].parent / "vm" / "sandbox.vhdx"
    base_dir = _committed_dir(root, oci.chain_ids[0])
    assert vm.read_bytes() == (base_dir / "UtilityVM" / "SystemTemplate.vhdx").read_bytes()


def _committed_dir(root: Path, chain: str) -> Path:
    from cimsnap.snapshotter.metastore import MetaStore

    store = MetaStore(root / "metadata.db")
    try:
        with store.transaction() as tx:
            ids = {name: i for i, name in tx.id_map().items()}
    finally:
        store.close()
    return root / "snapshots" / ids[chain]


def _committed_cim(sn: CimFSSnapshotter, chain: str) -> Path:
    layer_dir = _committed_dir(sn.root, chain)
    return layer_dir.parent / "cim-layers" / f"{layer_dir.name}.cim"


def test_image_unpack_refuses_a_corrupt_blob(
    tmp_path: Path,
    oci,
    capsys: pytest.CaptureFixture[str],  # type: ignore[no-untyped-def]
) -> None:
    blob = oci.layout_dir / "blobs" / "sha256" / oci.layer_digests[1].split(":")[1]
    data = bytearray(blob.read_bytes())
    data[-40] ^= 0x55
    blob.write_bytes(bytes(data))
    root = tmp_path / "root"
    err = cli(capsys, "image", "unpack", oci.layout_dir, "--root", root, rc=1)
    assert "cimsnap: error:" in err and ("digest" in err or "decompress" in err)
    sn = CimFSSnapshotter(root, template_at_start=False)
    try:
        names = [i.name for i in sn.walk()]
    finally:
        sn.close()
    assert names == [oci.chain_ids[0]]  # layer 1 committed, no extraction snapshot left
    assert sorted(p.name for p in (root / "snapshots").iterdir() if p.name != "cim-layers") == ["1"]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "oci-layout").unlink(), "not an OCI image layout"),
        (lambda d: (d / "index.json").write_text("{"), "not valid JSON"),
        (
            lambda d: (d / "index.json").write_text(
                '{"manifests": [{"digest": "sha256:../x", "size": 1}]}'
            ),
            "invalid or unsupported digest",
        ),
    ],
    ids=["no-marker", "bad-index", "path-in-digest"],
)
def test_malformed_layouts(tmp_path: Path, oci, capsys, damage, message) -> None:  # type: ignore[no-untyped-def]
    damage(oci.layout_dir)
    err = cli(capsys, "image", "unpack", oci.layout_dir, "--root", tmp_path / "r", rc=1)
    assert message in err


def test_unknown_ref(tmp_path: Path, oci, capsys) -> None:  # type: ignore[no-untyped-def]
    err = cli(
        capsys, "image", "unpack", oci.layout_dir, "--root", tmp_path / "r", "--ref", "nope", rc=1
    )
    assert "no image named 'nope'" in err and oci.ref in err
    # A bare tag finds "name:tag".
    report = json.loads(
        cli(
            capsys,
            "image",
            "unpack",
            oci.layout_dir,
            "--root",
            tmp_path / "r",
            "--ref",
            "1",
            "--json",
        )
    )
    assert report["chain_id"] == oci.chain_ids[-1]


def test_progress_bars_name_each_layer_on_stderr(
    tmp_path: Path, oci, image_tars: list[bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    """``--progress`` draws rich bars on stderr (stdout stays the report) for both commands."""
    root = tmp_path / "root"
    capsys.readouterr()
    assert cimsnap_main(["image", "unpack", str(oci.layout_dir), "--root", str(root),
                         "--progress", "--json"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert json.loads(captured.out)["chain_id"] == oci.chain_ids[-1]
    for i, digest in enumerate(oci.layer_digests):
        assert f"layer {i + 1}/3 {digest[7:19]}" in captured.err
    assert "image" in captured.err

    (tmp_path / "l1.tar").write_bytes(image_tars[0])
    assert cimsnap_main(["layer", "import", str(tmp_path / "l1.tar"), str(tmp_path / "s" / "a"),
                         "--progress"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert "l1.tar" in captured.err and "%" not in captured.out
