"""Snapshotter benchmark: container scratch Prepare with one shared template vs the alternatives.

1. Prepare latency (p50/p99) of a container snapshot: in-process and over gRPC, against the
   alternative the seed rejected (copying the formatted ``blank-base.vhdx`` itself for every
   container, as a sparse copy and as Windows' plain ``io.Copy``), and against wcifs mode
   (a template pair per base layer);
2. 100 containers over 10 base layers: total time and allocated bytes, cimfs vs wcifs mode
   (wcifs pays for formatting a template per base layer);
3. Prepare latency with a 10 GiB and a 1 TiB template (must not grow with the size).

Goals: p50 < 2 ms in-process, < 5 ms over gRPC; each sandbox allocates < 64 KiB.
``CIMSNAP_BENCH_N`` sets the number of Prepare samples per row (default 200).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.common import bench_line, percentile, print_table
from cimsnap.scratch import template as template_module
from cimsnap.service.client import SnapshotsClient
from cimsnap.service.server import SnapshotterServer
from cimsnap.snapshotter.diskusage import disk_usage
from cimsnap.snapshotter.snapshotter import CimFSSnapshotter

GIB = 1 << 30
SAMPLES = int(os.environ.get("CIMSNAP_BENCH_N", "200"))


def commit_base(prepare: Callable[..., object], commit: Callable[..., object], name: str) -> None:
    prepare(f"extract-{name}")
    commit(name, f"extract-{name}")


def time_prepares(prepare: Callable[[str, str], object], parent: str, n: int) -> list[float]:
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        prepare(f"c{i}", parent)
        samples.append(time.perf_counter() - t0)
    return samples


@contextlib.contextmanager
def copy_base_instead() -> Iterator[None]:
    """The rejected alternative: every container gets a copy of the formatted base itself."""
    original = template_module.Template.copy_lock

    @contextlib.contextmanager
    def base_lock(self: template_module.Template) -> Iterator[Path]:
        with original(self):
            yield self.base

    template_module.Template.copy_lock = base_lock  # type: ignore[method-assign]
    try:
        yield
    finally:
        template_module.Template.copy_lock = original  # type: ignore[method-assign]


@contextlib.contextmanager
def plain_io_copy() -> Iterator[None]:
    """Copy like Go's io.Copy on Windows: every byte, holes written out."""
    from cimsnap.snapshotter import snapshotter as module

    original = module.CimFSSnapshotter._copy

    def full_copy(self: CimFSSnapshotter, source: Path, dest: Path) -> None:
        with open(source, "rb") as src, open(dest, "xb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())

    module.CimFSSnapshotter._copy = full_copy  # type: ignore[method-assign]
    try:
        yield
    finally:
        module.CimFSSnapshotter._copy = original  # type: ignore[method-assign]


@contextlib.contextmanager
def copy_base_like_windows() -> Iterator[None]:
    with copy_base_instead(), plain_io_copy():
        yield


def row(name: str, samples: list[float], allocated: int | None = None) -> list[object]:
    p50, p99 = percentile(samples, 50) * 1e3, percentile(samples, 99) * 1e3
    alloc = "" if allocated is None else f"{allocated / 1024:.0f}"
    return [name, len(samples), round(p50, 3), round(p99, 3), alloc]


def sandbox_allocated(sn: CimFSSnapshotter, key: str) -> int:
    return disk_usage(Path(sn.mounts(key)[0].source) / "sandbox.vhdx").size


def prepare_latency(work: Path, template_src: Path) -> dict[str, tuple[float, int]]:
    results: dict[str, tuple[float, int]] = {}
    rows = []

    def seeded_root(name: str) -> Path:
        root = work / name
        root.mkdir()
        # the formatted base only; the snapshotter makes blank.vhdx beside it at start-up
        subprocess.run(
            ["cp", "--sparse=always", template_src / "blank-base.vhdx", root], check=True
        )
        return root

    cases: list[tuple[str, str, Callable[[], contextlib.AbstractContextManager[None]]]] = [
        ("cimfs: copy blank.vhdx (this project)", "cimfs", contextlib.nullcontext),
        ("rejected: copy blank-base.vhdx (sparse)", "cimfs", copy_base_instead),
        ("rejected: copy blank-base.vhdx (io.Copy)", "cimfs", copy_base_like_windows),
        ("Windows-like: copy blank.vhdx (io.Copy)", "cimfs", plain_io_copy),
        ("wcifs: per-base-layer blank.vhdx", "wcifs", contextlib.nullcontext),
    ]
    for label, mode, patch in cases:
        root = seeded_root(label.split(":")[0].replace(" ", "_") + str(len(rows)))
        with CimFSSnapshotter(root, mode=mode) as sn, patch():
            commit_base(sn.prepare, sn.commit, "base")
            sn.prepare("warm-up", "base")  # wcifs: makes the base layer's pair first
            samples = time_prepares(sn.prepare, "base", SAMPLES)
            alloc = sandbox_allocated(sn, "c0")
        rows.append(row(label, samples, alloc))
        results[label] = (percentile(samples, 50), alloc)

    root = seeded_root("grpc")
    sn = CimFSSnapshotter(root)
    server = SnapshotterServer(sn, work / "s.sock", workers=4)
    server.start()
    try:
        with SnapshotsClient(str(server.address)) as client:
            client.wait_ready()
            commit_base(client.prepare, client.commit, "base")
            client.prepare("warm-up", "base")
            samples = time_prepares(client.prepare, "base", SAMPLES)
        alloc = sandbox_allocated(sn, "c0")
    finally:
        server.stop()
    rows.insert(1, row("cimfs over gRPC (unix socket)", samples, alloc))
    results["grpc"] = (percentile(samples, 50), alloc)
    print_table(
        "1. container scratch Prepare latency",
        ["method", "n", "p50 ms", "p99 ms", "sandbox KiB"],
        rows,
    )
    return results


def many_containers(work: Path, template_src: Path) -> dict[str, tuple[float, int]]:
    results = {}
    rows = []
    for mode in ("cimfs", "wcifs"):
        root = work / f"many-{mode}"
        t0 = time.perf_counter()
        with CimFSSnapshotter(root, mode=mode) as sn:  # cimfs makes its one template here
            for b in range(10):
                commit_base(sn.prepare, sn.commit, f"base{b}")
            for c in range(100):
                sn.prepare(f"ctr{c}", f"base{c % 10}")
        elapsed = time.perf_counter() - t0
        usage = disk_usage(root / "snapshots").size
        if mode == "cimfs":
            usage += disk_usage(root / "blank-base.vhdx").size
            usage += disk_usage(root / "blank.vhdx").size
        results[mode] = (elapsed, usage)
        rows.append([mode, round(elapsed, 3), f"{usage / 1024:.0f}", f"{usage / 100 / 1024:.1f}"])
    print_table(
        "2. 100 containers over 10 base layers (templates included)",
        ["mode", "total s", "allocated KiB", "KiB per container"],
        rows,
    )
    return results


def template_size_effect(work: Path) -> dict[int, float]:
    results = {}
    rows = []
    for size in (10 * GIB, 1 << 40):
        root = work / f"size-{size}"
        t0 = time.perf_counter()
        with CimFSSnapshotter(root, template_size=size) as sn:
            made = time.perf_counter() - t0
            commit_base(sn.prepare, sn.commit, "base")
            sn.prepare("warm-up", "base")
            samples = time_prepares(sn.prepare, "base", SAMPLES)
            alloc = sandbox_allocated(sn, "c0")
        results[size] = percentile(samples, 50)
        rows.append(
            [
                f"{size // GIB} GiB",
                round(made, 3),
                round(percentile(samples, 50) * 1e3, 3),
                round(percentile(samples, 99) * 1e3, 3),
                f"{alloc / 1024:.0f}",
            ]
        )
    print_table(
        "3. Prepare latency by template size",
        ["template", "template made s", "p50 ms", "p99 ms", "sandbox KiB"],
        rows,
    )
    return results


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="cs-bench-", dir="/tmp") as tmp:
        work = Path(tmp)
        template_src = work / "template"
        template_module.ensure_template(template_src)
        latency = prepare_latency(work, template_src)
        many = many_containers(work, template_src)
        sizes = template_size_effect(work)

    ours_p50, ours_alloc = latency["cimfs: copy blank.vhdx (this project)"]
    base_p50, base_alloc = latency["rejected: copy blank-base.vhdx (io.Copy)"]
    grpc_p50, _ = latency["grpc"]
    wcifs_p50, _ = latency["wcifs: per-base-layer blank.vhdx"]
    bench_line(
        "prepare_p50_in_process",
        ours_p50 * 1e3,
        "ms",
        baseline=base_p50 * 1e3,
        goal="< 2 ms",
        met=ours_p50 < 2e-3,
    )
    bench_line(
        "prepare_p50_grpc",
        grpc_p50 * 1e3,
        "ms",
        baseline=wcifs_p50 * 1e3,
        goal="< 5 ms",
        met=grpc_p50 < 5e-3,
    )
    bench_line(
        "sandbox_allocated",
        ours_alloc / 1024,
        "KiB",
        baseline=base_alloc / 1024,
        goal="< 64 KiB",
        met=ours_alloc < 64 * 1024,
    )
    bench_line(
        "hundred_containers_time",
        many["cimfs"][0],
        "s",
        baseline=many["wcifs"][0],
        goal="less than wcifs",
        met=many["cimfs"][0] < many["wcifs"][0],
    )
    bench_line(
        "hundred_containers_allocated",
        many["cimfs"][1] / 1024,
        "KiB",
        baseline=many["wcifs"][1] / 1024,
        goal="less than wcifs",
        met=many["cimfs"][1] < many["wcifs"][1],
    )
    big, small = sizes[1 << 40], sizes[10 * GIB]
    bench_line(
        "prepare_p50_1tib_template",
        big * 1e3,
        "ms",
        baseline=small * 1e3,
        goal="same as 10 GiB (ratio < 1.5)",
        met=big < 1.5 * small,
    )


if __name__ == "__main__":
    main()
