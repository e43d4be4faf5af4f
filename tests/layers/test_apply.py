"""Mounts -> layer target (as containerd hands them to a differ), and Apply to both layouts."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from cimsnap.errors import CimsnapError
from cimsnap.layers.apply import apply_layer, layer_target
from tests.images.builder import compress


@dataclass(frozen=True)
class M:
    type: str
    source: str
    options: tuple[str, ...] = ()


def test_cimfs_mount() -> None:
    parents = ["/r/snapshots/3", "/r/snapshots/1"]
    cims = ["/r/snapshots/cim-layers/3.cim", "/r/snapshots/cim-layers/1.cim"]
    target = layer_target(
        [
            M(
                "CimFS",
                "/r/snapshots/4",
                (
                    "rw",
                    "cimpath=/r/snapshots/cim-layers/4.cim",
                    "parentLayerPaths=" + json.dumps(parents),
                    "parentCimPaths=" + json.dumps(cims),
                ),
            )
        ]
    )
    assert target.layer_dir == Path("/r/snapshots/4")
    assert target.cim_path == Path("/r/snapshots/cim-layers/4.cim")
    assert target.parents == tuple(map(Path, parents)) and target.parent_cims == tuple(
        map(Path, cims)
    )
    assert not target.legacy


def test_legacy_mount() -> None:
    target = layer_target(
        [M("windows-layer", "/r/snapshots/4", ("rw", 'parentLayerPaths=["/r/snapshots/1"]'))]
    )
    assert target.legacy and target.parents == (Path("/r/snapshots/1"),)


@pytest.mark.parametrize(
    "mounts, message",
    [
        ([], "number of mounts"),
        (
            [M("CimFS", "/a", ("cimpath=/x.cim",)), M("CimFS", "/b", ("cimpath=/y.cim",))],
            "number of mounts",
        ),
        ([M("overlay", "/a")], "unsupported mount type"),
        ([M("CimFS", "/a", ("rw",))], "cimpath"),
        ([M("CimFS", "", ("cimpath=/x.cim",))], "no source"),
        ([M("CimFS", "/a", ("cimpath=/x.cim", "parentLayerPaths=[not json"))], "not a JSON list"),
        ([M("CimFS", "/a", ("cimpath=/x.cim", 'parentLayerPaths=["/p"]'))], "differ in length"),
        (
            [M("CimFS", "/a", ("cimpath=/x.cim", "parentLayerPaths=[1]", "parentCimPaths=[1]"))],
            "list of paths",
        ),
    ],
)
def test_bad_mounts(mounts: list[M], message: str) -> None:
    with pytest.raises(CimsnapError, match=message):
        layer_target(mounts)


def test_apply_to_a_legacy_mount(tmp_path: Path, image_tars: list[bytes]) -> None:
    packed = compress(image_tars[0], "gzip")
    applied = apply_layer(
        io.BytesIO(packed),
        [M("windows-layer", str(tmp_path / "L"))],
        media_type="application/vnd.oci.image.layer.v1.tar+gzip",
    )
    assert applied.result.cim_path is None
    assert (tmp_path / "L" / "tombstones.txt").is_file()
    assert (tmp_path / "L" / "Files" / "Windows" / "win.ini").is_file()
    assert not (tmp_path / "cim-layers").exists()
