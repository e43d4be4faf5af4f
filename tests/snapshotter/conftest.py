"""Fixtures: snapshotter roots that start from one session-wide scratch template.

A formatted template base is made once per session and copied (sparse) into each new
root; the start-up rules keep that base and make the differencing child from it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cimsnap.scratch.template import BASE_VHD_NAME, ensure_template
from cimsnap.snapshotter.snapshotter import CimFSSnapshotter


@pytest.fixture(scope="session")
def template_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("template")
    ensure_template(directory)
    return directory


def seed_template(template_dir: Path, directory: Path) -> None:
    """Put a copy of the session's formatted base into ``directory``.

    Only the base: by the start-up rules the snapshotter then makes ``blank.vhdx`` beside it,
    whose locator names this base (a copied child would name the session's).
    """
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["cp", "--sparse=always", str(template_dir / BASE_VHD_NAME), str(directory)],
        check=True,
    )


@pytest.fixture
def make_snapshotter(
    template_dir: Path, tmp_path: Path
) -> Iterator[Callable[..., CimFSSnapshotter]]:
    opened: list[CimFSSnapshotter] = []

    def make(root: Path | None = None, **kwargs: object) -> CimFSSnapshotter:
        root = root or tmp_path / "root"
        if not (root / BASE_VHD_NAME).exists() and kwargs.get("mode", "cimfs") == "cimfs":
            seed_template(template_dir, root)
        sn = CimFSSnapshotter(root, **kwargs)  # type: ignore[arg-type]
        opened.append(sn)
        return sn

    yield make
    for sn in opened:
        sn.close()


@pytest.fixture
def sn(make_snapshotter: Callable[..., CimFSSnapshotter]) -> CimFSSnapshotter:
    return make_snapshotter()
