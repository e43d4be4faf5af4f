"""The legacy (wcifs) layout: the layer expanded into host files with Windows metadata in
xattrs, whiteouts in tombstones.txt; exporting it gives the layer tar back."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cimsnap.errors import CimsnapError
from cimsnap.formats.cim import CimImage
from cimsnap.formats.wintar import EntryKind, WinTarReader
from cimsnap.layers import layout
from cimsnap.layers.legacy import export_legacy_layer, import_legacy_layer
from tests.images.builder import LayerSpec, base_layer
from tests.images.model import assert_same_cims, fold
from tests.layers.conftest import ImportedImage, import_chain
from tests.layers.test_unsafe import raw_tar

GENERATED = {fold(h.base_path) for h in layout.HIVE_TABLE} | {
    "layout",
    "hives",
    fold(layout.BCD_FILE),
    fold(layout.UVM_SYSTEM_HIVE),
}


@pytest.fixture(scope="module")
def legacy(image_tars: list[bytes]) -> Iterator[list[Path]]:
    root = Path(tempfile.mkdtemp(prefix="cimsnap-legacy-"))
    try:
        dirs: list[Path] = []
        for i, tar in enumerate(image_tars):
            layer_dir = root / f"L{i + 1}"
            import_legacy_layer(io.BytesIO(tar), layer_dir, list(reversed(dirs)))
            dirs.append(layer_dir)
        yield dirs
    finally:
        shutil.rmtree(root, ignore_errors=True)


def tar_entries(tar: bytes) -> dict[str, tuple[str, bytes, object]]:
    """Path -> (kind, data, metadata); a hard link counts as its file (which name of a linked
    file carries the data depends on the order of the walk)."""
    out: dict[str, tuple[str, bytes, object]] = {}
    links = {}
    for e in WinTarReader(io.BytesIO(tar)):
        data = e.data.read()
        if e.kind is EntryKind.HARDLINK:
            assert e.link_target is not None
            links[fold(e.path)] = fold(e.link_target)
            continue
        meta = None if e.kind in (EntryKind.WHITEOUT, EntryKind.STREAM) else e.metadata
        out[fold(e.stream_path)] = (str(e.kind), data, meta)
    for name, target in links.items():
        out[name] = out.get(target, ("file-in-parent", b"", None))
        for key, value in list(out.items()):
            if key.startswith(target + ":"):
                out[name + key[len(target) :]] = value
    return out


def export(legacy: list[Path], index: int) -> bytes:
    out = io.BytesIO()
    export_legacy_layer(legacy[index], out, list(reversed(legacy[:index])))
    return out.getvalue()


@pytest.mark.parametrize("index", [0, 1, 2])
def test_export_gives_the_layer_tar_back(
    legacy: list[Path], image_tars: list[bytes], index: int
) -> None:
    assert tar_entries(export(legacy, index)) == tar_entries(image_tars[index])


def test_legacy_and_cim_layouts_hold_the_same_layers(
    legacy: list[Path], imported: ImportedImage, tmp_path: Path
) -> None:
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    tars = [export(legacy, i) for i in range(3)]
    dirs, _ = import_chain(snapshots, tars)
    for i, layer_dir in enumerate(dirs):
        with (
            CimImage.open(imported.cim(i)) as a,
            CimImage.open(snapshots / "cim-layers" / f"{layer_dir.name}.cim") as b,
        ):
            assert_same_cims(a, b, ignore_content=GENERATED)


def test_host_layout(legacy: list[Path], image_specs: list[LayerSpec]) -> None:
    base, second, third = legacy
    assert not [p for p in base.parent.rglob("*") if p.is_symlink()], "host symlinks written"
    junction = base / "Files" / "Documents and Settings"
    assert junction.is_dir() and os.getxattr(junction, "user.cimfs.reparse")
    assert int(os.getxattr(junction, "user.cimfs.attributes"), 0) & 0x410 == 0x410
    win_ini = base / "Files" / "Windows" / "win.ini"
    assert (win_ini.parent / "win.ini:Zone.Identifier").read_bytes().startswith(b"[ZoneTransfer]")
    # Cross-layer hard link: the second layer's name is the base layer's file.
    hosts = base / "Files/Windows/WinSxS/amd64_hosts_31bf3856ad364e35/hosts"
    assert os.stat(second / "Files/app/hosts").st_ino == os.stat(hosts).st_ino
    assert (second / "tombstones.txt").read_text("utf-8").splitlines() == [
        "\ufeffVersion 1.0",
        "\\Windows\\System32\\notepad.exe",
        "\\Temp",
    ]
    for hive in layout.HIVE_TABLE:
        assert (
            os.stat(base / "Hives" / hive.base).st_ino
            == os.stat(layout.host_path(base, hive.config_path)).st_ino
        )
    assert (base / "layout").read_bytes() == b"vhd-with-hives\n"
    assert (second / "Hives" / "SOFTWARE_BASE").is_file() and not (
        third / "Hives" / "SYSTEM_BASE"
    ).exists()
    assert (base / "UtilityVM" / "SystemTemplate.vhdx").is_file()
    bcd = next(op.data for op in image_specs[0].ops if op.path == layout.BCD_FILE)
    assert layout.host_path(base, layout.BCD_FILE).read_bytes() == bcd  # not set up for CIM boot


@pytest.mark.parametrize(
    "tar",
    [
        raw_tar([("dir", "Files/", b""), ("file", "/Files/evil", b"x")]),
        raw_tar([("dir", "Files/", b""), ("file", "Files/../../etc/passwd", b"x")]),
        raw_tar([("dir", "Files/", b""), ("link", "Files/passwd", "../../etc/passwd")]),
        raw_tar([("dir", "Files/", b""), ("link", "Files/nothing", "Files/missing")]),
        raw_tar([("dir", "Files/", b""), ("file", "Files/a:s:$DATA", b"x")]),
        base_layer(uvm=False).tar()[:30_000],
        LayerSpec().dir("UtilityVM").dir("UtilityVM\\Files").whiteout("UtilityVM\\Files\\x").tar(),
    ],
    ids=[
        "absolute",
        "dotdot",
        "link-escape",
        "link-missing",
        "orphan-stream",
        "truncated",
        "uvm-whiteout",
    ],
)
def test_unsafe_input_leaves_nothing(tmp_path: Path, tar: bytes) -> None:
    with pytest.raises(CimsnapError):
        import_legacy_layer(io.BytesIO(tar), tmp_path / "layer", name="bad.tar")
    assert not (tmp_path / "layer").exists()


def test_hard_link_through_a_host_symlink_is_refused(tmp_path: Path) -> None:
    parent = tmp_path / "parent"
    (parent / "Files").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret")
    (parent / "Files" / "dir").symlink_to(outside)
    tar = raw_tar([("dir", "Files/", b""), ("link", "Files/stolen", "Files/dir/secret")])
    with pytest.raises(CimsnapError, match="symlink"):
        import_legacy_layer(io.BytesIO(tar), tmp_path / "layer", [parent])
    assert not (tmp_path / "layer").exists()
