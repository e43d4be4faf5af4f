"""A process that works on a snapshotter root until it is killed (used by test_crash.py).

    python -m tests.snapshotter.crash_worker ROOT SCENARIO SEED

``random`` (``random-fast``: without fsyncs): endless random Prepare/View/Commit/Remove work;
the test SIGKILLs it at a random moment.  The other scenarios set up some state, then SIGKILL
themselves at one precise point of an operation (after the directory rename of Remove, inside
the Commit transaction...), so each dangerous point is hit every run.  The worker prints READY
when the random work starts.
"""

from __future__ import annotations

import os
import random
import signal
import sys
from typing import Any

from cimsnap.snapshotter import snapshotter as snapshotter_module
from cimsnap.snapshotter.metastore import Transaction
from cimsnap.snapshotter.model import LABEL_ROOTFS_SIZE_BYTES, Kind
from cimsnap.snapshotter.snapshotter import CimFSSnapshotter


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def layers(sn: CimFSSnapshotter, prefix: str, count: int) -> str:
    parent = ""
    for i in range(count):
        key = f"extract-{prefix}{i}"
        sn.prepare(key, parent)
        (sn.layout.snapshot_dir(_snapshot_id(sn, key)) / "layer-file").write_bytes(b"x" * 100)
        sn.commit(f"{prefix}{i}", key)
        parent = f"{prefix}{i}"
    return parent


def random_work(sn: CimFSSnapshotter, rng: random.Random) -> None:
    n = 0
    print("READY", flush=True)
    while True:
        n += 1
        names = {i.name: i for i in sn.walk()}
        committed = [k for k, i in names.items() if i.kind is Kind.COMMITTED]
        # base0 and base1 are never removed: the next round starts from base1 (main() cannot
        # make it again while base0 is there), and each round must leave committed layers.
        leaves = [
            k
            for k in names
            if k not in ("base0", "base1") and not any(i.parent == k for i in names.values())
        ]
        choice = rng.random()
        try:
            if choice < 0.2 or not committed:
                key = f"extract-r{os.getpid()}-{n}"
                sn.prepare(key, rng.choice(committed) if committed and rng.random() < 0.7 else "")
                sn.commit(f"layer-{os.getpid()}-{n}", key)
            elif choice < 0.55:
                labels = {LABEL_ROOTFS_SIZE_BYTES: str(11 << 30)} if rng.random() < 0.1 else {}
                sn.prepare(f"ctr-{os.getpid()}-{n}", rng.choice(committed), labels)
            elif choice < 0.65:
                sn.view(f"view-{os.getpid()}-{n}", rng.choice(committed))
            elif leaves:
                sn.remove(rng.choice(leaves))
        except Exception as err:  # a race with nobody: every error here is a bug
            print(f"ERROR {type(err).__name__}: {err}", flush=True)
            raise


def kill_after(obj: Any, name: str, when: Any = None) -> None:
    """Replace ``obj.name`` by a wrapper that runs it, then SIGKILLs the process."""
    real = getattr(obj, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        if when is None or when(*args, **kwargs):
            die()
        return result

    setattr(obj, name, wrapper)


def main(root: str, scenario: str, seed: int) -> None:
    rng = random.Random(seed)
    if scenario.startswith("template-"):
        from cimsnap.scratch import template

        if scenario == "template-mid-base":  # formatted, not yet linked into place
            from cimsnap.scratch import format as format_module

            kill_after(format_module, "format_scratch_device")
        elif scenario == "template-after-base":  # the base is in place, the child is not
            kill_after(template.Template, "_create_base")
        CimFSSnapshotter(root)
        return
    fast = scenario.endswith("-fast")  # --durability fast: no fsyncs, still kill-safe
    scenario = scenario.removesuffix("-fast")
    sn = CimFSSnapshotter(root, durable=not fast)
    existing = {i.name for i in sn.walk()}
    top = "base1" if "base1" in existing else layers(sn, "base", 2)  # a later random round
    if "ctr-victim" not in existing:
        sn.prepare("ctr-victim", top)
    if scenario == "random":
        random_work(sn, rng)
    elif scenario == "remove-after-rename":
        kill_after(snapshotter_module.os, "rename", lambda src, dst: "rm-" in str(dst))
        sn.remove("ctr-victim")
    elif scenario == "remove-before-delete":
        kill_after(snapshotter_module.cimfiles, "destroy_cim")
        sn.remove("ctr-victim")
    elif scenario == "prepare-after-copy":
        kill_after(snapshotter_module.CimFSSnapshotter, "_copy")
        sn.prepare("ctr-new", top)
    elif scenario == "prepare-mid-copy":
        from cimsnap.scratch import copy as copy_module

        kill_after(copy_module, "_sparse_copy")
        sn.allow_reflink = False
        sn.prepare("ctr-new", top)
    elif scenario == "commit-in-transaction":
        kill_after(Transaction, "commit_active")
        sn.prepare("extract-new", top)
        sn.commit("new-layer", "extract-new")
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    raise SystemExit("the kill point was not reached")


def _snapshot_id(sn: CimFSSnapshotter, key: str) -> str:
    with sn.ms.transaction() as tx:
        return tx.get_info(key)[0]


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
