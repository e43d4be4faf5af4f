"""Many threads and processes on one root lose nothing; a fresh root gets exactly one template."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cimsnap.snapshotter.snapshotter import CimFSSnapshotter
from tests.conftest import PROJECT_ROOT
from tests.snapshotter.conftest import seed_template
from tests.snapshotter.consistency import assert_consistent


def base_layers(sn: CimFSSnapshotter, count: int) -> list[str]:
    names = []
    for i in range(count):
        sn.prepare(f"extract-{i}")
        sn.commit(f"base{i}", f"extract-{i}")
        names.append(f"base{i}")
    return names


def test_threads(make_snapshotter: Callable[..., CimFSSnapshotter]) -> None:
    sn = make_snapshotter()
    bases = base_layers(sn, 2)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(12):
                sn.prepare(f"t{n}-{i}", bases[i % 2])
                if i % 3 == 0:
                    sn.remove(f"t{n}-{i}")
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    expected = {f"t{n}-{i}" for n in range(8) for i in range(12) if i % 3}
    assert {i.name for i in sn.walk(["kind==active"])} == expected
    assert_consistent(sn)


WORKER = """
import sys, json
from cimsnap.snapshotter.snapshotter import CimFSSnapshotter
root, n = sys.argv[1], int(sys.argv[2])
sn = CimFSSnapshotter(root)
for i in range(15):
    sn.prepare(f"p{n}-{i}", f"base{i % 2}")
    if i % 3 == 0:
        sn.remove(f"p{n}-{i}")
sn.close()
"""


def test_processes(template_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    seed_template(template_dir, root)
    with CimFSSnapshotter(root) as sn:
        base_layers(sn, 2)
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(root), str(n)], cwd=PROJECT_ROOT)
        for n in range(4)
    ]
    for p in procs:
        assert p.wait(120) == 0
    with CimFSSnapshotter(root) as sn:
        expected = {f"p{n}-{i}" for n in range(4) for i in range(15) if i % 3}
        assert {i.name for i in sn.walk(["kind==active"])} == expected
        assert_consistent(sn)


STARTER = """
import sys, json, os, time, logging
logging.basicConfig(level=logging.INFO, format="%(message)s")
start_at = float(sys.argv[2])
time.sleep(max(0.0, start_at - time.time()))
from cimsnap.formats import vhdx
from cimsnap.snapshotter.snapshotter import CimFSSnapshotter
sn = CimFSSnapshotter(sys.argv[1])
base = os.path.join(sys.argv[1], "blank-base.vhdx")
print(json.dumps([os.stat(base).st_ino, vhdx.info(base)["data_write_guid"]]))
sn.close()
"""


def test_two_processes_on_a_fresh_root_make_one_template(tmp_path: Path) -> None:
    root = tmp_path / "fresh"
    start_at = time.time() + 1.5  # both import first, then start together
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", STARTER, str(root), str(start_at)],
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    seen = {tuple(json.loads(out)) for out, _ in results}
    assert len(seen) == 1  # the same file: nobody replaced the other's template
    logs = "".join(err for _, err in results)
    assert logs.count("creating scratch template") == 1, logs
