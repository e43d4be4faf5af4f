"""Hashing and writing of the CIM writer's data objects, in a helper process or inline.

The writer reads each data-region object (or each chunk of a long one) into a slot of one
bounded ring buffer, shared memory both processes map, and asks for its SHA-512 digest and,
once the object has its place, for its write.  Once an image has more than
:data:`HELPER_AFTER_BYTES` of data, that work goes to a helper process
(:mod:`.datahelper`): it hashes and writes while the writer's thread goes on parsing and reading
the next files.  A process rather than threads because the writer's thread makes many small
system calls per file (each a GIL hand-over) and the workers would need the GIL once per object:
on two cores, threads spent about as much time handing the lock around as they saved.  Before
that point, or where a helper cannot start, the work is done inline.

Placement decisions (deduplication, offsets) stay with the writer, in call order, so the output
does not depend on where the work ran.  Memory is the ring plus a few objects per slot:
constant in the data size.  No format knowledge lives here; :mod:`.writer` drives it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
import select
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any

from cimsnap.formats.cim import datahelper
from cimsnap.formats.cim.datahelper import (
    DIGEST_PREFIX,
    ERROR_HEAD,
    HEADER,
    OP_CHUNK,
    OP_HASH,
    OP_STREAM_END,
    OP_WRITE,
    RANGE,
    STATUS_OK,
    write_all,
    write_nonzero_at,
)

# Size of the ring: many average files and a few large ones in flight while the helper
# catches up (the writer's thread only waits when the ring is full).
RING_BYTES = 8 << 20
# Data handled inline before the helper starts: small images are not worth a process (its
# start costs about 20 ms).
HELPER_AFTER_BYTES = 8 << 20
# When the helper has more than this much work queued, the writer's thread does the next
# batches itself instead of waiting for ring space: the two share the work whatever the
# machine gives each of them (on one core this degrades to working inline).
HELPER_BACKLOG = 4 << 20
USE_HELPER = True  # False: always inline (debugging, single-core machines)
HELPER_SCRIPT = Path(datahelper.__file__)
_PIPE_BYTES = 1 << 20  # F_SETPIPE_SZ: replies and commands rarely wait for the other side
_F_SETPIPE_SZ = 1031
_HELPER_EXIT_SECONDS = 30


class Job:
    """Work on ring slots: ``done`` turns True with a ``result`` or an ``error``."""

    __slots__ = ("done", "error", "nbytes", "op", "result")

    def __init__(self, op: int, nbytes: int = 0) -> None:
        self.op = op
        self.nbytes = nbytes  # the helper's work in it, for its backlog
        self.done = False
        self.error: BaseException | None = None
        self.result: Any = None


class Slot:
    """A contiguous range of the ring.  Reusable once released and its jobs are done."""

    __slots__ = ("end", "jobs", "released", "start")

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end
        self.jobs: list[Job] = []
        self.released = False


class DataPipe:
    """The ring, and the jobs on it run inline or by the helper process.

    Slots are handed out in ring order and come back in that order (a slot whose successor
    finished first waits for it), which keeps the ring simple and the wait bounded by the
    oldest object in flight.  Jobs finish in submission order.
    """

    def __init__(self, region_fd: int, ring_bytes: int | None = None) -> None:
        self.region_fd = region_fd
        size = ring_bytes or RING_BYTES
        self._size = size
        self._memfd = -1
        # (A helper needs an interpreter and the script as a file, not inside a zip.)
        self._helper_allowed = USE_HELPER and bool(sys.executable) and HELPER_SCRIPT.is_file()
        try:
            self._memfd = os.memfd_create("cimsnap-ring", os.MFD_CLOEXEC)
            os.ftruncate(self._memfd, size)
            self.ring = mmap.mmap(self._memfd, size)
        except (AttributeError, OSError):  # no memfd: anonymous memory, work inline
            if self._memfd >= 0:
                os.close(self._memfd)
                self._memfd = -1
            self.ring = mmap.mmap(-1, size)
            self._helper_allowed = False
        self.view = memoryview(self.ring)
        self._live: deque[Slot] = deque()
        self._inline_bytes = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._command_fd = -1
        self._reply_fd = -1
        self._outstanding: deque[Job] = deque()  # sent to the helper, not answered yet
        self._backlog = 0  # bytes of work in self._outstanding
        self._replies = bytearray()  # read from the helper, not parsed yet
        self._unsent = bytearray()  # commands not written to the pipe yet
        self._stream_helper: bool | None = None  # where the open stream is hashed
        self._stream = hashlib.sha512()  # an inline stream's hash
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
        """The caller is done with ``slot``; it is reused once its jobs are done too."""
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
            for job in slot.jobs:
                if not job.done:
                    return
                self._check(job)
            live.popleft()

    # --- jobs ---------------------------------------------------------------------------------

    def hash_batch(self, objects: list[tuple[Slot, int]]) -> Job:
        """The 24-byte SHA-512 prefixes of ``(slot, length)`` objects (a list, in order)."""
        nbytes = sum(length for _, length in objects)
        job = self._job(OP_HASH, [slot for slot, _ in objects], nbytes)
        if self._use_helper(nbytes) and self._backlog < HELPER_BACKLOG:
            self._send(job, [(slot.start, length, 0) for slot, length in objects])
        else:
            view = self.view
            job.result = [
                hashlib.sha512(view[slot.start : slot.start + length]).digest()[:DIGEST_PREFIX]
                for slot, length in objects
            ]
            job.done = True
        return job

    def write_batch(self, objects: list[tuple[Slot, int, int]]) -> Job:
        """Write ``(slot, length, file position)`` objects (ascending positions)."""
        nbytes = sum(length for _, length, _ in objects)
        job = self._job(OP_WRITE, [slot for slot, _, _ in objects], nbytes)
        ranges = [(slot.start, length, position) for slot, length, position in objects]
        if self._use_helper(0) and self._backlog < HELPER_BACKLOG:
            self._send(job, ranges, now=False)
        else:
            self._inline(job, write_all, self.region_fd, self.ring, ranges)
        return job

    def stream_chunk(
        self, slot: Slot, length: int, position: int, expected: int
    ) -> tuple[Job, bool]:
        """Hash the next chunk of a long object (continuing its hash; the job) and write it at
        ``position`` (now, here: the helper only hashes long objects, so that writing one
        chunk and hashing the next proceed side by side); False if it was all zero pages.
        ``expected`` is the object's length as far as known (where to hash it)."""
        if self._stream_helper is None:  # a new stream: it stays where it starts
            self._stream_helper = self._use_helper(max(length, expected))
        job = self._job(OP_CHUNK, [slot], length)
        if self._stream_helper:
            self._send(job, [(slot.start, length, position)])
        else:
            self._stream.update(self.view[slot.start : slot.start + length])
            job.done = True
        return job, write_nonzero_at(self.region_fd, self.ring, slot.start, length, position)

    def stream_end(self) -> Job:
        """The 24-byte SHA-512 prefix of the chunks since the last call; a new stream starts."""
        job = self._job(OP_STREAM_END, [])
        if self._stream_helper:
            self._send(job, [])
        else:
            job.result = self._stream.digest()[:DIGEST_PREFIX]
            job.done = True
        self._stream = hashlib.sha512()
        self._stream_helper = None
        return job

    def _job(self, op: int, slots: list[Slot], nbytes: int = 0) -> Job:
        if self._failed is not None:
            raise self._failed
        job = Job(op, nbytes)
        for slot in slots:
            slot.jobs.append(job)
        return job

    def _inline(self, job: Job, fn: Any, *args: Any) -> None:
        try:
            job.result = fn(*args)
        except OSError as err:
            job.error = err
        job.done = True

    def wait(self, job: Job) -> Any:
        """Block until ``job`` is done; its result, or its error raised here."""
        while not job.done:
            self.wait_one()
        self._check(job)
        return job.result

    def settle(self, job: Job) -> None:
        """Block until ``job`` is done, whatever its outcome (a failure is raised later)."""
        while not job.done:
            self.wait_one()

    @property
    def outstanding(self) -> int:
        """Jobs sent to the helper and not answered yet."""
        return len(self._outstanding)

    def poll(self) -> None:
        """Take in the helper's replies so far, without blocking."""
        if self._outstanding:
            self._read_replies(block=False)

    def wait_one(self) -> None:
        """Block until some job is done (one must be outstanding)."""
        if not self._outstanding:
            raise RuntimeError("waiting for the data helper with nothing outstanding")
        self._flush()
        before = len(self._outstanding)
        while len(self._outstanding) == before:
            self._read_replies(block=True)

    def drain(self) -> None:
        """Wait for every job; raises the first failure of any of them."""
        while self._outstanding:
            self.wait_one()
        for slot in self._live:
            for job in slot.jobs:
                self._check(job)
        self._reclaim()
        if self._failed is not None:
            raise self._failed

    def _check(self, job: Job) -> None:
        if job.error is not None:
            self._failed = self._failed or job.error
            raise job.error
        if self._failed is not None:
            raise self._failed

    # --- the helper process -------------------------------------------------------------------

    def _use_helper(self, nbytes: int) -> bool:
        if self._process is not None:
            return True
        if not self._helper_allowed or self._stream_helper is not None:
            return False  # (a stream hashed inline finishes inline)
        self._inline_bytes += nbytes
        if self._inline_bytes < HELPER_AFTER_BYTES:
            return False
        try:
            self._spawn()
        except OSError:
            self._helper_allowed = False  # it works inline then
            return False
        return True

    def _spawn(self) -> None:
        command_r, command_w = os.pipe2(os.O_CLOEXEC)
        reply_r, reply_w = os.pipe2(os.O_CLOEXEC)
        try:
            for fd in (command_w, reply_w):
                with contextlib.suppress(OSError):  # a bigger pipe if the system allows
                    fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_BYTES)
            ends = (self._memfd, self.region_fd, command_r, reply_w)
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", str(HELPER_SCRIPT), *(str(fd) for fd in ends)],
                pass_fds=ends,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except BaseException:
            for fd in (command_w, reply_r):
                os.close(fd)
            raise
        finally:
            os.close(command_r)
            os.close(reply_w)
        os.set_blocking(command_w, False)
        os.set_blocking(reply_r, False)
        self._command_fd = command_w
        self._reply_fd = reply_r

    def _send(self, job: Job, ranges: list[tuple[int, int, int]], *, now: bool = True) -> None:
        """Queue a command for the helper; it goes out now, or (``now=False``: writes, which
        nothing waits for soon) with the next command that does: each write to the pipe can
        cost a wake-up of the helper."""
        self._unsent += HEADER.pack(job.op, len(ranges))
        self._unsent += b"".join([RANGE.pack(*r) for r in ranges])
        self._outstanding.append(job)
        self._backlog += job.nbytes
        if now:
            self._flush()

    def _flush(self) -> None:
        if not self._unsent:
            return
        message = bytes(self._unsent)
        self._unsent.clear()
        view = memoryview(message)
        while view:
            try:
                view = view[os.write(self._command_fd, view) :]
            except BlockingIOError:  # the helper is busy: take its replies while waiting
                readable, _, _ = select.select([self._reply_fd], [self._command_fd], [])
                if readable:
                    self._read_replies(block=False)
            except BrokenPipeError:
                self._helper_died()

    def _read_replies(self, *, block: bool) -> None:
        while True:
            try:
                chunk = os.read(self._reply_fd, 1 << 16)
            except BlockingIOError:
                if not block:
                    return
                select.select([self._reply_fd], [], [])
                continue
            if not chunk:
                self._helper_died()
            self._replies += chunk
            self._parse_replies()
            return

    def _parse_replies(self) -> None:
        data = self._replies
        at = 0
        while len(data) - at >= HEADER.size:
            status, length = HEADER.unpack_from(data, at)
            end = at + HEADER.size + length
            if len(data) < end:
                break
            payload = bytes(data[at + HEADER.size : end])
            at = end
            job = self._outstanding.popleft()
            self._backlog -= job.nbytes
            if status == STATUS_OK:
                if job.op == OP_HASH:
                    job.result = [
                        payload[i : i + DIGEST_PREFIX]
                        for i in range(0, len(payload), DIGEST_PREFIX)
                    ]
                elif job.op == OP_STREAM_END:
                    job.result = payload
            else:
                (number,) = ERROR_HEAD.unpack_from(payload)
                message = payload[ERROR_HEAD.size :].decode("utf-8", "replace")
                job.error = OSError(number or errno.EIO, f"CIM data helper: {message}")
            job.done = True
        del data[:at]

    def _helper_died(self) -> None:
        code = self._process.poll() if self._process is not None else None
        error = OSError(errno.EPIPE, f"the CIM data helper process ended (status {code})")
        self._failed = self._failed or error
        while self._outstanding:
            job = self._outstanding.popleft()
            job.error = error
            job.done = True
        raise error

    def close(self) -> None:
        """Stop the helper (after the commands it has; without waiting for their replies)
        and let go of the ring."""
        process, self._process = self._process, None
        for fd in (self._command_fd, self._reply_fd):
            if fd >= 0:
                os.close(fd)
        self._command_fd = self._reply_fd = -1
        if process is not None:
            try:
                process.wait(_HELPER_EXIT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._outstanding:  # not answered: nobody may wait for them any more
            error = self._failed or OSError(errno.ECANCELED, "the CIM writer was closed")
            for job in self._outstanding:
                job.error = job.error or error
                job.done = True
            self._outstanding.clear()
        self._live.clear()
        if self._memfd >= 0:
            os.close(self._memfd)  # (the mapping lives on until its last view is gone)
            self._memfd = -1
