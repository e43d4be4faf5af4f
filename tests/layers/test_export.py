"""Export (CIM layer -> tar) is the inverse of import: import(export(layer)) is the layer."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from cimsnap.formats.cim import CimImage
from cimsnap.formats.wintar import EntryKind, WinTarReader
from cimsnap.layers import layout
from cimsnap.layers.errors import LayerError
from cimsnap.layers.export import export_cim_layer
from tests.images.model import assert_same_cims, fold
from tests.layers.conftest import ImportedImage, import_chain

HIVE_BASES = {fold(h.base_path) for h in layout.HIVE_TABLE}
# Made by every import anew: the generated entries' times, the UVM files that name new GUIDs.
GENERATED = HIVE_BASES | {"layout", "hives", fold(layout.BCD_FILE), fold(layout.UVM_SYSTEM_HIVE)}


def export_all(imported: ImportedImage) -> list[bytes]:
    tars = []
    for i, layer_dir in enumerate(imported.layer_dirs):
        parents = list(reversed(imported.layer_dirs[:i]))
        out = io.BytesIO()
        export_cim_layer(layer_dir, out, parents)
        tars.append(out.getvalue())
    return tars


@pytest.fixture(scope="module")
def exported(imported: ImportedImage) -> list[bytes]:
    return export_all(imported)


def entries(tar: bytes) -> dict[str, tuple[EntryKind, bytes]]:
    out = {}
    for entry in WinTarReader(io.BytesIO(tar)):
        out[fold(entry.stream_path)] = (entry.kind, entry.data.read())
    return out


def test_reimporting_the_export_reproduces_every_layer(
    imported: ImportedImage, exported: list[bytes], tmp_path: Path
) -> None:
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    dirs, _ = import_chain(snapshots, exported)
    for i, layer_dir in enumerate(dirs):
        with (
            CimImage.open(imported.cim(i)) as original,
            CimImage.open(snapshots / "cim-layers" / f"{layer_dir.name}.cim") as again,
        ):
            assert_same_cims(original, again, ignore_content=GENERATED)
            for hive in layout.HIVE_TABLE:  # merged hives: same registry content
                assert again.exists(hive.base_path)
    # Host files too: hives, layout, the utility VM's template pair.
    for name in ("layout", "uvmbuildversion", "UtilityVM/SystemTemplate.vhdx"):
        assert (dirs[0] / name).is_file()


def test_export_leaves_out_what_the_import_generates(exported: list[bytes]) -> None:
    base = entries(exported[0])
    assert "layout" not in base and not any(k.startswith("hives") for k in base)
    assert fold(layout.REG_FILES + "\\SYSTEM") in base
    second = entries(exported[1])
    assert "hives\\software_delta" in second and "hives\\software_base" not in second


def test_export_writes_the_layer_difference(imported: ImportedImage, exported: list[bytes]) -> None:
    second = entries(exported[1])
    whiteouts = {k for k, (kind, _) in second.items() if kind is EntryKind.WHITEOUT}
    assert whiteouts == {"files\\windows\\system32\\notepad.exe", "files\\temp"}
    assert second["files\\windows\\win.ini"][1] == b"; overwritten by layer 2\r\n"
    # app.exe and app-copy.exe are one file: the first name in directory order carries it.
    assert second["files\\app\\app-copy.exe:zone.identifier"][0] is EntryKind.STREAM
    assert second["files\\app\\app.exe"][0] is EntryKind.HARDLINK
    assert second["files\\app\\hosts"][0] is EntryKind.HARDLINK  # to a base-layer file
    # Unchanged files of the parent are not repeated.
    assert "files\\windows\\system32\\small.dat" not in second
    # Every file entry of the export was in the original tar, with the same bytes.
    original = entries(imported.tars[1])
    for key, (kind, data) in second.items():
        if kind in (EntryKind.FILE, EntryKind.STREAM):
            original_key = key.replace("app-copy.exe", "app.exe")
            assert original[original_key] == (kind, data), key
    third = entries(exported[2])
    assert {k for k, (kind, _) in third.items() if kind is EntryKind.WHITEOUT} == {
        "files\\app\\app-copy.exe"
    }


def test_export_gives_back_the_utility_vm_files_as_they_came(
    imported: ImportedImage, exported: list[bytes]
) -> None:
    base = entries(exported[0])
    spec_files = {fold(op.path): op.data for op in imported.specs[0].ops if op.kind == "file"}
    for path in (layout.BCD_FILE, layout.UVM_SYSTEM_HIVE, layout.BOOTMGR_FILE):
        assert base[fold(path)][1] == spec_files[fold(path)], path
    # ...while the imported layer's copies were changed for CIM boot.
    with CimImage.open(imported.cim(0)) as image:
        assert image.read(layout.BCD_FILE) != spec_files[fold(layout.BCD_FILE)]


def test_export_needs_the_fork_parent(imported: ImportedImage) -> None:
    with pytest.raises(LayerError, match="not a fork"):
        export_cim_layer(imported.layer_dirs[2], io.BytesIO(), [imported.layer_dirs[0]])
    with pytest.raises(LayerError, match="no CIM"):
        export_cim_layer(imported.layer_dirs[0].parent / "nope", io.BytesIO())
