"""Fixtures: the realistic test image, imported layer by layer into a snapshots directory."""

from __future__ import annotations

import io
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cimsnap.layers.cimlayer import import_cim_layer
from cimsnap.layers.entries import ImportResult
from tests.images.builder import LayerSpec
from tests.images.fixtures import image_specs_fixture, image_tars_fixture

__all__ = ["image_specs_fixture", "image_tars_fixture"]

FIXED_NOW = 133_600_000_000_000_000  # the importer's clock for generated entries


@dataclass
class ImportedImage:
    snapshots: Path
    specs: list[LayerSpec]
    tars: list[bytes]
    layer_dirs: list[Path]
    results: list[ImportResult]

    def cim(self, index: int) -> Path:
        return self.snapshots / "cim-layers" / f"{self.layer_dirs[index].name}.cim"


def import_chain(
    snapshots: Path, tars: list[bytes], names: list[str] | None = None
) -> tuple[list[Path], list[ImportResult]]:
    dirs: list[Path] = []
    results = []
    for i, tar in enumerate(tars):
        layer_dir = snapshots / (names[i] if names else str(i + 1))
        parents = list(reversed(dirs))  # nearest first
        results.append(
            import_cim_layer(
                io.BytesIO(tar),
                layer_dir,
                parents,
                name=f"layer{i + 1}.tar",
                clock=lambda: FIXED_NOW,
            )
        )
        dirs.append(layer_dir)
    return dirs, results


@pytest.fixture(scope="module")
def imported(image_specs: list[LayerSpec], image_tars: list[bytes]) -> Iterator[ImportedImage]:
    root = Path(tempfile.mkdtemp(prefix="cimsnap-layers-"))
    try:
        snapshots = root / "snapshots"
        snapshots.mkdir()
        dirs, results = import_chain(snapshots, image_tars)
        yield ImportedImage(snapshots, image_specs, image_tars, dirs, results)
    finally:
        shutil.rmtree(root, ignore_errors=True)
