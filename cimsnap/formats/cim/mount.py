"""Read-only FUSE mount of a CIM image (mfusepy, libfuse3 through ctypes).

What the mount shows: directories (mode 0555) and files (0444) with sizes, times (mtime = last
write, atime = last access, ctime = change time), hard links as one inode (``st_ino`` is the
FileID, ``st_nlink`` the number of names), and the Windows metadata as extended attributes:

* ``user.cimfs.attributes`` (FILE_ATTRIBUTE_* as ``0x...`` text), ``user.cimfs.creation_time``,
  ``user.cimfs.last_write_time``, ``user.cimfs.change_time``, ``user.cimfs.last_access_time``
  (FILETIMEs, decimal text), ``user.cimfs.file_id`` (decimal text);
* ``user.cimfs.sd``, ``user.cimfs.eas``, ``user.cimfs.reparse`` (raw bytes, when present);
* ``user.cimfs.stream.<name>``: the content of alternate stream ``<name>`` (up to the kernel's
  64 KiB xattr limit; larger streams answer E2BIG).

:func:`mount_image` returns once the kernel has the mount (the FUSE server runs in a detached
child process); ``fusermount -u MOUNTPOINT`` ends it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import stat
from pathlib import Path
from typing import Any

from cimsnap.errors import CimsnapError, UsageError
from cimsnap.formats.cim.errors import CimFormatError
from cimsnap.formats.cim.hostfs import (
    XATTR_ATTRIBUTES,
    XATTR_CHANGE_TIME,
    XATTR_CREATION_TIME,
    XATTR_EAS,
    XATTR_FILE_ID,
    XATTR_LAST_ACCESS_TIME,
    XATTR_LAST_WRITE_TIME,
    XATTR_REPARSE,
    XATTR_SD,
    XATTR_STREAM_PREFIX,
)
from cimsnap.formats.cim.metadata import ns_from_filetime
from cimsnap.formats.cim.reader import CimFile, CimImage

log = logging.getLogger(__name__)

XATTR_SIZE_MAX = 65536  # Linux limit on one extended attribute value
MOUNT_TIMEOUT_SECONDS = 30


def link_counts(image: CimImage) -> tuple[dict[int, int], dict[int, int]]:
    """(names per FileID, subdirectories per directory FileID), by walking the image once.

    Also validates the whole tree (cycles, ranges) before anything is mounted."""
    names: dict[int, int] = {}
    subdirs: dict[int, int] = {}
    ids = {"\\": image.root_id}
    for top, dirs, files in image.walk("\\"):
        subdirs[ids.pop(top)] = len(dirs)
        for entry in dirs:
            ids[entry.path] = entry.file_id
        for entry in dirs + files:
            names[entry.file_id] = names.get(entry.file_id, 0) + 1
    return names, subdirs


def _fuse_error(code: int) -> Exception:
    from mfusepy import FuseOSError

    error: Exception = FuseOSError(code)
    return error


class CimOperations:
    """The mfusepy operations of a read-only CIM mount."""

    use_ns = True  # times in nanoseconds

    def __init__(self, image: CimImage, ready_fd: int | None = None) -> None:
        self.image = image
        self.ready_fd = ready_fd
        self.names, self.subdirs = link_counts(image)
        self.uid = os.getuid()
        self.gid = os.getgid()
        self.handles: dict[int, CimFile] = {}
        self.next_handle = 1

    # Called by libfuse once the kernel has the mount.
    def init(self, path: str) -> None:
        if self.ready_fd is not None:
            os.write(self.ready_fd, b"ok")
            os.close(self.ready_fd)
            self.ready_fd = None

    def _image_path(self, path: str) -> str:
        return path.replace("/", "\\")

    def _file_id(self, path: str) -> int:
        try:
            return self.image.lookup(self._image_path(path))
        except CimsnapError as err:
            code = errno.EIO if isinstance(err, CimFormatError) else errno.ENOENT
            raise _fuse_error(code) from None

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        file_id = self._file_id(path)
        try:
            entry = self.image.entry(file_id)
        except CimFormatError:
            raise _fuse_error(errno.EIO) from None
        if entry.is_directory:
            mode = stat.S_IFDIR | 0o555
            nlink = 2 + self.subdirs.get(file_id, 0)
            size = 0
        else:
            mode = stat.S_IFREG | 0o444
            nlink = max(self.names.get(file_id, 1), 1)
            size = entry.default_stream.length
        blocks = 0 if entry.default_stream.sparse else -(-size // 512)
        return {
            "st_mode": mode,
            "st_ino": file_id,
            "st_nlink": nlink,
            "st_size": size,
            "st_blocks": blocks,
            "st_uid": self.uid,
            "st_gid": self.gid,
            # FUSE times are unsigned: FILETIMEs before 1970 (e.g. 0) show as the epoch.
            "st_mtime": max(ns_from_filetime(entry.last_write_time), 0),
            "st_atime": max(ns_from_filetime(entry.last_access_time), 0),
            "st_ctime": max(ns_from_filetime(entry.change_time), 0),
        }

    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        # With use_ino, entries need their inode: readdir(3) skips entries whose d_ino is 0.
        file_id = self._file_id(path)
        try:
            entries = self.image.scandir(file_id)
        except CimsnapError:
            raise _fuse_error(errno.EIO) from None
        parent = file_id  # ".." is not needed exactly; the kernel resolves it by path
        out = [
            (".", {"st_mode": stat.S_IFDIR, "st_ino": file_id}, 0),
            ("..", {"st_mode": stat.S_IFDIR, "st_ino": parent}, 0),
        ]
        for entry in entries:
            mode = stat.S_IFDIR if entry.is_dir else stat.S_IFREG
            out.append((entry.name, {"st_mode": mode, "st_ino": entry.file_id}, 0))
        return out

    def open(self, path: str, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise _fuse_error(errno.EROFS)
        file_id = self._file_id(path)
        try:
            handle = self.image.open(file_id)
        except CimsnapError:
            raise _fuse_error(errno.EISDIR) from None
        number = self.next_handle
        self.next_handle += 1
        self.handles[number] = handle
        return number

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        handle = self.handles.get(fh)
        if handle is None:
            raise _fuse_error(errno.EBADF)
        try:
            return handle.pread(size, offset)
        except CimsnapError as err:
            log.error("read %s at %d: %s", path, offset, err)
            raise _fuse_error(errno.EIO) from None

    def release(self, path: str, fh: int) -> int:
        self.handles.pop(fh, None)
        return 0

    def _xattrs(self, path: str) -> dict[str, bytes | int]:
        """Name -> value, or -> stream size for streams (read only when asked for)."""
        file_id = self._file_id(path)
        try:
            st = self.image.stat(file_id)
        except CimsnapError:
            raise _fuse_error(errno.EIO) from None
        values: dict[str, bytes | int] = {
            XATTR_ATTRIBUTES: f"{st.attributes:#010x}".encode(),
            XATTR_CREATION_TIME: str(st.creation_time).encode(),
            XATTR_LAST_WRITE_TIME: str(st.last_write_time).encode(),
            XATTR_CHANGE_TIME: str(st.change_time).encode(),
            XATTR_LAST_ACCESS_TIME: str(st.last_access_time).encode(),
            XATTR_FILE_ID: str(file_id).encode(),
        }
        if st.security_descriptor is not None:
            values[XATTR_SD] = st.security_descriptor
        if st.extended_attributes:
            values[XATTR_EAS] = st.extended_attributes
        if st.reparse_buffer is not None:
            values[XATTR_REPARSE] = st.reparse_buffer
        for info in st.streams:
            values[XATTR_STREAM_PREFIX + info.name] = info.size
        return values

    def listxattr(self, path: str) -> list[str]:
        return list(self._xattrs(path))

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        value = self._xattrs(path).get(name)
        if value is None:
            raise _fuse_error(errno.ENODATA)
        if isinstance(value, bytes):
            return value
        if value > XATTR_SIZE_MAX:
            raise _fuse_error(errno.E2BIG)
        try:
            return self.image.read(self._image_path(path), name[len(XATTR_STREAM_PREFIX) :])
        except CimsnapError:
            raise _fuse_error(errno.EIO) from None

    def statfs(self, path: str) -> dict[str, int]:
        usage = self.image.usage()
        return {
            "f_bsize": 4096,
            "f_frsize": 4096,
            "f_blocks": -(-usage.total // 4096),
            "f_bfree": 0,
            "f_bavail": 0,
            "f_files": self.image.file_count,
            "f_ffree": 0,
            "f_namemax": 255,
        }


def mount_image(
    image_path: str | os.PathLike[str],
    mountpoint: str | os.PathLike[str],
    *,
    foreground: bool = False,
) -> int:
    """Mount read-only; returns the FUSE server's process id once the mount is ready.

    With ``foreground`` the server runs in this process until unmounted (returns 0).
    """
    import mfusepy

    mountpoint = Path(mountpoint)
    if not mountpoint.is_dir():
        raise UsageError("mount point is not a directory", path=mountpoint)
    if os.path.ismount(mountpoint):
        raise UsageError("something is already mounted here", path=mountpoint)
    image = CimImage.open(image_path)  # errors reach the caller as one line
    options = {
        "ro": True,
        "use_ino": True,
        "default_permissions": True,
        "fsname": f"cimfs:{Path(image_path).resolve()}",
        "subtype": "cimfs",
    }
    if foreground:
        operations = CimOperations(image)
        mfusepy.FUSE(operations, str(mountpoint), foreground=True, nothreads=True, **options)
        return 0
    operations = CimOperations(image)  # walks and validates the tree before forking
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the FUSE server
        status = 1
        try:
            os.close(read_end)
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            operations.ready_fd = write_end
            mfusepy.FUSE(operations, str(mountpoint), foreground=True, nothreads=True, **options)
            status = 0
        except BaseException as err:  # report to the waiting parent, never unwind into it
            with contextlib.suppress(OSError):
                os.write(write_end, f"error: {err}".encode(errors="replace")[:4000])
        finally:
            os._exit(status)
    os.close(write_end)
    image.close()
    try:
        message = _wait_ready(read_end, pid)
    finally:
        os.close(read_end)
    if message != b"ok":
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        text = message.decode(errors="replace").removeprefix("error: ") or "FUSE server exited"
        raise CimsnapError(f"mount failed: {text}", path=mountpoint)
    return pid


def _wait_ready(read_end: int, pid: int) -> bytes:
    ready, _, _ = select.select([read_end], [], [], MOUNT_TIMEOUT_SECONDS)
    if not ready:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
        return b"error: timed out waiting for the FUSE mount"
    chunks = []
    while True:
        chunk = os.read(read_end, 4096)
        if not chunk:
            break
        chunks.append(chunk)
        if b"".join(chunks) == b"ok":
            break
    return b"".join(chunks)
