"""VHDX engine throughput against qemu-img, measured side by side in one run.

The same N MiB of random data (``CIMSNAP_BENCH_VHDX_MIB``, default 256) go raw -> VHDX and
VHDX -> raw through the engine (``import_raw``/``export_raw``, and streamed in 4 MiB pieces
through ``VhdxDisk.write_at``/``read_at``) and through ``qemu-img convert``; both sides write
dynamic VHDX with 1 MiB blocks.  Durable engine writes (two fsyncs per metadata commit) are
compared with ``qemu-img convert -t writeback``, which flushes around its metadata log writes
too; everything else with qemu-img's default (``cache=unsafe``: no flush at all).
Each measurement is the best of ``CIMSNAP_BENCH_VHDX_ROUNDS`` (default 3)
alternating runs.  Goal: the engine at least 0.5x qemu-img's throughput.  The engine also
creates and opens small differencing disks, as the snapshotter does for every container.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import bench_line, peak_rss_mib, print_table
from cimsnap.formats import vhdx

MiB = 1 << 20
CHUNK = 4 * MiB


def _best(fn: Callable[[], object], rounds: int, cleanup: Callable[[], None]) -> float:
    best = float("inf")
    for _ in range(rounds):
        cleanup()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _rm(*paths: Path) -> Callable[[], None]:
    def clean() -> None:
        for p in paths:
            p.unlink(missing_ok=True)

    return clean


def _qemu(*args: str | Path) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


def _stream_write(raw: Path, out: Path, size: int, durable: bool) -> None:
    vhdx.create(out, size)
    with vhdx.open_disk(out, writable=True, durable=durable) as disk, raw.open("rb") as src:
        offset = 0
        while chunk := src.read(CHUNK):
            disk.write_at(offset, chunk)
            offset += len(chunk)
        disk.flush()


def _stream_read(image: Path, out: Path) -> None:
    with vhdx.open_disk(image) as disk, out.open("wb") as dst:
        for offset in range(0, disk.size, CHUNK):
            dst.write(disk.read_at(offset, min(CHUNK, disk.size - offset)))
        dst.flush()
        os.fsync(dst.fileno())


def _same(a: Path, b: Path) -> bool:
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            x, y = fa.read(CHUNK), fb.read(CHUNK)
            if x != y:
                return False
            if not x:
                return True


def main() -> None:
    mib = int(os.environ.get("CIMSNAP_BENCH_VHDX_MIB", "256"))
    rounds = int(os.environ.get("CIMSNAP_BENCH_VHDX_ROUNDS", "3"))
    if shutil.which("qemu-img") is None:
        print("qemu-img is not installed: no baseline (./run.sh bench installs it)")
        return
    size = mib * MiB
    with tempfile.TemporaryDirectory(prefix="bench-vhdx-") as tmp:
        d = Path(tmp)
        raw = d / "in.raw"
        with raw.open("wb") as f:  # in pieces, so the data never sits in this process whole
            for _ in range(0, size, CHUNK):
                f.write(os.urandom(CHUNK))
        ours, theirs, streamed = d / "ours.vhdx", d / "qemu.vhdx", d / "stream.vhdx"
        out_ours, out_theirs, out_stream = d / "ours.raw", d / "qemu.raw", d / "stream.raw"
        convert = ["convert", "-f", "raw", "-O", "vhdx", "-o", "subformat=dynamic,block_size=1M"]

        t_import = _best(lambda: vhdx.import_raw(raw, ours), rounds, _rm(ours))
        t_qimport = _best(lambda: _qemu(*convert, raw, theirs), rounds, _rm(theirs))
        t_qsafe = _best(
            lambda: _qemu(*convert, "-t", "writeback", raw, theirs), rounds, _rm(theirs)
        )
        t_fast = _best(lambda: _stream_write(raw, streamed, size, False), rounds, _rm(streamed))
        vhdx.check(streamed)
        t_durable = _best(lambda: _stream_write(raw, streamed, size, True), rounds, _rm(streamed))
        vhdx.check(streamed)
        t_export = _best(lambda: vhdx.export_raw(ours, out_ours), rounds, _rm(out_ours))
        t_qexport = _best(
            lambda: _qemu("convert", "-f", "vhdx", "-O", "raw", ours, out_theirs),
            rounds,
            _rm(out_theirs),
        )
        t_sread = _best(lambda: _stream_read(ours, out_stream), rounds, _rm(out_stream))
        for out in (out_ours, out_theirs, out_stream):
            assert _same(out, raw), f"{out.name} differs from the input"
        vhdx.check(ours)

        # The snapshotter's per-container operations on a 20 GiB scratch template.
        base = d / "blank-base.vhdx"
        vhdx.create(base, 20 << 30)
        n = 200
        t0 = time.perf_counter()
        for i in range(n):
            vhdx.create_differencing(d / f"c{i}.vhdx", base)
        t_diff = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        for i in range(n):
            vhdx.create_differencing(d / f"n{i}.vhdx", base, durable=False)
        t_diff_nosync = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        for i in range(n):
            with vhdx.open_disk(d / f"c{i}.vhdx"):
                pass
        t_open = (time.perf_counter() - t0) / n

    def mbps(t: float) -> float:
        return mib / t

    cases = [
        # metric, direction, engine path, engine seconds, qemu-img command, qemu-img seconds
        ("vhdx_import_raw_MBps", "raw -> vhdx", "import_raw", t_import, "convert", t_qimport),
        ("vhdx_write_at_nosync_MBps", "raw -> vhdx", "write_at, durable=False", t_fast,
         "convert", t_qimport),
        ("vhdx_write_at_durable_MBps", "raw -> vhdx", "write_at, durable", t_durable,
         "convert -t writeback", t_qsafe),
        ("vhdx_export_raw_MBps", "vhdx -> raw", "export_raw", t_export, "convert", t_qexport),
        ("vhdx_read_at_MBps", "vhdx -> raw", "read_at stream", t_sread, "convert", t_qexport),
    ]  # fmt: skip
    print_table(
        f"VHDX throughput, {mib} MiB of random data, best of {rounds} (MB/s = MiB/s)",
        ["direction", "engine path", "engine MB/s", "qemu-img", "qemu-img MB/s", "ratio"],
        [(c[1], c[2], mbps(c[3]), c[4], mbps(c[5]), c[5] / c[3]) for c in cases],
    )
    print_table(
        "Snapshotter operations (20 GiB dynamic parent; durable creation fsyncs file and dir)",
        ["operation", "ms"],
        [
            ("create_differencing", t_diff * 1000),
            ("create_differencing, durable=False", t_diff_nosync * 1000),
            ("open_disk (child + parent)", t_open * 1000),
        ],
    )
    peak = peak_rss_mib()
    print(f"\npeak RSS of this process: {peak:.1f} MiB (data size {mib} MiB)")
    for metric, _direction, _path, engine_t, _command, qemu_t in cases:
        bench_line(
            metric,
            mbps(engine_t),
            "MB/s",
            baseline=mbps(qemu_t),
            goal=">= 0.5x qemu-img",
            met=qemu_t / engine_t >= 0.5,
        )
    bench_line("vhdx_create_differencing_ms", t_diff * 1000, "ms")
    bench_line("vhdx_create_differencing_nosync_ms", t_diff_nosync * 1000, "ms")
    bench_line("vhdx_open_child_ms", t_open * 1000, "ms")
    bench_line("vhdx_peak_rss_MiB", peak, "MiB", goal="bounded (independent of data size)")
