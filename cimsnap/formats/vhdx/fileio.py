"""The few file operations the VHDX engine performs, in one place.

Every byte the engine reads or writes, every fsync and every resize of a VHDX file goes through
:class:`FileIO`, so the crash-safety tests can interpose on exactly these calls (drop writes that
were never fsynced, stop at the N-th operation) without touching the engine itself.
"""

from __future__ import annotations

import os
from pathlib import Path

from cimsnap.formats.vhdx.errors import VhdxError


class FileIO:
    """Positioned I/O on an open file descriptor, raising :class:`VhdxError` on I/O failure."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    def pread(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` (short only at end of file)."""
        try:
            data = os.pread(self.fd, length, offset)
        except OSError as err:
            raise VhdxError(f"read failed: {err.strerror}", path=self.path, offset=offset) from err
        if len(data) < length:
            # pread may return less than asked for large requests; finish the read.
            parts = [data]
            got = len(data)
            while got < length:
                more = os.pread(self.fd, length - got, offset + got)
                if not more:
                    break
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
        return data

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        pos = offset
        try:
            while view:
                n = os.pwrite(self.fd, view, pos)
                view = view[n:]
                pos += n
        except OSError as err:
            raise VhdxError(f"write failed: {err.strerror}", path=self.path, offset=pos) from err

    def fsync(self) -> None:
        """Make every write so far durable (data and the file size; not timestamps)."""
        try:
            os.fdatasync(self.fd)
        except OSError as err:
            raise VhdxError(f"fsync failed: {err.strerror}", path=self.path) from err

    def truncate(self, size: int) -> None:
        try:
            os.ftruncate(self.fd, size)
        except OSError as err:
            raise VhdxError(
                f"cannot set file size to {size}: {err.strerror}", path=self.path
            ) from err

    def size(self) -> int:
        return os.fstat(self.fd).st_size
