"""SIGKILL at any point of Prepare/Commit/Remove/template creation loses nothing and corrupts
nothing: after a restart, Cleanup finishes the job and metadata and directories agree."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cimsnap.snapshotter.model import Kind
from cimsnap.snapshotter.snapshotter import CimFSSnapshotter
from tests.conftest import PROJECT_ROOT
from tests.snapshotter.conftest import seed_template
from tests.snapshotter.consistency import assert_consistent


def run_worker(root: Path, scenario: str, seed: int = 0, kill_after: float | None = None) -> str:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.snapshotter.crash_worker", str(root), scenario, str(seed)],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if kill_after is not None:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.strip() == "READY", line + proc.stderr.read() if proc.stderr else line
            time.sleep(kill_after)
            proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"worker exited {proc.returncode}: {err}"
    assert "ERROR" not in out, out
    return out


def restart(root: Path) -> CimFSSnapshotter:
    sn = CimFSSnapshotter(root)
    sn.cleanup()
    assert_consistent(sn)
    return sn


def keys(sn: CimFSSnapshotter) -> set[str]:
    return {i.name for i in sn.walk()}


@pytest.mark.parametrize(
    ("scenario", "present", "absent"),
    [
        # the rename to rm-<id> never committed: the directory is put back
        ("remove-after-rename", {"ctr-victim"}, set()),
        # the removal committed: Cleanup deletes rm-<id>
        ("remove-before-delete", set(), {"ctr-victim"}),
        # the new snapshot never committed: its directory and copy are garbage
        ("prepare-after-copy", {"ctr-victim"}, {"ctr-new"}),
        ("prepare-mid-copy", {"ctr-victim"}, {"ctr-new"}),
        # the commit never happened: the active snapshot is still there, unchanged
        ("commit-in-transaction", {"ctr-victim", "extract-new"}, {"new-layer"}),
    ],
)
def test_kill_at_a_precise_point(
    template_dir: Path, tmp_path: Path, scenario: str, present: set[str], absent: set[str]
) -> None:
    root = tmp_path / "root"
    seed_template(template_dir, root)
    run_worker(root, scenario)
    leftovers = {p.name for p in (root / "snapshots").iterdir()}
    sn = restart(root)
    try:
        assert present <= keys(sn) and not absent & keys(sn)
        if scenario == "remove-after-rename":
            assert any(name.startswith("rm-") for name in leftovers)
            assert sn.mounts("ctr-victim")  # usable again
        # work goes on
        sn.prepare("ctr-after", "base1")
        sn.remove("ctr-after")
        assert_consistent(sn)
    finally:
        sn.close()


@pytest.mark.parametrize("scenario", ["template-mid-base", "template-after-base"])
def test_kill_during_template_creation(tmp_path: Path, scenario: str) -> None:
    root = tmp_path / "root"
    run_worker(root, scenario)
    sn = restart(root)
    try:
        sn.prepare("extract-1")
        sn.commit("base", "extract-1")
        sn.prepare("ctr", "base")
        assert_consistent(sn)
    finally:
        sn.close()


@pytest.mark.parametrize("scenario", ["random", "random-fast"])
def test_kill_at_random_moments(template_dir: Path, tmp_path: Path, scenario: str) -> None:
    root = tmp_path / "root"
    seed_template(template_dir, root)
    rng = random.Random(2002)
    for round_ in range(5):
        run_worker(root, scenario, seed=round_, kill_after=rng.uniform(0.05, 0.6))
        sn = restart(root)
        try:
            infos = list(sn.walk())
            assert any(i.kind is Kind.COMMITTED for i in infos)
        finally:
            sn.close()
