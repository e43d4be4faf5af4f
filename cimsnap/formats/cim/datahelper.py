"""The CIM writer's data helper: SHA-512 of data objects and region writes, in its own process.

Run by :mod:`.datapipe` as ``python -I -S datahelper.py RING_FD REGION_FD COMMAND_FD REPLY_FD``
(descriptors inherited from the writer).  The writer reads each data object into a shared
memory ring (a memfd both processes map) and sends commands naming ring ranges; this process
hashes them and writes them to the data region file, and replies in command order.  Being a
separate process it has its own interpreter lock: the writer's thread, busy with many small
system calls (stat, open, read, tar headers), never waits for it, and vice versa.

The module has no imports from the project (it runs with ``-I -S``); the writer uses its write
functions too, for the work it does itself (small images, no helper).

Protocol (native byte order, one pipe each way): a command is :data:`HEADER` ``(op, count)``
followed by ``count`` records of :data:`RANGE`, ``(ring offset, length, file position)``.  Each
command gets one reply: :data:`HEADER` ``(status, payload length)`` and the payload.

* ``OP_HASH``: reply the 24-byte digest prefix (SHA-512) of each range, concatenated;
* ``OP_WRITE``: write each range at its file position (:func:`write_all`); empty reply;
* ``OP_CHUNK``: one range, the next chunk of a long object: hash it, continuing the current
  stream's hash (the writer writes chunks itself, meanwhile); empty reply;
* ``OP_STREAM_END``: reply the stream's 24-byte digest prefix; the next chunk starts a new one.

A failing command replies ``STATUS_ERROR`` with ``errno`` (u32) and a UTF-8 message; the helper
goes on with the next command.  EOF on the command pipe ends the process.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import signal
import struct
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (annotations only: the helper process starts without importing typing)
    from typing import Any

HEADER = struct.Struct("=II")  # command: (op, count); reply: (status, payload length)
RANGE = struct.Struct("=QQQ")  # ring offset, length, file position
ERROR_HEAD = struct.Struct("=I")  # errno of a failed command (0: not an OSError)
OP_HASH = 1
OP_WRITE = 2
OP_CHUNK = 3
OP_STREAM_END = 4
STATUS_OK = 0
STATUS_ERROR = 1
DIGEST_PREFIX = 24  # the object-ID digest is the first 24 bytes of SHA-512

PAGE_SIZE = 4096
_ZERO_PAGE = bytes(PAGE_SIZE)
# Any zero page contains this run; looking for it first is several times faster than looking
# for a whole page (whose search needs a 4 KiB table first), and usually decides.
_ZERO_RUN = bytes(256)
_IOV_LIMIT = 1024  # IOV_MAX on Linux


# --- region writes (used by the helper and by the writer itself) ------------------------------


def write_nonzero_at(fd: int, ring: Any, start: int, length: int, position: int) -> bool:
    """Write ``ring[start:start + length]`` at file ``position`` except its all-zero pages
    (counted from ``start``, which maps to a page boundary of the file); False if all zero.

    Everything past the file's current end reads as zeros already, so zero pages become holes:
    region files stay as sparse as the data.  ``ring`` is any buffer with ``find`` (bytes,
    bytearray, mmap).
    """
    end = start + length
    view = memoryview(ring)
    if not _has_zero_page(ring, start, end):  # the usual case
        if length < PAGE_SIZE and ring[start:end] == _ZERO_PAGE[:length]:
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


def _has_zero_page(ring: Any, start: int, end: int) -> bool:
    """Whether 4096 zero bytes follow each other anywhere in ``ring[start:end]``."""
    return ring.find(_ZERO_RUN, start, end) >= 0 and ring.find(_ZERO_PAGE, start, end) >= 0


def write_all(fd: int, ring: Any, objects: list[tuple[int, int, int]]) -> None:
    """Write objects ``(ring start, length, file position)`` (ascending positions) as
    :func:`write_nonzero_at` would one by one, with as few system calls as possible: objects
    without zero pages that follow each other in the file (up to the alignment gap between
    them, which lies in a page the earlier object occupies anyway) go out in one ``pwritev``."""
    view = memoryview(ring)
    run: list[memoryview | bytes] = []
    run_at = run_end = 0
    for start, length, position in objects:
        end = start + length
        if length < PAGE_SIZE:
            if ring[start:end] == _ZERO_PAGE[:length]:  # (slices compare with memcmp)
                continue  # all zero: a hole
        elif _has_zero_page(ring, start, end):
            write_nonzero_at(fd, ring, start, length, position)  # zero pages stay holes
            continue
        gap = position - run_end
        if run and 0 <= gap < PAGE_SIZE and len(run) < _IOV_LIMIT - 1:
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


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, position: int) -> None:
    """``os.pwrite`` until everything is written."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, position)
        view = view[written:]
        position += written


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


# --- the helper process -----------------------------------------------------------------------


def _read_exactly(fd: int, n: int) -> bytes | None:
    """``n`` bytes from the pipe; None at EOF before the first byte."""
    parts = []
    got = 0
    while got < n:
        chunk = os.read(fd, n - got)
        if not chunk:
            if got:
                raise EOFError("command pipe closed in the middle of a command")
            return None
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def serve(ring_fd: int, region_fd: int, command_fd: int, reply_fd: int) -> None:
    """Answer commands until the command pipe closes."""
    size = os.fstat(ring_fd).st_size
    ring = mmap.mmap(ring_fd, size)
    view = memoryview(ring)
    stream = hashlib.sha512()
    while True:
        head = _read_exactly(command_fd, HEADER.size)
        if head is None:
            return
        op, count = HEADER.unpack(head)
        raw = _read_exactly(command_fd, count * RANGE.size) if count else b""
        ranges = list(RANGE.iter_unpack(raw or b""))
        try:
            if op == OP_HASH:
                payload = b"".join(
                    [
                        hashlib.sha512(view[start : start + length]).digest()[:DIGEST_PREFIX]
                        for start, length, _ in ranges
                    ]
                )
            elif op == OP_WRITE:
                write_all(region_fd, ring, ranges)
                payload = b""
            elif op == OP_CHUNK:
                ((start, length, _),) = ranges
                stream.update(view[start : start + length])
                payload = b""
            elif op == OP_STREAM_END:
                payload = stream.digest()[:DIGEST_PREFIX]
                stream = hashlib.sha512()
            else:
                raise ValueError(f"unknown command {op}")
            _write_all(reply_fd, HEADER.pack(STATUS_OK, len(payload)) + payload)
        except Exception as err:  # reported to the writer, which raises it
            if op == OP_CHUNK:
                stream = hashlib.sha512()
            number = err.errno if isinstance(err, OSError) and err.errno else 0
            message = ERROR_HEAD.pack(number) + str(err).encode("utf-8", "replace")
            _write_all(reply_fd, HEADER.pack(STATUS_ERROR, len(message)) + message)


def main(argv: list[str]) -> int:
    # The writer ends this process by closing the command pipe; a terminal's Ctrl-C is the
    # writer's to handle.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ring_fd, region_fd, command_fd, reply_fd = (int(a) for a in argv[1:5])
    try:
        serve(ring_fd, region_fd, command_fd, reply_fd)
    except (BrokenPipeError, EOFError):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
