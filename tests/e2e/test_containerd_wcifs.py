"""End to end in the legacy ``--mode wcifs``: one template pair per base layer, made on demand."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.containerd import CimsnapService, Containerd, running
from tests.e2e.test_containerd import backend_ids, unpack
from tests.snapshotter.diskcheck import DiskChain

pytestmark = pytest.mark.tool


@pytest.fixture(scope="module")
def wcifs_service(e2e_dir: Path) -> Iterator[CimsnapService]:
    with running(CimsnapService(e2e_dir / "svc-wcifs", mode="wcifs")) as service:
        yield service


@pytest.fixture(scope="module")
def wcifs_containerd(e2e_dir: Path, wcifs_service: CimsnapService) -> Iterator[Containerd]:
    with running(Containerd(e2e_dir / "ctd-wcifs", wcifs_service.address)) as instance:
        yield instance


def test_one_template_pair_per_base_layer(
    wcifs_containerd: Containerd, wcifs_service: CimsnapService
) -> None:
    ctd, root = wcifs_containerd, wcifs_service.root
    unpack(ctd, "a-base")
    unpack(ctd, "a-top", "a-base")
    unpack(ctd, "b-base")
    assert not list(root.rglob("blank*.vhdx"))  # made when a container first needs one
    for key, parent in (("a1", "a-top"), ("a2", "a-top"), ("a3", "a-base"), ("b1", "b-base")):
        ctd.snapshots("prepare", key, parent)
    ids = backend_ids(wcifs_service)
    pairs = sorted(p.parent.name for p in root.rglob("blank-base.vhdx"))
    assert pairs == sorted([ids["a-base"], ids["b-base"]])
    assert sorted(p.parent.name for p in root.rglob("blank.vhdx")) == pairs
    for key, base in (("a1", "a-base"), ("b1", "b-base")):
        sandbox = root / "snapshots" / ids[key] / "sandbox.vhdx"
        with DiskChain(sandbox) as chain:
            assert chain.parent_paths == [root / "snapshots" / ids[base] / "blank-base.vhdx"]
