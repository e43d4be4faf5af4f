"""End-to-end fixtures: ``cimsnap serve`` and a real containerd using it (see containerd.py).

- ``e2e_dir``: a short per-module temp dir (unix socket paths must stay < 108 bytes);
- ``cimsnap_service``: the service (cimfs mode) for the module;
- ``containerd``: containerd configured with ``cimsnap_service`` as proxy snapshotter "cimsnap";
- ``snapshots_client``: a gRPC client of containerd's own snapshots API for that snapshotter
  (namespace "default"), for calls ``ctr`` cannot make (labels at Prepare).

Tests are skipped when containerd or ctr is not installed.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.containerd import (
    NAMESPACE,
    SNAPSHOTTER_NAME,
    CimsnapService,
    Containerd,
    running,
)


@pytest.fixture(scope="module")
def e2e_dir() -> Iterator[Path]:
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        pytest.skip("containerd is not installed (./run.sh test installs it)")
    path = Path(tempfile.mkdtemp(prefix="cimsnap-e2e-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def cimsnap_service(e2e_dir: Path) -> Iterator[CimsnapService]:
    with running(CimsnapService(e2e_dir / "svc")) as service:
        yield service


@pytest.fixture(scope="module")
def containerd(e2e_dir: Path, cimsnap_service: CimsnapService) -> Iterator[Containerd]:
    with running(Containerd(e2e_dir / "ctd", cimsnap_service.address)) as instance:
        yield instance


@pytest.fixture(scope="module")
def snapshots_client(containerd: Containerd):  # type: ignore[no-untyped-def]
    from cimsnap.service.client import SnapshotsClient

    client = SnapshotsClient(
        str(containerd.address), snapshotter=SNAPSHOTTER_NAME, namespace=NAMESPACE
    )
    try:
        yield client
    finally:
        client.close()
