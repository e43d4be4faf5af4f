"""The writer's data pipe: ring slots, hashing and writing inline and in the helper process."""

from __future__ import annotations

import errno
import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cimsnap.formats.cim import CimImage, CimWriter, FileMetadata, datapipe
from cimsnap.formats.cim.check import check_object_ids
from cimsnap.formats.cim.datapipe import DataPipe, Slot

PAGE = 4096


@pytest.fixture(params=["inline", "helper"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both places the work can run: inline, or the helper process from the first byte."""
    monkeypatch.setattr(datapipe, "USE_HELPER", request.param == "helper")
    monkeypatch.setattr(datapipe, "HELPER_AFTER_BYTES", 0)
    return str(request.param)


@pytest.fixture
def region(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path / "region", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        yield fd
    finally:
        os.close(fd)


def _fill(pipe: DataPipe, data: bytes) -> Slot:
    slot = pipe.try_alloc(len(data))
    assert slot is not None
    pipe.view[slot.start : slot.start + len(data)] = data
    return slot


def test_ring_wraps_and_reuses_slots_in_order(region: int) -> None:
    pipe = DataPipe(region, ring_bytes=100)
    try:
        a = pipe.try_alloc(40)
        b = pipe.try_alloc(40)
        assert a is not None and b is not None and (a.start, b.start) == (0, 40)
        assert pipe.try_alloc(30) is None  # 20 bytes left at the end, none at the front
        pipe.release(a)
        c = pipe.try_alloc(30)
        assert c is not None and c.start == 0  # wrapped
        assert pipe.try_alloc(15) is None  # only [30, 40) is free
        pipe.release(c)
        assert pipe.try_alloc(15) is None  # c is free, but b (older) still holds the ring
        pipe.release(b)
        d = pipe.try_alloc(100)
        assert d is not None and d.start == 0
    finally:
        pipe.close()


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.integers(1, 64)), max_size=60))
def test_ring_slots_never_overlap(ops: list[tuple[bool, int]]) -> None:
    fd = os.open("/dev/null", os.O_WRONLY)
    pipe = DataPipe(fd, ring_bytes=128)
    try:
        live: list[Slot] = []
        for release, n in ops:
            if release and live:
                pipe.release(live.pop(0))
                continue
            slot = pipe.try_alloc(n)
            if slot is None:
                assert live, "an empty ring must have room for any slot that fits"
                continue
            assert 0 <= slot.start < slot.end <= 128 and slot.end - slot.start == n
            for other in live:
                assert slot.end <= other.start or other.end <= slot.start
            live.append(slot)
        for slot in live:
            pipe.release(slot)
        assert pipe.try_alloc(128) is not None  # everything came back
    finally:
        pipe.close()
        os.close(fd)


def test_hashes_match_hashlib(mode: str, region: int) -> None:
    pipe = DataPipe(region, ring_bytes=1 << 20)
    try:
        objects = [os.urandom(n) for n in (1, 24, 2047, 2048, 5000, 70_000)]
        slots = [_fill(pipe, data) for data in objects]
        job = pipe.hash_batch(list(zip(slots, map(len, objects), strict=True)))
        assert pipe.wait(job) == [hashlib.sha512(d).digest()[:24] for d in objects]
        chunks = [os.urandom(100_000) for _ in range(3)]
        for i, chunk in enumerate(chunks):
            slot = _fill(pipe, chunk)
            pipe.stream_chunk(slot, len(chunk), i * len(chunk), 3 * len(chunk))
            pipe.release(slot)
        assert pipe.wait(pipe.stream_end()) == hashlib.sha512(b"".join(chunks)).digest()[:24]
        assert pipe.wait(pipe.stream_end()) == hashlib.sha512(b"").digest()[:24]  # fresh
        if mode == "inline":
            assert pipe.outstanding == 0  # nothing ever waits
        pipe.drain()
    finally:
        pipe.close()


def test_writes_leave_zero_pages_as_holes(mode: str, region: int, tmp_path: Path) -> None:
    pipe = DataPipe(region, ring_bytes=1 << 20)
    try:
        dense = os.urandom(3 * PAGE + 100)
        holed = os.urandom(PAGE) + bytes(2 * PAGE) + os.urandom(10)
        zeros = bytes(3000)
        objects = [(dense, 0), (holed, 4 * PAGE), (zeros, 8 * PAGE), (b"x" * 2000, 9 * PAGE)]
        slots = [_fill(pipe, data) for data, _ in objects]
        batch = [(s, len(d), at) for s, (d, at) in zip(slots, objects, strict=True)]
        pipe.wait(pipe.write_batch(batch))
        for slot in slots:
            pipe.release(slot)
        pipe.drain()
    finally:
        pipe.close()
    raw = (tmp_path / "region").read_bytes()
    assert raw[: len(dense)] == dense
    assert raw[4 * PAGE : 4 * PAGE + len(holed)] == holed
    assert raw[8 * PAGE : 9 * PAGE] == bytes(PAGE)
    assert raw[9 * PAGE : 9 * PAGE + 2000] == b"x" * 2000
    try:
        hole = os.lseek(region, 5 * PAGE, os.SEEK_HOLE)
    except OSError:
        pytest.skip("the filesystem cannot report holes")
    if hole < os.fstat(region).st_size:  # a filesystem that reports holes at all
        assert hole == 5 * PAGE  # the zero pages of `holed` were never written
        assert os.lseek(region, 5 * PAGE, os.SEEK_DATA) == 7 * PAGE
        assert os.lseek(region, 8 * PAGE, os.SEEK_DATA) == 9 * PAGE  # `zeros`: not written


def test_helper_errors_are_raised(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(datapipe, "HELPER_AFTER_BYTES", 0)
    (tmp_path / "region").write_bytes(b"")
    fd = os.open(tmp_path / "region", os.O_RDONLY)  # writes fail with EBADF
    pipe = DataPipe(fd, ring_bytes=1 << 16)
    try:
        slot = _fill(pipe, os.urandom(5000))
        pipe.wait(pipe.hash_batch([(slot, 5000)]))  # starts the helper
        job = pipe.write_batch([(slot, 5000, 0)])
        with pytest.raises(OSError) as caught:
            pipe.wait(job)
        assert caught.value.errno == errno.EBADF
        with pytest.raises(OSError):  # the pipe stays failed
            pipe.hash_batch([(slot, 5000)])
    finally:
        pipe.close()
        os.close(fd)


def test_a_dead_helper_fails_cleanly(monkeypatch: pytest.MonkeyPatch, region: int) -> None:
    monkeypatch.setattr(datapipe, "HELPER_AFTER_BYTES", 0)
    pipe = DataPipe(region, ring_bytes=1 << 16)
    try:
        slot = _fill(pipe, os.urandom(5000))
        pipe.wait(pipe.hash_batch([(slot, 5000)]))
        process = pipe._process
        assert process is not None
        process.kill()
        process.wait()
        with pytest.raises(OSError, match="helper process ended"):
            pipe.wait(pipe.hash_batch([(slot, 5000)]))
    finally:
        pipe.close()
    assert process.returncode is not None


def test_many_commands_without_reading_replies(
    monkeypatch: pytest.MonkeyPatch, region: int
) -> None:
    """Commands and replies both outgrow their pipes: neither side may block the other."""
    monkeypatch.setattr(datapipe, "HELPER_AFTER_BYTES", 0)
    monkeypatch.setattr(datapipe, "HELPER_BACKLOG", 1 << 40)  # never fall back to inline
    count = 40_000  # 32-byte commands and replies: more than a 1 MiB pipe
    pipe = DataPipe(region, ring_bytes=count)
    try:
        slots = [_fill(pipe, bytes([i % 251])) for i in range(count)]
        jobs = [pipe.hash_batch([(slot, 1)]) for slot in slots]
        pipe.drain()
        assert pipe.outstanding == 0
        for i in (0, 1, count - 1):
            assert jobs[i].result == [hashlib.sha512(bytes([i % 251])).digest()[:24]]
    finally:
        pipe.close()


def test_writer_with_helper_commits_and_aborts_cleanly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(datapipe, "HELPER_AFTER_BYTES", 0)
    files = {f"f{i}": os.urandom(1000 + 7919 * i) for i in range(40)}
    writer = CimWriter.create(tmp_path / "t.cim")
    for name, data in files.items():
        writer.add(name, FileMetadata(), io.BytesIO(data))
    writer.add("big", FileMetadata(), io.BytesIO(files["f3"] * 1000))  # streamed
    pipe = writer._pipe
    assert pipe is not None and pipe._process is not None
    process = pipe._process
    writer.commit()
    assert process.returncode is not None  # the helper is gone with the writer
    with CimImage.open(tmp_path / "t.cim") as image:
        for name, data in files.items():
            assert image.read(name) == data
        assert image.read("big") == files["f3"] * 1000
        assert check_object_ids(image) == []

    other = tmp_path / "other"
    other.mkdir()
    writer = CimWriter.create(other / "t.cim")
    for name, data in files.items():
        writer.add(name, FileMetadata(), io.BytesIO(data))
    pipe = writer._pipe
    assert pipe is not None and pipe._process is not None
    process = pipe._process
    writer.abort()
    assert process.returncode is not None
    assert list(other.iterdir()) == []


class _InlineThread:
    """A stand-in for threading.Thread that runs its target in start() (deterministic)."""

    def __init__(self, target: Any, args: tuple[Any, ...], name: str) -> None:
        self.target, self.args = target, args

    def start(self) -> None:
        self.target(*self.args)

    def is_alive(self) -> bool:
        return False

    def join(self) -> None:
        pass


@pytest.mark.parametrize("threads", ["real", "inline"])
def test_early_writeback_hints_cover_only_placed_data_in_order(
    mode: str, threads: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The data region is handed to writeback as it grows: ranges in order, never past what
    was placed (minus the lag), and the image reads the same as without the hints.  With real
    threads a hint is skipped while the previous one still runs (how many is timing); run
    inline, every step gets one and they cover the region up to the lag."""
    from cimsnap.formats.cim import writer as writer_module

    if threads == "inline":
        monkeypatch.setattr(writer_module.threading, "Thread", _InlineThread)
    monkeypatch.setattr(writer_module, "WRITEBACK_STEP", 1 << 20)
    monkeypatch.setattr(writer_module, "WRITEBACK_LAG", 1 << 20)
    hints: list[tuple[int, int]] = []
    real = writer_module.start_writeback

    def recording(fd: int, offset: int, length: int) -> None:
        hints.append((offset, length))
        real(fd, offset, length)

    monkeypatch.setattr(writer_module, "start_writeback", recording)
    files = {f"f{i}": os.urandom(300_000 + 4093 * i) for i in range(30)}
    files["streamed"] = os.urandom(5 << 20)  # longer than one chunk: written as it streams
    with CimWriter.create(tmp_path / "t.cim") as writer:
        for name, data in files.items():
            writer.add(name, FileMetadata(), io.BytesIO(data))
    assert hints  # the first step always starts one
    ends = 0
    for offset, length in hints:
        assert offset == ends and length >= 1 << 20  # contiguous, in order, a step or more
        ends = offset + length
    data_region_size = max(region.stat().st_size for region in tmp_path.glob("region_*"))
    assert ends <= data_region_size
    if threads == "inline":
        assert ends >= data_region_size - (2 << 20) - PAGE  # all but the lag and one step
    with CimImage.open(tmp_path / "t.cim") as image:
        for name, data in files.items():
            assert image.read(name) == data
