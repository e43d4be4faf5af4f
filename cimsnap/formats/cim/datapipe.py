"""Background work of the CIM writer: SHA-512 and region-file writes on worker threads.

The writer reads each data-region object (or each chunk of a long one) into a slot of one
bounded ring buffer and hands the slot's hashing and, once the object has its place, its write
to two worker threads.  ``hashlib`` and ``os.pwrite`` release the GIL, so on a multi-core
machine hashing, the kernel's page-cache copy and the writer's own Python work (parsing the
next tar header, building metadata) run at the same time.  Placement decisions (deduplication,
offsets) stay with the caller, in call order, so the output is exactly what a sequential writer
produces.  Memory is the ring plus a few objects per slot: constant in the data size.

No format knowledge lives here; :mod:`.writer` drives it.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

# Size of the ring: enough for many average files and a few large ones in flight while the
# workers catch up (the writer's thread only waits when the ring is full).
RING_BYTES = 8 << 20
# Worker threads: the machines this runs on have 2+ cores; hashing and page-cache copies of
# different objects proceed in parallel, and the writer's thread takes the remaining share.
WORKERS = 2
PAGE_SIZE = 4096
_IOV_LIMIT = 1024  # IOV_MAX on Linux
_ZERO_PAGE = bytes(PAGE_SIZE)


class Task:
    """One call run on a worker thread; ``done`` turns True when it returned or raised."""

    __slots__ = ("args", "done", "error", "fn", "result")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.done = False
        self.error: BaseException | None = None
        self.result: Any = None


class Slot:
    """A contiguous range of the ring.  Reusable once released and its tasks are done."""

    __slots__ = ("end", "released", "start", "tasks")

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end
        self.tasks: list[Task] = []
        self.released = False


def _work(tasks: SimpleQueue[Task | None], done: SimpleQueue[Task]) -> None:
    while True:
        task = tasks.get()
        if task is None:
            return
        try:
            task.result = task.fn(*task.args)
        except BaseException as err:  # handed to the writer's thread
            task.error = err
        task.done = True
        done.put(task)


class DataPipe:
    """A ring buffer of slots and the worker threads that hash and write them.

    Only the writer's thread calls these methods.  Slots are handed out in ring order and
    come back in that order (a slot whose successor finished first waits for it), which keeps
    the ring simple and the wait bounded by the oldest object in flight.
    """

    def __init__(self, ring_bytes: int | None = None, workers: int | None = None) -> None:
        ring_bytes = ring_bytes or RING_BYTES
        workers = workers or WORKERS
        self.ring = bytearray(ring_bytes)
        self.view = memoryview(self.ring)
        self._size = ring_bytes
        self._live: deque[Slot] = deque()
        self._tasks: SimpleQueue[Task | None] = SimpleQueue()
        self._done: SimpleQueue[Task] = SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._workers = workers
        self._in_flight = 0
        self._failed: BaseException | None = None

    # --- slots --------------------------------------------------------------------------------

    def try_alloc(self, n: int) -> Slot | None:
        """A slot of ``n`` (1 .. ring size) contiguous bytes, or None while the ring is full."""
        self._reclaim()
        live = self._live
        if not live:
            start = 0
        else:
            tail = live[0].start
            head = live[-1].end
            if live[-1].start >= tail:  # used: [tail, head); free: [head, end) + [0, tail)
                if self._size - head >= n:
                    start = head
                elif tail >= n:
                    start = 0
                else:
                    return None
            elif tail - head >= n:  # wrapped; free: [head, tail)
                start = head
            else:
                return None
        slot = Slot(start, start + n)
        live.append(slot)
        return slot

    def release(self, slot: Slot) -> None:
        """The caller is done with ``slot``; it is reused once its tasks are done too."""
        slot.released = True

    def shrink(self, slot: Slot, n: int) -> None:
        """Give back the end of the newest slot: it keeps its first ``n`` bytes (n >= 1)."""
        if self._live and self._live[-1] is slot and n > 0:
            slot.end = slot.start + n

    def _reclaim(self) -> None:
        live = self._live
        while live:
            slot = live[0]
            if not slot.released:
                return
            for task in slot.tasks:
                if not task.done:
                    return
                self._check(task)
            live.popleft()

    # --- tasks --------------------------------------------------------------------------------

    def submit(self, slots: list[Slot], fn: Callable[..., Any], *args: Any) -> Task:
        """Run ``fn(*args)`` on a worker; ``slots`` are kept until it is done."""
        if not self._threads:
            self._start()
        task = Task(fn, args)
        for slot in slots:
            slot.tasks.append(task)
        self._in_flight += 1
        self._tasks.put(task)
        return task

    def wait(self, task: Task) -> Any:
        """Block until ``task`` is done; its result, or its exception raised here."""
        while not task.done:
            self.wait_one()
        self._check(task)
        return task.result

    def settle(self, task: Task) -> None:
        """Block until ``task`` is done, whatever its outcome (a failure is raised later)."""
        while not task.done:
            self.wait_one()

    def wait_one(self) -> None:
        """Block until some task is done (one must be in flight)."""
        if self._in_flight <= 0:
            raise RuntimeError("waiting for a worker with nothing in flight")
        self._done.get()
        self._in_flight -= 1
        self.poll()

    def poll(self) -> None:
        """Take note of finished tasks without blocking."""
        done = self._done
        while not done.empty():
            done.get()
            self._in_flight -= 1

    def drain(self) -> None:
        """Wait for every task; raises the first failure of any of them."""
        while self._in_flight > 0:
            self.wait_one()
        for slot in self._live:
            for task in slot.tasks:
                self._check(task)
        self._reclaim()

    def _check(self, task: Task) -> None:
        if task.error is not None:
            error, task.error = task.error, None
            self._failed = self._failed or error
            raise error
        if self._failed is not None:
            raise self._failed

    # --- threads ------------------------------------------------------------------------------

    def _start(self) -> None:
        for i in range(self._workers):
            thread = threading.Thread(
                target=_work, args=(self._tasks, self._done), name=f"cim-worker-{i}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        """Wait for what is in flight (ignoring failures) and stop the workers."""
        while self._in_flight > 0:
            self._done.get()
            self._in_flight -= 1
        for _ in self._threads:
            self._tasks.put(None)
        for thread in self._threads:
            thread.join()
        self._threads.clear()
        self._live.clear()


def write_nonzero_at(
    fd: int, ring: bytes | bytearray, start: int, length: int, position: int
) -> bool:
    """Write ``ring[start:start + length]`` at file ``position`` except its all-zero pages
    (counted from ``start``, which maps to a page boundary of the file); False if all zero.

    Everything past the file's current end reads as zeros already, so zero pages become holes:
    region files stay as sparse as the data.
    """
    end = start + length
    view = memoryview(ring)
    if ring.find(_ZERO_PAGE, start, end) < 0:  # the usual case: no zero page at all
        if length < PAGE_SIZE and ring.count(0, start, end) == length:
            return False
        pwrite_all(fd, view[start:end], position)
        return True
    wrote = False
    run_start = -1
    for page in range(start, end, PAGE_SIZE):
        page_end = min(page + PAGE_SIZE, end)
        zero = ring[page:page_end] == _ZERO_PAGE[: page_end - page]
        if zero and run_start >= 0:
            pwrite_all(fd, view[run_start:page], position + run_start - start)
            run_start = -1
        elif not zero and run_start < 0:
            run_start = page
            wrote = True
    if run_start >= 0:
        pwrite_all(fd, view[run_start:end], position + run_start - start)
    return wrote


def hash_all(items: list[tuple[Any, memoryview]]) -> None:
    """``hasher.update(data)`` for each pair: one worker task for many small objects."""
    for hasher, data in items:
        hasher.update(data)


def write_all(fd: int, ring: bytearray, objects: list[tuple[int, int, int]]) -> None:
    """Write objects ``(ring start, length, file position)``, in ascending file positions,
    as :func:`write_nonzero_at` would one by one, with as few system calls as possible:
    objects without zero pages that follow each other in the file (up to the alignment gap
    between them, which lies in a page the earlier object occupies anyway) go out in one
    ``pwritev``."""
    view = memoryview(ring)
    run: list[memoryview | bytes] = []
    run_at = run_end = 0
    for start, length, position in objects:
        end = start + length
        if length < PAGE_SIZE:
            if ring.count(0, start, end) == length:
                continue  # all zero: a hole
        elif ring.find(_ZERO_PAGE, start, end) >= 0:
            write_nonzero_at(fd, ring, start, length, position)  # zero pages stay holes
            continue
        gap = position - run_end
        if run and (0 <= gap < PAGE_SIZE) and len(run) < _IOV_LIMIT - 1:
            if gap:
                run.append(_ZERO_PAGE[:gap])
        else:
            if run:
                _pwritev_all(fd, run, run_at)
            run = []
            run_at = position
        run.append(view[start:end])
        run_end = position + length
    if run:
        _pwritev_all(fd, run, run_at)


def _pwritev_all(fd: int, buffers: list[memoryview | bytes], position: int) -> None:
    written = os.pwritev(fd, buffers, position)
    for buffer in buffers:  # after a short write (rare on regular files): the rest one by one
        size = len(buffer)
        if written >= size:
            written -= size
        else:
            pwrite_all(fd, memoryview(buffer)[written:], position + written)
            written = 0
        position += size


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, position: int) -> None:
    """``os.pwrite`` until everything is written."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, position)
        view = view[written:]
        position += written
