"""The byte-addressed device interface shared by the disk formats.

VHDX disks, raw files, in-memory buffers and windows onto any of them (a GPT partition) all offer
the same four operations, so the GPT and NTFS writers work on whatever holds them.  Reads past the
end are errors, never short reads: a truncated device is a malformed input.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, runtime_checkable

from cimsnap.errors import FormatError, UsageError


@runtime_checkable
class BlockDevice(Protocol):
    """A fixed-size byte range that can be read and written at any offset."""

    @property
    def size(self) -> int: ...

    def read_at(self, offset: int, length: int) -> bytes: ...

    def write_at(self, offset: int, data: bytes) -> None: ...

    def flush(self) -> None: ...


def _check_range(dev_size: int, offset: int, length: int, what: object) -> None:
    if offset < 0 or length < 0 or offset + length > dev_size:
        raise FormatError(
            f"access of {length} bytes at {offset:#x} is outside the device ({dev_size} bytes)",
            path=str(what),
        )


class MemoryDevice:
    """A device held in a bytearray, for tests and small images."""

    def __init__(self, size: int | None = None, data: bytes | None = None) -> None:
        self.buf = bytearray(data) if data is not None else bytearray(size or 0)

    @property
    def size(self) -> int:
        return len(self.buf)

    def read_at(self, offset: int, length: int) -> bytes:
        _check_range(len(self.buf), offset, length, "<memory>")
        return bytes(self.buf[offset : offset + length])

    def write_at(self, offset: int, data: bytes) -> None:
        _check_range(len(self.buf), offset, len(data), "<memory>")
        self.buf[offset : offset + len(data)] = data

    def flush(self) -> None:
        pass


class RawFileDevice:
    """A raw disk image file; writes of new ranges keep the file sparse (no zero-filling)."""

    def __init__(self, path: str | os.PathLike[str], *, writable: bool = False) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)
        self._size = os.fstat(self._fd).st_size
        self.writable = writable

    @classmethod
    def create(cls, path: str | os.PathLike[str], size: int) -> RawFileDevice:
        """Create (or truncate) a sparse raw file of ``size`` bytes."""
        if size < 0:
            raise UsageError(f"negative size {size}", path=path)
        with open(path, "wb") as f:
            f.truncate(size)
        return cls(path, writable=True)

    @property
    def size(self) -> int:
        return self._size

    def read_at(self, offset: int, length: int) -> bytes:
        _check_range(self._size, offset, length, self.path)
        data = os.pread(self._fd, length, offset)
        if len(data) != length:
            raise FormatError(f"short read of {length} bytes at {offset:#x}", path=self.path)
        return data

    def write_at(self, offset: int, data: bytes) -> None:
        _check_range(self._size, offset, len(data), self.path)
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, offset)
            view = view[n:]
            offset += n

    def flush(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RawFileDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WindowDevice:
    """``length`` bytes of ``base`` starting at ``start`` (a partition on a disk)."""

    def __init__(self, base: BlockDevice, start: int, length: int) -> None:
        if start < 0 or length < 0 or start + length > base.size:
            raise FormatError(
                f"window {start:#x}+{length:#x} is outside the device ({base.size} bytes)"
            )
        self.base = base
        self.start = start
        self.length = length

    @property
    def size(self) -> int:
        return self.length

    def read_at(self, offset: int, length: int) -> bytes:
        _check_range(self.length, offset, length, "<window>")
        return self.base.read_at(self.start + offset, length)

    def write_at(self, offset: int, data: bytes) -> None:
        _check_range(self.length, offset, len(data), "<window>")
        self.base.write_at(self.start + offset, data)

    def flush(self) -> None:
        self.base.flush()
