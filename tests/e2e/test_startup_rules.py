"""Start-up rules of the template, across real ``cimsnap serve`` restarts.

Each restart is a new process on the same root; after it, a container snapshot is prepared over
gRPC and its sandbox must chain to the (kept or remade) base.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cimsnap.formats import vhdx
from cimsnap.service.client import SnapshotsClient
from tests.e2e.containerd import CimsnapService
from tests.snapshotter.diskcheck import DiskChain

pytestmark = pytest.mark.tool


@pytest.fixture(scope="module")
def service(e2e_dir: Path) -> Iterator[CimsnapService]:
    svc = CimsnapService(e2e_dir / "svc-startup")
    svc.start()
    try:
        with SnapshotsClient(str(svc.address)) as client:
            client.prepare("extract-base")
            client.commit("base", "extract-base")
        svc.stop()
        yield svc
    finally:
        svc.stop()


def restart_and_prepare(svc: CimsnapService, key: str) -> Path:
    svc.start()
    try:
        with SnapshotsClient(str(svc.address)) as client:
            (mount,) = client.prepare(key, "base")
    finally:
        assert svc.stop() == 0, svc.logs()
    sandbox = Path(mount.source) / "sandbox.vhdx"
    vhdx.check(sandbox)
    with DiskChain(sandbox) as chain:
        assert chain.parent_paths == [svc.root / "blank-base.vhdx"]
    return sandbox


def identity(path: Path) -> tuple[int, str]:
    return os.stat(path).st_ino, vhdx.info(path)["data_write_guid"]


def test_deleted_child_is_remade_from_the_kept_base(service: CimsnapService) -> None:
    base = service.root / "blank-base.vhdx"
    before = identity(base)
    (service.root / "blank.vhdx").unlink()
    restart_and_prepare(service, "after-child-deleted")
    assert identity(base) == before
    assert (service.root / "blank.vhdx").exists()


def test_deleted_base_remakes_both(service: CimsnapService) -> None:
    child = service.root / "blank.vhdx"
    old_child = identity(child)
    old_guid = vhdx.info(service.root / "blank-base.vhdx")["data_write_guid"]
    (service.root / "blank-base.vhdx").unlink()
    restart_and_prepare(service, "after-base-deleted")
    assert vhdx.info(service.root / "blank-base.vhdx")["data_write_guid"] != old_guid
    assert identity(child) != old_child


def test_corrupt_template_is_detected_and_remade(service: CimsnapService) -> None:
    base = service.root / "blank-base.vhdx"
    with open(base, "r+b") as f:  # wreck both headers
        f.seek(64 * 1024)
        f.write(os.urandom(128 * 1024))
    restart_and_prepare(service, "after-corruption")
    vhdx.check(base)
    assert "blank-base.vhdx cannot be used" in service.logs()
