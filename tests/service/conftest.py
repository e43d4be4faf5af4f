"""Fixtures: an in-process SnapshotterServer on a temp socket, and a client of it."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cimsnap.service.client import SnapshotsClient
from cimsnap.service.server import SnapshotterServer
from cimsnap.snapshotter.snapshotter import CimFSSnapshotter
from tests.snapshotter.conftest import make_snapshotter, template_dir

__all__ = ["make_snapshotter", "template_dir"]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short temp dir: unix socket paths must stay under 108 bytes."""
    with tempfile.TemporaryDirectory(prefix="cs-", dir="/tmp") as tmp:
        yield Path(tmp)


@pytest.fixture
def server(
    make_snapshotter: Callable[..., CimFSSnapshotter], short_dir: Path
) -> Iterator[SnapshotterServer]:
    sn = make_snapshotter()
    srv = SnapshotterServer(sn, short_dir / "s.sock", workers=4, grace=1.0)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def client(server: SnapshotterServer) -> Iterator[SnapshotsClient]:
    with SnapshotsClient(str(server.address), snapshotter="any-name-at-all") as c:
        c.wait_ready()
        yield c
