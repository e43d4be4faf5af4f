"""Fast, sparse-preserving copy of a scratch template (the per-container sandbox copy).

The snapshotter copies the small differencing template ``blank.vhdx`` for every container (the
point of hcsshim PR #2002 / containerd 994fdd74e).  Windows copies the whole file; here the copy
uses the cheapest safe method the filesystem offers:

1. ``reflink``: one ``FICLONE`` ioctl shares every extent with the template (btrfs, XFS with
   reflink, bcachefs, ...); nothing is allocated until the container writes.
2. ``sparse``: the data ranges found with ``SEEK_DATA``/``SEEK_HOLE`` are copied with
   ``copy_file_range`` (in-kernel, no user-space buffer); holes stay holes.  Where
   ``copy_file_range`` cannot be used (other filesystem, old kernel), the same ranges are copied
   with ``pread``/``pwrite``, skipping blocks of zeros.

The copy is written under a temporary name in the destination directory and renamed into place
(optionally after ``fsync``), so a crash never leaves a half-written file under the final name.
A differencing VHDX copied this way still names its parent the way the template did; callers
copy templates whose parent locator resolves from the copy's place (see ``template.py``).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import os
from pathlib import Path

from cimsnap.errors import CimsnapError

# linux/fs.h: #define FICLONE _IOW(0x94, 9, int)
FICLONE = 0x40049409

# errnos meaning "this filesystem/kernel can't do that here": fall back to the next method.
_UNSUPPORTED = {
    errno.EOPNOTSUPP,
    errno.ENOTSUP,
    errno.EXDEV,
    errno.EINVAL,
    errno.ENOTTY,
    errno.ENOSYS,
    errno.EBADF,
    errno.ETXTBSY,
}

_CHUNK = 1 << 20  # bytes per copy_file_range / pread call
_ZERO_BLOCK = 4096  # granularity at which the pread fallback skips zeros


class CopyError(CimsnapError):
    """A scratch copy failed (the destination is left absent)."""


class CopyMethod(enum.Enum):
    REFLINK = "reflink"
    SPARSE = "sparse"  # SEEK_DATA/SEEK_HOLE + copy_file_range
    SPARSE_READ_WRITE = "sparse-read-write"  # SEEK_DATA/SEEK_HOLE + pread/pwrite


def _data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    """(offset, length) of the data regions of ``fd``; the whole file if holes are unknown."""
    ranges: list[tuple[int, int]] = []
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:  # no more data after offset
                break
            if err.errno in _UNSUPPORTED:
                return [(offset, size - offset)] if offset == 0 else ranges
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        end = min(end, size)
        if end > start:
            ranges.append((start, end - start))
        offset = end
    return ranges


def _copy_range_kernel(src: int, dst: int, offset: int, length: int) -> None:
    done = 0
    while done < length:
        n = os.copy_file_range(src, dst, min(_CHUNK, length - done), offset + done, offset + done)
        if n == 0:
            raise OSError(errno.EIO, "source file shrank during copy")
        done += n


def _copy_range_user(src: int, dst: int, offset: int, length: int) -> None:
    done = 0
    zero = bytes(_ZERO_BLOCK)
    while done < length:
        data = os.pread(src, min(_CHUNK, length - done), offset + done)
        if not data:
            raise OSError(errno.EIO, "source file shrank during copy")
        # Write only non-zero blocks; the destination was pre-sized, so skipped blocks read 0.
        for block in range(0, len(data), _ZERO_BLOCK):
            piece = data[block : block + _ZERO_BLOCK]
            if piece != zero[: len(piece)]:
                os.pwrite(dst, piece, offset + done + block)
        done += len(data)


def _try_reflink(src: int, dst: int) -> bool:
    try:
        fcntl.ioctl(dst, FICLONE, src)
    except OSError as err:
        if err.errno in _UNSUPPORTED:
            return False
        raise
    return True


def _sparse_copy(src: int, dst: int, size: int) -> CopyMethod:
    os.ftruncate(dst, size)
    method = CopyMethod.SPARSE
    for offset, length in _data_ranges(src, size):
        if method is CopyMethod.SPARSE:
            try:
                _copy_range_kernel(src, dst, offset, length)
                continue
            except OSError as err:
                if err.errno not in _UNSUPPORTED:
                    raise
                method = CopyMethod.SPARSE_READ_WRITE
        _copy_range_user(src, dst, offset, length)
    return method


def _place(tmp: Path, dest: Path) -> None:
    """Move the finished copy to ``dest`` without ever replacing an existing file."""
    try:
        os.link(tmp, dest)  # fails with EEXIST instead of replacing
    except FileExistsError:
        raise
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
        # A filesystem without hard links: rename, having checked nothing is there.
        if os.path.lexists(dest):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dest)) from None
        os.rename(tmp, dest)
        return
    tmp.unlink()


def copy_scratch(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    durable: bool = True,
    mode: int = 0o600,
    allow_reflink: bool = True,
    staged: bool = True,
) -> CopyMethod:
    """Copy ``source`` to the new file ``dest`` (which must not exist); returns the method used.

    ``durable`` fsyncs the copy before it is renamed into place.  ``allow_reflink=False`` forces
    the sparse copy (benchmarks, tests).  ``staged=False`` writes ``dest`` itself, with no
    temporary name (a failed copy is still removed): for a directory nothing trusts until the
    caller commits it, where the two extra directory operations would only cost time.
    """
    source, dest = Path(source), Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}") if staged else dest
    try:
        src_fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise CopyError(f"failed to open {source}: {err.strerror}", path=source) from err
    try:
        size = os.fstat(src_fd).st_size
        if staged:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()  # left over by a killed copy of this same process id
        try:
            dst_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        except OSError as err:
            raise CopyError(f"failed to create {tmp}: {err.strerror}", path=tmp) from err
        try:
            if allow_reflink and _try_reflink(src_fd, dst_fd):
                method = CopyMethod.REFLINK
            else:
                method = _sparse_copy(src_fd, dst_fd, size)
            if durable:
                os.fsync(dst_fd)
        except OSError as err:
            os.close(dst_fd)
            tmp.unlink(missing_ok=True)
            raise CopyError(
                f"failed to copy {source} to {dest}: {err.strerror or err}", path=dest
            ) from err
        os.close(dst_fd)
        if not staged:
            return method
        try:
            _place(tmp, dest)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise CopyError(f"failed to place {dest}: {err.strerror}", path=dest) from err
        return method
    finally:
        os.close(src_fd)
