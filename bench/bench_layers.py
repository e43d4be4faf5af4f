"""Layer import (tar -> CimFS layer) against GNU ``tar -x`` of the same file, side by side.

A generated Windows base layer of ``CIMSNAP_BENCH_LAYER_MIB`` MiB (default 1024) in
``CIMSNAP_BENCH_LAYER_FILES`` files (default 20,000; sizes spread like a system image, content
distinct so nothing deduplicates) is imported with ``cimsnap layer import`` and extracted with
``tar -x`` into the same filesystem, alternating, best of ``CIMSNAP_BENCH_ROUNDS`` (default 3).
The import is measured as the layer writer alone (tar -> CIM) and as ``cimsnap layer import``
runs it (also hashing the tar for its diff ID, in a reader thread).  Each side runs in a child
process under GNU time (peak memory); the import's time is measured inside its process
(interpreter start-up excluded), tar's around it.  The import writes durably (the CIM is
fsynced at commit); tar does not sync, so tar followed by ``sync -f`` (syncfs of the working
filesystem) is measured too, as the like-for-like baseline.  Peak memory is also measured on a
layer of a quarter of the size with as many files: it must not grow with the data.

Fairness on a shared machine: everything runs in a fresh ext4 of its own (a sparse image on a
loop device with direct I/O; see ``_private_filesystem``; ``CIMSNAP_BENCH_PRIVATE_FS=0`` or no
root: the host's filesystem), because files other processes deleted recently can make ``tar -x``
several times slower on the host's ext4, which would flatter the import.  Every timed run starts
after a ``sync`` (untimed), so no run pays for the writeback of the one before; tar's extracted
trees are kept until all rounds are done (fresh deletions would slow the next extraction the same
way).  Each run's CPU time (user + system, from GNU time) is shown beside its wall time: when they
differ much, the machine was busy.  The per-entry cost of the import and of reading the tar
alone (the wintar reader, every entry's data read, no CIM) is printed too.

Then a full three-layer image (the big layer zstd-compressed, a gzip and a plain layer on top)
is unpacked end to end with ``cimsnap image unpack`` (digests verified, hives merged, utility VM
set up) and compared with decompressing and extracting the same three layers with zstd, gzip
and tar.  Goals: import >= 0.7x tar's throughput; peak memory < 200 MiB.
``CIMSNAP_BENCH_DIR`` picks the working directory (default: a temporary one in /var/tmp);
``CIMSNAP_BENCH_UNPACK=0`` skips the three-layer unpack (quicker while iterating).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from bench.common import bench_line, print_table

MiB = 1 << 20
PROJECT = Path(__file__).resolve().parent.parent
POOL_BYTES = 64 * MiB

# Runs in the child: import one tar, print the seconds it took (interpreter start-up excluded).
_IMPORT_CHILD = """
import json, sys, time
from pathlib import Path
from cimsnap.layers.apply import import_blob, local_target
from cimsnap.layers.cimlayer import import_cim_layer
t0 = time.perf_counter()
with open(sys.argv[1], "rb") as raw:
    if sys.argv[3] == "digest":  # the CLI's path: also the tar's sha256 (its diff ID)
        entries = import_blob(raw, local_target(Path(sys.argv[2]))).result.entries
    else:  # the layer writer alone: tar -> CIM
        entries = import_cim_layer(raw, Path(sys.argv[2])).entries
print(json.dumps({"seconds": time.perf_counter() - t0, "entries": entries}))
"""


def _sizes(total: int, count: int, rng: random.Random) -> list[int]:
    """File sizes like a system image: most small, a few large; they add up to ``total``."""
    raw = [rng.lognormvariate(0, 1.6) for _ in range(count)]
    scale = total / sum(raw)
    sizes = [max(0, int(r * scale)) for r in raw]
    sizes[0] += total - sum(sizes)
    return sizes


def make_base_layer(path: Path, total: int, count: int, seed: int = 1) -> int:
    """A base layer tar: the test image's hives and Windows skeleton, plus ``count`` files."""
    sys.path.insert(0, str(PROJECT))
    from cimsnap.formats.wintar import WinTarWriter
    from tests.images.builder import base_layer, meta

    rng = random.Random(seed)
    pool = memoryview(rng.randbytes(POOL_BYTES))
    spec = base_layer()
    sizes = _sizes(total, count, rng)
    with open(path, "wb") as out, WinTarWriter(out, stream_data_suffix=True) as writer:
        for op in spec.ops:  # write the skeleton through the builder's own writer logic
            if op.kind == "dir":
                assert op.meta is not None
                writer.add_directory(op.path, op.meta)
            elif op.kind == "file":
                assert op.meta is not None
                writer.add_file(op.path, op.meta, op.data)
                for name, data in op.streams.items():
                    writer.add_stream(op.path, name, data)
            elif op.kind == "link":
                assert op.meta is not None and op.target is not None
                writer.add_hardlink(op.path, op.target, op.meta)
            elif op.kind == "symlink":
                assert op.meta is not None and op.target is not None
                writer.add_symlink(op.path, op.meta, op.target, mount_point=op.mount_point)
        dir_meta, file_meta = meta(0x10), meta(0x20)
        per_dir = 200
        for d in range(-(-count // per_dir)):
            if d == 0:
                writer.add_directory("Files\\Program Files", dir_meta)
            writer.add_directory(f"Files\\Program Files\\pkg{d:04d}", dir_meta)
            for i in range(d * per_dir, min(count, (d + 1) * per_dir)):
                size = sizes[i]
                # Distinct content for every file (an offset and a stamp), so no dedup.
                start = (i * 7919) % max(1, POOL_BYTES - min(size, POOL_BYTES))
                stamp = i.to_bytes(8, "little")
                content = cast(BinaryIO, _Content(pool, start, size, stamp))
                writer.add_file(
                    f"Files\\Program Files\\pkg{d:04d}\\file{i:06d}.bin", file_meta, content, size
                )
    return sum(sizes)


class _Content(io.RawIOBase):
    """``size`` bytes from the pool (wrapping), starting with an 8-byte stamp."""

    def __init__(self, pool: memoryview, start: int, size: int, stamp: bytes) -> None:
        super().__init__()
        self.pool, self.pos, self.left = pool, start, size
        self.head = stamp[: min(8, size)]
        self.left -= len(self.head)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        if self.head:
            n = len(self.head)
            view[:n] = self.head
            self.head = b""
            return n
        n = min(len(view), self.left, len(self.pool) - self.pos)
        if n <= 0:
            if self.left and self.pos >= len(self.pool):
                self.pos = 0
                return self.readinto(buffer)
            return 0
        view[:n] = self.pool[self.pos : self.pos + n]
        self.pos += n
        self.left -= n
        return n


@dataclass
class Run:
    """One timed child process."""

    seconds: float  # wall time (the import: measured inside, without interpreter start-up)
    cpu: float  # user + system seconds of the whole child
    rss: float  # peak resident MiB
    entries: int = 0


def _child(cmd: list[str]) -> tuple[float, float, float, str]:
    """(wall seconds, CPU seconds, peak RSS MiB, stdout) of ``cmd`` run under GNU time.

    GNU time forks the command from its own small process, so the peak is the command's own
    (a child forked from this big benchmark process would inherit its high-water mark).
    """
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    os.sync()  # the previous run's writeback is not this run's work
    with tempfile.NamedTemporaryFile("r", suffix=".time") as stats:
        t0 = time.perf_counter()
        timed = ["/usr/bin/time", "-o", stats.name, "-f", "%M %U %S", *cmd]
        proc = subprocess.run(timed, capture_output=True, env=env)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
        peak_kib, user, system = stats.read().strip().splitlines()[-1].split()
    return wall, float(user) + float(system), int(peak_kib) / 1024, proc.stdout.decode()


def _import(tar: Path, work: Path, mode: str = "writer") -> Run:
    snaps = work / "snapshots"
    shutil.rmtree(snaps, ignore_errors=True)
    snaps.mkdir(parents=True)
    _, cpu, rss, out = _child(
        [sys.executable, "-c", _IMPORT_CHILD, str(tar), str(snaps / "1"), mode]
    )
    report = json.loads(out)
    shutil.rmtree(snaps, ignore_errors=True)
    return Run(report["seconds"], cpu, rss, report["entries"])


def _tar_x(tar: Path, dest: Path, *, durable: bool = False) -> Run:
    """Extract into ``dest`` (new); the caller deletes it once no timed run follows.

    ``durable``: then ``sync -f`` (syncfs of that filesystem), the same promise the import
    makes by fsyncing the CIM at commit.
    """
    dest.mkdir(parents=True)
    extract = ["tar", "--warning=no-unknown-keyword", "-xf", str(tar), "-C", str(dest)]
    if durable:
        extract = ["sh", "-c", '"$@" && sync -f "$0"', str(dest), *extract]
    wall, cpu, rss, _ = _child(extract)
    return Run(wall, cpu, rss)


def _read_tar_only(tar: Path) -> tuple[float, int]:
    """Seconds and entries of reading the tar with the wintar reader alone (data read too)."""
    sys.path.insert(0, str(PROJECT))
    from cimsnap.formats.wintar import WinTarReader

    buffer = bytearray(1 << 20)
    entries = 0
    os.sync()
    t0 = time.perf_counter()
    with open(tar, "rb") as raw:
        for entry in WinTarReader(raw):
            entries += 1
            while entry.size and entry.data.readinto(buffer):
                pass
    return time.perf_counter() - t0, entries


def main() -> None:
    size_mib = int(os.environ.get("CIMSNAP_BENCH_LAYER_MIB", "1024"))
    files = int(os.environ.get("CIMSNAP_BENCH_LAYER_FILES", "20000"))
    rounds = int(os.environ.get("CIMSNAP_BENCH_ROUNDS", "3"))
    unpack = os.environ.get("CIMSNAP_BENCH_UNPACK", "1") != "0"
    private = os.environ.get("CIMSNAP_BENCH_PRIVATE_FS", "1") != "0"
    base_dir = os.environ.get("CIMSNAP_BENCH_DIR")
    base = Path(tempfile.mkdtemp(prefix="cimsnap-bench-layers-", dir=base_dir or "/var/tmp"))
    try:
        with _private_filesystem(base, size_mib, enabled=private) as mounted:
            work = mounted or base
            print(
                f"working in {work} "
                + ("(a fresh ext4 of its own)" if mounted else "(the host's filesystem)")
            )
            _run(work, size_mib, files, rounds, unpack)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def _private_filesystem(base: Path, size_mib: int, *, enabled: bool) -> Iterator[Path | None]:
    """A fresh ext4 on a sparse image in ``base``, on a loop device with direct I/O.

    Both sides run in it, so neither meets what other processes left on the host filesystem:
    on an ext4 without a journal, thousands of recently deleted inodes (anyone's test runs)
    make creating files several times slower for a while, which slowed ``tar -x`` up to 4x
    here and made the ratio meaningless.  Direct I/O: the loop device adds no second page
    cache, so fsync costs what it costs on the disk below.  Needs root, mkfs.ext4 and
    losetup; otherwise (or with ``CIMSNAP_BENCH_PRIVATE_FS=0``) yields None.
    """
    tools = all(shutil.which(tool) for tool in ("mkfs.ext4", "losetup", "mount", "umount"))
    if not enabled or os.geteuid() != 0 or not tools:
        yield None
        return
    image, mountpoint = base / "fs.img", base / "fs"
    with open(image, "wb") as handle:  # sparse: the data, tar's trees, the CIM and slack
        handle.truncate((size_mib * 12 + 4096) * MiB)
    try:
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
        loop = subprocess.run(
            ["losetup", "--direct-io=on", "--show", "-f", str(image)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as err:
        print(f"no private filesystem ({err}); using the host's")
        yield None
        return
    try:
        mountpoint.mkdir()
        mounted = subprocess.run(["mount", loop, str(mountpoint)], capture_output=True)
        if mounted.returncode != 0:
            print(f"no private filesystem ({mounted.stderr.decode().strip()}); using the host's")
            yield None
            return
        try:
            yield mountpoint
        finally:
            os.sync()
            if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)
    finally:
        subprocess.run(["losetup", "-d", loop], capture_output=True)


def _best(runs: list[Run]) -> Run:
    return min(runs, key=lambda run: run.seconds)


def _row(label: str, run: Run, mb: float) -> list[str]:
    per_entry = f"{run.seconds / run.entries * 1e6:.0f}" if run.entries else ""
    cpu = f"{run.cpu:.2f}" if run.cpu else ""
    rss = f"{run.rss:.0f}" if run.rss else ""
    return [label, f"{run.seconds:.2f}", cpu, f"{mb / run.seconds:.0f}", per_entry, rss]


def _run(work: Path, size_mib: int, files: int, rounds: int, unpack: bool) -> None:
    big = work / "layer.tar"
    t0 = time.perf_counter()
    data_bytes = make_base_layer(big, size_mib * MiB, files)
    small = work / "layer-quarter.tar"
    make_base_layer(small, size_mib * MiB // 4, files, seed=2)
    tar_mb = big.stat().st_size / 1e6
    print(
        f"generated {tar_mb:.0f} MB tar ({files} files, {data_bytes / MiB:.0f} MiB of data) "
        f"in {time.perf_counter() - t0:.1f} s"
    )

    imports: list[Run] = []
    digests: list[Run] = []
    tars: list[Run] = []
    synced_tars: list[Run] = []
    reads: list[Run] = []
    for round_number in range(rounds):
        imports.append(_import(big, work))
        tars.append(_tar_x(big, work / f"extract-{round_number}"))
        synced_tars.append(_tar_x(big, work / f"extract-synced-{round_number}", durable=True))
        digests.append(_import(big, work, "digest"))
        seconds, entries = _read_tar_only(big)
        reads.append(Run(seconds, 0.0, 0.0, entries))
    for round_number in range(rounds):
        shutil.rmtree(work / f"extract-{round_number}", ignore_errors=True)
        shutil.rmtree(work / f"extract-synced-{round_number}", ignore_errors=True)
    small_run = _import(small, work, "digest")
    best_import, best_tar, best_digest = _best(imports), _best(tars), _best(digests)
    best_synced_tar = _best(synced_tars)
    ratio = best_tar.seconds / best_import.seconds
    durable_ratio = best_synced_tar.seconds / best_import.seconds
    print_table(
        f"import of a {tar_mb:.0f} MB / {files}-file layer (best of {rounds}; CPU s: user + "
        "system of the whole process)",
        ["", "seconds", "CPU s", "MB/s", "us/entry", "peak MiB"],
        [
            _row("layer import (tar -> CIM)", best_import, tar_mb),
            _row("layer import + diff ID (CLI)", best_digest, tar_mb),
            _row("tar -x (GNU)", best_tar, tar_mb),
            _row("tar -x && sync -f (durable)", best_synced_tar, tar_mb),
            _row("wintar reader alone (no CIM)", _best(reads), tar_mb),
            ["layer import + diff ID, 1/4 data", "", "", "", "", f"{small_run.rss:.0f}"],
        ],
    )
    print(
        "every round, seconds (import / tar -x / tar -x && sync / import + diff ID): "
        + "; ".join(
            f"{i.seconds:.2f} / {t.seconds:.2f} / {st.seconds:.2f} / {d.seconds:.2f}"
            for i, t, st, d in zip(imports, tars, synced_tars, digests, strict=True)
        )
    )
    print(
        f"import / tar throughput: {ratio:.2f}x (goal >= 0.7x); with the diff ID "
        f"{best_tar.seconds / best_digest.seconds:.2f}x; both durable (import / tar -x && sync):"
        f" {durable_ratio:.2f}x"
    )

    peak = max(max(run.rss for run in imports + digests), small_run.rss)
    unpack_seconds = baseline_seconds = 0.0
    if unpack:
        unpack_seconds, unpack_rss, baseline_seconds = _unpack(work, big)
        print_table(
            "three-layer image, end to end",
            ["", "seconds", "peak MiB"],
            [
                [
                    "cimsnap image unpack (verify, import, hives, UVM)",
                    f"{unpack_seconds:.2f}",
                    f"{unpack_rss:.0f}",
                ],
                ["zstd -d | tar -x, gzip -d | tar -x, tar -x", f"{baseline_seconds:.2f}", ""],
            ],
        )
        peak = max(peak, unpack_rss)
    for metric, baseline, goal in (
        ("layer_import_throughput", best_tar, "tar -x"),
        ("layer_import_throughput_durable", best_synced_tar, "tar -x && sync -f (both durable)"),
    ):
        bench_line(
            metric,
            tar_mb / best_import.seconds,
            "MB/s",
            baseline=tar_mb / baseline.seconds,
            goal=f">= 0.7x {goal}",
            met=baseline.seconds / best_import.seconds >= 0.7,
        )
    bench_line(
        "layer_import_us_per_entry",
        best_import.seconds / best_import.entries * 1e6,
        "us",
        goal="informational: the whole import divided by the tar's entries",
        met=None,
    )
    bench_line("layer_import_peak_rss", peak, "MiB", goal="< 200 MiB", met=peak < 200)
    if unpack:
        bench_line(
            "image_unpack_3_layers",
            unpack_seconds,
            "s",
            baseline=baseline_seconds,
            goal="end to end (informational)",
            met=None,
        )


def _unpack(work: Path, big: Path) -> tuple[float, float, float]:
    sys.path.insert(0, str(PROJECT))
    from tests.images.builder import compress, pack_oci_layout, second_layer, third_layer

    layer2, layer3 = second_layer().tar(), third_layer().tar()
    layout_dir = work / "oci"
    # The big layer is compressed by the zstd tool (streaming), then stored as a blob.
    zst = work / "layer.tar.zst"
    subprocess.run(["zstd", "-q", "-1", "-T0", "-f", str(big), "-o", str(zst)], check=True)
    packed = pack_oci_layout(
        layout_dir, [b"", layer2, layer3], compression=["none", "gzip", "none"]
    )
    _replace_first_layer(layout_dir, packed, big, zst)
    root = work / "root"
    wall, _, rss, out = _child(
        [
            sys.executable,
            "-m",
            "cimsnap.cli",
            "image",
            "unpack",
            str(layout_dir),
            "--root",
            str(root),
            "--json",
        ]
    )
    report = json.loads(out)
    assert not any(layer["skipped"] for layer in report["layers"])
    shutil.rmtree(root, ignore_errors=True)
    dest = work / "baseline"
    dest.mkdir()
    (work / "l2.tar.gz").write_bytes(compress(layer2, "gzip"))
    (work / "l3.tar").write_bytes(layer3)
    t0 = time.perf_counter()
    for command in (
        f"zstd -dc {zst} | tar --warning=no-unknown-keyword -xf - -C {dest}",
        f"gzip -dc {work / 'l2.tar.gz'} | tar --warning=no-unknown-keyword -xf - -C {dest}",
        f"tar --warning=no-unknown-keyword -xf {work / 'l3.tar'} -C {dest}",
    ):
        subprocess.run(command, shell=True, check=True, capture_output=True)
    baseline = time.perf_counter() - t0
    shutil.rmtree(dest, ignore_errors=True)
    return wall, rss, baseline


def _replace_first_layer(layout_dir: Path, packed: object, big: Path, zst: Path) -> None:
    """Put the big zstd layer in place of the empty first layer (manifest, config, index)."""
    import hashlib

    def digest_file(path: Path) -> str:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(8 * MiB):
                h.update(chunk)
        return "sha256:" + h.hexdigest()

    blob_digest, diff_id = digest_file(zst), digest_file(big)
    blobs = layout_dir / "blobs" / "sha256"
    shutil.copyfile(zst, blobs / blob_digest[7:])
    index = json.loads((layout_dir / "index.json").read_text())
    manifest_desc = index["manifests"][0]
    manifest = json.loads((blobs / manifest_desc["digest"][7:]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"][7:]).read_bytes())
    config["rootfs"]["diff_ids"][0] = diff_id
    config_bytes = json.dumps(config).encode()
    config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    (blobs / config_digest[7:]).write_bytes(config_bytes)
    manifest["config"].update(digest=config_digest, size=len(config_bytes))
    manifest["layers"][0] = {
        "mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
        "digest": blob_digest,
        "size": zst.stat().st_size,
    }
    manifest_bytes = json.dumps(manifest).encode()
    manifest_digest = "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
    (blobs / manifest_digest[7:]).write_bytes(manifest_bytes)
    manifest_desc.update(digest=manifest_digest, size=len(manifest_bytes))
    (layout_dir / "index.json").write_text(json.dumps(index))


if __name__ == "__main__":
    main()
