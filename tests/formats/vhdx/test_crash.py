"""Crash safety: after an interruption at any point, the image passes ``check`` and every
sector reads as it was before or after the interrupted write.

Two ways of interrupting:

* Recorded I/O: every pwrite/truncate/fsync the engine issues is recorded once; for each point
  in that sequence the file is rebuilt as a crash there would leave it: everything issued
  (a killed process: the page cache survives), with the last write torn, or what the last
  fsync made durable with each page written since then either lost or not (power loss).
* A real process killed with SIGKILL at random moments while it writes.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cimsnap.formats.vhdx import check, create, create_differencing, open_disk
from cimsnap.formats.vhdx.fileio import FileIO
from tests.formats.vhdx.helpers import pattern

MiB = 1 << 20
SECTOR = 512
PAGE = 4096


@dataclass
class Op:
    kind: str  # "write", "truncate", "fsync", "begin", "end"
    offset: int = 0
    data: bytes = b""
    index: int = 0  # write_at number for begin/end


class Recorder:
    """Records the I/O the engine issues on one file, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
        self.ops: list[Op] = []
        target = os.path.realpath(path)
        real_pwrite, real_truncate, real_fsync = FileIO.pwrite, FileIO.truncate, FileIO.fsync

        def pwrite(io: FileIO, offset: int, data: bytes | bytearray | memoryview) -> None:
            if os.path.realpath(io.path) == target:
                self.ops.append(Op("write", offset, bytes(data)))
            real_pwrite(io, offset, data)

        def truncate(io: FileIO, size: int) -> None:
            if os.path.realpath(io.path) == target:
                self.ops.append(Op("truncate", size))
            real_truncate(io, size)

        def fsync(io: FileIO) -> None:
            if os.path.realpath(io.path) == target:
                self.ops.append(Op("fsync"))
            real_fsync(io)

        monkeypatch.setattr(FileIO, "pwrite", pwrite)
        monkeypatch.setattr(FileIO, "truncate", truncate)
        monkeypatch.setattr(FileIO, "fsync", fsync)


def _apply(image: bytearray, op: Op, limit: int | None = None) -> None:
    if op.kind == "write":
        data = op.data if limit is None else op.data[:limit]
        end = op.offset + len(data)
        if end > len(image):
            image.extend(bytes(end - len(image)))
        image[op.offset : end] = data
    elif op.kind == "truncate":
        if op.offset < len(image):
            del image[op.offset :]
        else:
            image.extend(bytes(op.offset - len(image)))


class History:
    """The writes made, to tell which values each sector may hold after a crash."""

    def __init__(self, initial: bytes) -> None:
        self.initial = initial
        self.writes: list[tuple[int, int, bytes]] = []  # (write index, offset, data)
        self._models: dict[int, bytes] = {}

    def write(self, index: int, offset: int, data: bytes) -> None:
        self.writes.append((index, offset, data))

    def model(self, upto: int) -> bytes:
        """The disk after writes 1..upto."""
        if upto not in self._models:
            model = bytearray(self.initial)
            for index, offset, data in self.writes:
                if index <= upto:
                    model[offset : offset + len(data)] = data
            if len(self._models) > 4:
                self._models.pop(next(iter(self._models)))
            self._models[upto] = bytes(model)
        return self._models[upto]

    def candidates(self, low: int, high: int) -> dict[int, set[bytes]]:
        """Sector -> values it may hold besides its value after ``low`` writes."""
        out: dict[int, set[bytes]] = {}
        model = bytearray(self.model(low))
        for index, offset, data in self.writes:
            if low < index <= high:
                model[offset : offset + len(data)] = data
                for s in range(offset // SECTOR, -(-(offset + len(data)) // SECTOR)):
                    out.setdefault(s, set()).add(bytes(model[s * SECTOR : (s + 1) * SECTOR]))
        return out


def _verify(path: Path, history: History, low: int, high: int, size: int) -> None:
    check(path)
    with open_disk(path) as disk:
        actual = disk.read_at(0, size)
    expected = history.model(low)
    if actual == expected:
        return
    candidates = history.candidates(low, high)
    step = 64 * 1024
    for chunk in range(0, size, step):
        if actual[chunk : chunk + step] == expected[chunk : chunk + step]:
            continue
        for sector in range(chunk // SECTOR, (chunk + step) // SECTOR):
            got = actual[sector * SECTOR : (sector + 1) * SECTOR]
            if got == expected[sector * SECTOR : (sector + 1) * SECTOR]:
                continue
            assert got in candidates.get(sector, ()), (
                f"sector {sector} holds neither an old nor a new value (writes {low}..{high})"
            )


def _run_workload(
    monkeypatch: pytest.MonkeyPatch,
    path: Path,
    size: int,
    writes: list[tuple[int, bytes]],
    extra: Callable[[object], None] | None = None,
    durable: bool = True,
) -> tuple[bytes, Recorder, History]:
    with open_disk(path) as disk:
        initial = disk.read_at(0, size)
    file_before = path.read_bytes()
    recorder = Recorder(monkeypatch, path)
    history = History(initial)
    with open_disk(path, writable=True, durable=durable) as disk:
        for i, (offset, data) in enumerate(writes, start=1):
            recorder.ops.append(Op("begin", index=i))
            disk.write_at(offset, data)
            history.write(i, offset, data)
            recorder.ops.append(Op("end", index=i))
            if i % 7 == 0:
                disk.flush()
        if extra is not None:
            extra(disk)
    monkeypatch.undo()
    return file_before, recorder, history


def _power_loss(durable: bytes, image: bytes, pending: list[Op], rng: random.Random) -> bytes:
    length = len(image) if rng.random() < 0.5 else len(durable)
    lost = bytearray(durable[:length]) + bytearray(max(0, length - len(durable)))
    pages: set[int] = set()
    for op in pending:
        if op.kind == "write":
            pages.update(range(op.offset // PAGE, -(-(op.offset + len(op.data)) // PAGE)))
    for page in pages:
        start = page * PAGE
        if start >= length:
            continue
        source = image if rng.random() < 0.5 else durable
        chunk = source[start : min(start + PAGE, length)]
        chunk += bytes(min(start + PAGE, length) - start - len(chunk))
        lost[start : start + len(chunk)] = chunk
    return bytes(lost)


def _crash_images(
    file_before: bytes, ops: list[Op], rng: random.Random, power_loss: bool = True
) -> Iterator[tuple[bytes, int, int]]:
    """(image, lowest write index, highest write index) for a crash before each operation."""
    image = bytearray(file_before)
    durable = bytearray(file_before)
    pending: list[Op] = []
    completed = 0
    completed_at_sync = 0
    in_flight = 0
    for n, op in enumerate(ops):
        if op.kind == "begin":
            in_flight = op.index
            continue
        if op.kind == "end":
            completed = op.index
            in_flight = 0
            continue
        high = in_flight or completed
        if n % 2:  # killed process: everything issued is in the page cache...
            yield bytes(image), completed, high
        elif op.kind == "write" and len(op.data) > SECTOR:
            # ...or killed in the middle of this write, torn at a sector boundary of the file
            # (the kernel copies whole pages).
            torn = bytearray(image)
            cut = rng.randrange(op.offset + 1, op.offset + len(op.data))
            cut -= cut % SECTOR
            if cut > op.offset:
                _apply(torn, op, cut - op.offset)
            yield bytes(torn), completed, high
        # Power loss: every 4 KiB page written since the last fsync reached the disk or not
        # (the kernel writes back whole pages, in any order), and so did the file size.
        if power_loss:
            yield _power_loss(durable, image, pending, rng), completed_at_sync, high
        _apply(image, op)
        if op.kind == "fsync":
            durable = bytearray(image)
            pending = []
            completed_at_sync = completed
        else:
            pending.append(op)
    yield bytes(image), completed, completed


def _writes(rng: random.Random, size: int, count: int, max_len: int) -> list[tuple[int, bytes]]:
    out = []
    for _ in range(count):
        length = rng.randrange(1, max_len)
        offset = rng.randrange(0, size - length)
        out.append((offset, pattern(rng.randrange(1 << 30), length)))
    return out


@pytest.mark.parametrize("kind", ["dynamic", "differencing", "differencing, durable=False"])
def test_crash_at_every_io_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """durable=False drops the fsyncs, so only a killed process (not power loss) is modelled."""
    durable = not kind.endswith("durable=False")
    size = 4 * MiB
    rng = random.Random(kind)
    path = tmp_path / "d.vhdx"
    if kind.startswith("differencing"):
        base = tmp_path / "base.vhdx"
        create(base, size)
        with open_disk(base, writable=True) as disk:
            for offset, data in _writes(rng, size, 8, MiB):
                disk.write_at(offset, data)
        create_differencing(path, base)
    else:
        create(path, size)
    writes = _writes(rng, size, 14, 200_000)
    file_before, recorder, history = _run_workload(monkeypatch, path, size, writes, durable=durable)
    fsyncs = [i for i, op in enumerate(recorder.ops) if op.kind == "fsync"]
    if not durable:  # only flush() and close() sync
        assert len(fsyncs) <= len(writes) // 7 + 3
    crashed = tmp_path / "crashed.vhdx"
    n = 0
    images = _crash_images(file_before, recorder.ops, rng, power_loss=durable)
    for n, (image, low, high) in enumerate(images):
        crashed.unlink(missing_ok=True)
        crashed.write_bytes(image)
        _verify(crashed, history, low, high, size)
        if n % 9 == 0:  # a writable open replays the log in place: same contents after
            with open_disk(crashed, writable=True):
                pass
            _verify(crashed, history, low, high, size)
    assert n > 40  # crash points covered


def test_crash_during_resize_with_bat_relocation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = 4 * MiB
    path = tmp_path / "d.vhdx"
    create(path, size)
    with open_disk(path, writable=True) as disk:
        disk.write_at(MiB, pattern(1, MiB))
    new_size = 200 << 30  # 204800 BAT entries: more than the 1 MiB BAT region holds
    file_before, recorder, history = _run_workload(
        monkeypatch,
        path,
        size,
        [(3000, pattern(2, 5000))],
        extra=lambda disk: disk.resize(new_size),  # type: ignore[attr-defined]
    )
    images = _crash_images(file_before, recorder.ops, random.Random(1))
    crashed = tmp_path / "crashed.vhdx"
    sizes = set()
    for image, low, high in images:
        crashed.unlink(missing_ok=True)
        crashed.write_bytes(image)
        _verify(crashed, history, low, max(high, 1), size)
        with open_disk(crashed) as disk:
            sizes.add(disk.size)
            assert disk.read_at(size, 4096) == bytes(4096) if disk.size > size else True
    assert sizes == {size, new_size}  # every crash leaves one size or the other


CHILD = textwrap.dedent(
    """
    import random, sys
    from cimsnap.formats.vhdx import open_disk
    path, seed, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    with open_disk(path, writable=True) as disk:
        for i in range(1, 10_000):
            length = rng.randrange(1, 400_000)
            offset = rng.randrange(0, size - length)
            disk.write_at(offset, random.Random(i * 7919 + seed).randbytes(length))
            print(i, flush=True)
    """
)


@pytest.mark.parametrize("kind", ["dynamic", "differencing"])
def test_killed_writer_leaves_old_or_new(tmp_path: Path, kind: str) -> None:
    size = 8 * MiB
    rng = random.Random(99)
    for round_ in range(3):
        work = tmp_path / f"r{round_}"
        work.mkdir()
        path = work / "d.vhdx"
        if kind == "differencing":
            create(work / "base.vhdx", size)
            with open_disk(work / "base.vhdx", writable=True) as disk:
                disk.write_at(0, pattern(round_, size))
            create_differencing(path, work / "base.vhdx")
        else:
            create(path, size)
        with open_disk(path) as disk:
            initial = disk.read_at(0, size)
        seed = rng.randrange(1 << 20)
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(seed), str(size)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            target = rng.randrange(3, 25)
            for line in proc.stdout:
                if int(line) >= target:
                    break
            time.sleep(rng.random() * 0.02)
        finally:
            proc.send_signal(signal.SIGKILL)
            rest, _ = proc.communicate(timeout=30)
        done = max([target, *(int(x) for x in rest.split())])
        # Replay the child's writes: done complete, done + 1 possibly in flight.
        history = History(initial)
        child_rng = random.Random(seed)
        for i in range(1, done + 2):
            length = child_rng.randrange(1, 400_000)
            offset = child_rng.randrange(0, size - length)
            history.write(i, offset, random.Random(i * 7919 + seed).randbytes(length))
        _verify(path, history, done, done + 1, size)
