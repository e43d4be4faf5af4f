"""Host directory trees <-> CIM images: ``cim create`` (import) and ``cim extract`` (export).

How Windows metadata is kept on a Linux tree (the same names the FUSE mount shows; listed in
:data:`XATTRS`):

* ``user.cimfs.attributes``: FILE_ATTRIBUTE_* as text (``0x00000021``);
* ``user.cimfs.creation_time``, ``user.cimfs.change_time``: FILETIMEs as decimal text (Linux has
  no settable birth or change time); ``user.cimfs.last_write_time`` and
  ``user.cimfs.last_access_time`` only when mtime/atime cannot hold the FILETIME exactly (e.g.
  before 1901 on ext4);
* ``user.cimfs.sd``, ``user.cimfs.eas``, ``user.cimfs.reparse``: the raw self-relative security
  descriptor, FILE_FULL_EA_INFORMATION chain and reparse buffer;
* alternate data streams are sibling files named ``<file>:<stream>`` (as WSL shows
  ``Zone.Identifier`` streams; ``:`` cannot occur in a Windows name, so nothing collides).

Extended attributes win over stat() when both are present.  Without them, ``cim create`` derives:
directories get DIRECTORY, files ARCHIVE, plus READONLY when the owner cannot write and
SPARSE_FILE when the file has holes; times come from mtime/atime/ctime (creation = mtime);
symbolic links become IO_REPARSE_TAG_SYMLINK reparse points.  Hard links are kept both ways.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cimsnap.errors import AlreadyExistsError, UsageError
from cimsnap.formats.cim.format import (
    FILE_ATTRIBUTE_ARCHIVE,
    FILE_ATTRIBUTE_DIRECTORY,
    FILE_ATTRIBUTE_READONLY,
    FILE_ATTRIBUTE_REPARSE_POINT,
    FILE_ATTRIBUTE_SPARSE_FILE,
)
from cimsnap.formats.cim.metadata import (
    FileMetadata,
    filetime_from_ns,
    ns_from_filetime,
    symlink_reparse_buffer,
)
from cimsnap.formats.cim.names import Collation, check_name
from cimsnap.formats.cim.reader import CimFile, CimImage, CimStat
from cimsnap.formats.cim.writer import CimWriter, write_nonzero

XATTR_ATTRIBUTES = "user.cimfs.attributes"
XATTR_CREATION_TIME = "user.cimfs.creation_time"
XATTR_LAST_WRITE_TIME = "user.cimfs.last_write_time"
XATTR_CHANGE_TIME = "user.cimfs.change_time"
XATTR_LAST_ACCESS_TIME = "user.cimfs.last_access_time"
XATTR_SD = "user.cimfs.sd"
XATTR_EAS = "user.cimfs.eas"
XATTR_REPARSE = "user.cimfs.reparse"
XATTR_STREAM_PREFIX = "user.cimfs.stream."  # FUSE mount only: alternate stream contents
XATTR_FILE_ID = "user.cimfs.file_id"  # FUSE mount only
XATTRS = (
    XATTR_ATTRIBUTES,
    XATTR_CREATION_TIME,
    XATTR_LAST_WRITE_TIME,
    XATTR_CHANGE_TIME,
    XATTR_LAST_ACCESS_TIME,
    XATTR_SD,
    XATTR_EAS,
    XATTR_REPARSE,
)
STREAM_SEPARATOR = ":"
COPY_CHUNK = 1 << 20
_NOATIME = os.O_CLOEXEC | getattr(os, "O_NOATIME", 0)


@dataclass
class TreeStats:
    """What an import or export did."""

    directories: int = 0
    files: int = 0
    hard_links: int = 0
    streams: int = 0
    bytes: int = 0


# --- import: host tree -> image ---------------------------------------------------------------


def create_from_directory(
    image_path: str | os.PathLike[str],
    source: str | os.PathLike[str],
    *,
    parent: str | os.PathLike[str] | None = None,
    deterministic: bool = False,
    overwrite: bool = False,
    durable: bool = True,
    progress: Callable[[TreeStats], None] | None = None,
) -> TreeStats:
    """Build ``image_path`` from the host directory ``source`` (a fork of ``parent`` if given,
    whose view is then the parent overlaid by ``source``).  Nothing is left behind on error."""
    source = Path(source)
    if not source.is_dir():
        raise UsageError("source is not a directory", path=source)
    stats = TreeStats()
    with CimWriter.create(
        image_path, parent, deterministic=deterministic, overwrite=overwrite, durable=durable
    ) as writer:
        importer = _Importer(writer, stats, progress)
        importer.add_directory(source, "")
    return stats


class _Importer:
    def __init__(
        self,
        writer: CimWriter,
        stats: TreeStats,
        progress: Callable[[TreeStats], None] | None,
    ) -> None:
        self.writer = writer
        self.stats = stats
        self.progress = progress
        self.inodes: dict[tuple[int, int], str] = {}

    def add_directory(self, host: Path, image: str) -> None:
        """Add ``host`` (metadata) at ``image`` and everything below it, depth first."""
        self._add_dir(host, image)
        stack = [(host, image)]
        while stack:
            host_dir, image_dir = stack.pop()
            subdirs = self._add_entries(host_dir, image_dir)
            stack.extend(reversed(subdirs))

    def _add_dir(self, host: Path, image: str, st: os.stat_result | None = None) -> None:
        if st is None:
            st = os.lstat(host)
        self.writer.add(image or "\\", self._metadata(host, None, st, is_dir=True))
        self.stats.directories += 1

    def _add_entries(self, host_dir: Path, image_dir: str) -> list[tuple[Path, str]]:
        # Once per file: stat and open relative to the directory's descriptor, no Path objects
        # unless something needs reporting.
        dir_fd = _open_noatime(host_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with os.scandir(dir_fd) as listing:
                entries = sorted(listing, key=_entry_name)
            collation = self.writer.collation
            seen: dict[bytes, str] = {}
            subdirs = []
            streams = []
            for entry in entries:
                name = entry.name
                if STREAM_SEPARATOR in name:
                    streams.append(name)
                    continue
                try:
                    check_name(name)
                except UsageError as err:
                    raise UsageError(
                        f"cannot store this name in an image: {err.message}", path=host_dir / name
                    ) from None
                key = collation.key(name)
                if key in seen:
                    raise UsageError(
                        f"names {seen[key]!r} and {name!r} differ only in case", path=host_dir
                    )
                seen[key] = name
                image = f"{image_dir}\\{name}"
                # The common case: a regular file (as the directory entry says, no system call)
                # is opened and stat()ed through its descriptor.
                if entry.is_file(follow_symlinks=False) and self._add_regular(
                    dir_fd, host_dir, name, image
                ):
                    continue
                st = entry.stat(follow_symlinks=False)
                mode = st.st_mode
                if stat.S_ISDIR(mode):
                    host = host_dir / name
                    self._add_dir(host, image, st)  # now, so that its stream sidecars find it
                    subdirs.append((host, image))
                elif stat.S_ISREG(mode):
                    self._add_file(dir_fd, host_dir, name, image, st)
                elif stat.S_ISLNK(mode):
                    self._add_symlink(host_dir / name, image, st)
                else:
                    raise UsageError(
                        "special files (devices, FIFOs, sockets) cannot be stored",
                        path=host_dir / name,
                    )
            for name in streams:
                self._add_stream(dir_fd, host_dir, image_dir, name, seen, collation)
        finally:
            os.close(dir_fd)
        return subdirs

    def _add_stream(
        self,
        dir_fd: int,
        host_dir: Path,
        image_dir: str,
        name: str,
        seen: dict[bytes, str],
        collation: Collation,
    ) -> None:
        base, _, stream_name = name.partition(STREAM_SEPARATOR)
        if collation.key(base) not in seen or not stream_name:
            raise UsageError(
                f"{name!r} looks like an alternate stream of a missing file {base!r}",
                path=host_dir,
            )
        if not stat.S_ISREG(os.lstat(name, dir_fd=dir_fd).st_mode):
            raise UsageError("an alternate stream must be a regular file", path=host_dir / name)
        with io.FileIO(_open_noatime(name, os.O_RDONLY, dir_fd=dir_fd), "rb") as data:
            size = os.fstat(data.fileno()).st_size
            self.writer.add_stream(f"{image_dir}\\{base}", stream_name, data, size=size)
        self.stats.streams += 1
        self.stats.bytes += size

    def _add_regular(self, dir_fd: int, host_dir: Path, name: str, image: str) -> bool:
        """Add the regular file ``name``; False if it is something else by now (the caller
        then looks again).  O_NOFOLLOW and O_NONBLOCK: a name that became a symbolic link or a
        FIFO since the listing is neither followed nor waited for."""
        try:
            fd = _open_noatime(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.ENOENT, errno.ENXIO):
                return False
            raise
        with io.FileIO(fd, "rb") as data:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return False
            self._add_file(dir_fd, host_dir, name, image, st, data)
        return True

    def _add_file(
        self,
        dir_fd: int,
        host_dir: Path,
        name: str,
        image: str,
        st: os.stat_result,
        opened: io.FileIO | None = None,
    ) -> None:
        if st.st_nlink > 1:
            inode = (st.st_dev, st.st_ino)
            first = self.inodes.get(inode)
            if first is not None:
                self.writer.add_link(image, first)
                self.stats.hard_links += 1
                return
            self.inodes[inode] = image
        # One descriptor for everything: xattrs, holes, data (opening costs per file).  An
        # unbuffered FileIO: the writer reads whole objects, a buffer would only copy twice.
        if opened is None:
            with io.FileIO(_open_noatime(name, os.O_RDONLY, dir_fd=dir_fd), "rb") as data:
                self._add_data(data, host_dir, name, image, st)
        else:
            self._add_data(opened, host_dir, name, image, st)
        self._counted_file(st.st_size)

    def _add_data(
        self, data: io.FileIO, host_dir: Path, name: str, image: str, st: os.stat_result
    ) -> None:
        fd = data.fileno()
        size = st.st_size
        meta = self._metadata(host_dir, name, st, is_dir=False, fd=fd)
        if meta.attributes & FILE_ATTRIBUTE_SPARSE_FILE and _all_hole(fd, size):
            self.writer.add(image, meta, size=size)  # a sparse stream, no data
        else:
            self.writer.add(image, meta, data, size=size)

    def _add_symlink(self, host: Path, image: str, st: os.stat_result) -> None:
        self.writer.add(image, self._metadata(host, None, st, is_dir=False))
        self._counted_file(st.st_size)

    def _counted_file(self, size: int) -> None:
        stats = self.stats
        stats.files += 1
        stats.bytes += size
        if self.progress is not None:
            self.progress(stats)

    def _metadata(
        self,
        where: Path,
        name: str | None,
        st: os.stat_result,
        *,
        is_dir: bool,
        fd: int | None = None,
    ) -> FileMetadata:
        """Metadata of the host file ``where / name`` (``where`` itself when ``name`` is None;
        that path is only built when needed: this runs once per file)."""

        def host() -> Path:
            return where if name is None else where / name

        symlink = stat.S_ISLNK(st.st_mode)
        if symlink:
            xattrs: dict[str, bytes] = {}
        else:
            xattrs = _read_xattrs(host() if fd is None else fd)
        reparse = xattrs.get(XATTR_REPARSE)
        if symlink:
            target = os.readlink(host())
            relative = not target.startswith("/")
            reparse = symlink_reparse_buffer(target.replace("/", "\\"), relative=relative)
            is_dir = host().is_dir()
        if XATTR_ATTRIBUTES in xattrs:
            attributes = _parse_int(xattrs[XATTR_ATTRIBUTES], host(), XATTR_ATTRIBUTES)
        else:
            attributes = FILE_ATTRIBUTE_DIRECTORY if is_dir else FILE_ATTRIBUTE_ARCHIVE
            if not st.st_mode & stat.S_IWUSR and not symlink:
                attributes |= FILE_ATTRIBUTE_READONLY
            if fd is not None and _has_holes(fd, st.st_size):
                attributes |= FILE_ATTRIBUTE_SPARSE_FILE
        if is_dir:
            attributes |= FILE_ATTRIBUTE_DIRECTORY
        else:
            attributes &= ~FILE_ATTRIBUTE_DIRECTORY
        if reparse is None:
            attributes &= ~FILE_ATTRIBUTE_REPARSE_POINT
        mtime = filetime_from_ns(st.st_mtime_ns)
        ctime = filetime_from_ns(st.st_ctime_ns)
        atime = filetime_from_ns(st.st_atime_ns)
        if not xattrs:  # the usual case: everything from stat()
            return FileMetadata(attributes, mtime, mtime, ctime, atime, None, b"", reparse)

        def time(key: str, host_time: int) -> int:
            if key in xattrs:
                return _parse_int(xattrs[key], host(), key)
            return host_time

        return FileMetadata(
            attributes=attributes,
            creation_time=time(XATTR_CREATION_TIME, mtime),
            last_write_time=time(XATTR_LAST_WRITE_TIME, mtime),
            change_time=time(XATTR_CHANGE_TIME, ctime),
            last_access_time=time(XATTR_LAST_ACCESS_TIME, atime),
            security_descriptor=xattrs.get(XATTR_SD),
            extended_attributes=xattrs.get(XATTR_EAS, b""),
            reparse_buffer=reparse,
        )


def _entry_name(entry: os.DirEntry[str]) -> str:
    return entry.name


def _open_noatime(path: Path | str, flags: int, *, dir_fd: int | None = None) -> int:
    """Open for reading without touching the access time (which is part of what we store, and
    of what a second, deterministic run would see), where the kernel allows it."""
    try:
        return os.open(path, flags | _NOATIME, dir_fd=dir_fd)
    except PermissionError:  # O_NOATIME needs ownership (or CAP_FOWNER)
        return os.open(path, flags | os.O_CLOEXEC, dir_fd=dir_fd)


def _read_xattrs(path: Path | int) -> dict[str, bytes]:
    try:
        names = os.listxattr(path)
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    return {name: os.getxattr(path, name) for name in names if name in XATTRS}


def _parse_int(raw: bytes, path: Path, name: str) -> int:
    try:
        return int(raw.decode("ascii").strip(), 0)
    except (UnicodeDecodeError, ValueError):
        raise UsageError(
            f"extended attribute {name} is not a number: {raw[:40]!r}", path=path
        ) from None


def _has_holes(fd: int, size: int) -> bool:
    if size == 0:
        return False
    try:
        return os.lseek(fd, 0, os.SEEK_HOLE) < size
    except OSError:
        return False
    finally:
        os.lseek(fd, 0, os.SEEK_SET)


def _all_hole(fd: int, size: int) -> bool:
    if size == 0:
        return False
    try:
        os.lseek(fd, 0, os.SEEK_DATA)
    except OSError as err:
        return err.errno == errno.ENXIO  # no data anywhere
    finally:
        os.lseek(fd, 0, os.SEEK_SET)
    return False


# --- export: image -> host tree ---------------------------------------------------------------


def extract_image(
    image: CimImage,
    destination: str | os.PathLike[str],
    *,
    xattrs: bool = True,
    progress: Callable[[TreeStats], None] | None = None,
) -> TreeStats:
    """Write the image's tree to ``destination`` (created; must not exist or be empty).

    The tree is built beside the destination under a temporary name and renamed into place
    at the end, so a failure leaves nothing behind.
    """
    destination = Path(destination)
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise AlreadyExistsError(
            "destination exists and is not an empty directory", path=destination
        )
    if not destination.parent.is_dir():
        raise UsageError("parent directory does not exist", path=destination.parent)
    work = destination.parent / f".{destination.name}.extract-{os.getpid()}"
    stats = TreeStats()
    try:
        _Extractor(image, work, xattrs, stats, progress).run()
        if destination.exists():
            destination.rmdir()
        os.rename(work, destination)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return stats


class _Extractor:
    def __init__(
        self,
        image: CimImage,
        root: Path,
        xattrs: bool,
        stats: TreeStats,
        progress: Callable[[TreeStats], None] | None,
    ) -> None:
        self.image = image
        self.root = root
        self.xattrs = xattrs
        self.stats = stats
        self.progress = progress
        self.first_path: dict[int, Path] = {}

    def run(self) -> None:
        directories: list[tuple[Path, CimStat]] = []
        os.mkdir(self.root, 0o755)
        for top, dirs, files in self.image.walk("\\"):
            host_dir = self._host(top)
            if top == "\\":
                root = self.image.stat(self.image.root_id)
                if root.streams:
                    raise UsageError(
                        "alternate streams of the root directory cannot be "
                        "extracted (they would land outside DESTDIR)",
                        path=self.image.path,
                    )
                directories.append((host_dir, root))
            for entry in dirs:
                host = host_dir / entry.name
                os.mkdir(host, 0o755)
                directories.append((host, self.image.stat(entry.file_id)))
                self.stats.directories += 1
            for entry in files:
                self._file(host_dir / entry.name, entry.file_id)
        # Directory metadata last: creating entries changes a directory's times.
        for host, st in reversed(directories):
            if host != self.root:
                self._streams(host, st)
            self._metadata(host, st, is_dir=True)
        self.stats.directories += 1

    def _host(self, image_dir: str) -> Path:
        parts = [p for p in image_dir.split("\\") if p]
        return self.root.joinpath(*parts)

    def _file(self, host: Path, file_id: int) -> None:
        first = self.first_path.get(file_id)
        if first is not None:
            os.link(first, host)
            self.stats.hard_links += 1
            return
        st = self.image.stat(file_id)
        with self.image.open(file_id) as source:
            _copy_out(source, host, st.size, st.sparse)
        self._streams(host, st)
        self._metadata(host, st, is_dir=False)
        self.first_path[file_id] = host
        self.stats.files += 1
        self.stats.bytes += st.size
        if self.progress is not None:
            self.progress(self.stats)

    def _streams(self, host: Path, st: CimStat) -> None:
        for info in st.streams:
            sidecar = host.with_name(f"{host.name}{STREAM_SEPARATOR}{info.name}")
            with self.image.open(st.file_id, info.name) as source:
                _copy_out(source, sidecar, info.size, info.sparse)
            # A stream has no times of its own: give the sidecar its file's.
            with contextlib.suppress(OSError, OverflowError):
                os.utime(sidecar, ns=_host_times(st))
            self.stats.streams += 1
            self.stats.bytes += info.size

    def _metadata(self, host: Path, st: CimStat, *, is_dir: bool) -> None:
        times = {
            XATTR_LAST_WRITE_TIME: st.last_write_time,
            XATTR_LAST_ACCESS_TIME: st.last_access_time,
        }
        with contextlib.suppress(OSError, OverflowError):
            os.utime(host, ns=_host_times(st))
        if self.xattrs:
            after = os.stat(host)
            values: dict[str, bytes] = {
                XATTR_ATTRIBUTES: f"{st.attributes:#010x}".encode(),
                XATTR_CREATION_TIME: str(st.creation_time).encode(),
                XATTR_CHANGE_TIME: str(st.change_time).encode(),
            }
            host_times = {
                XATTR_LAST_WRITE_TIME: after.st_mtime_ns,
                XATTR_LAST_ACCESS_TIME: after.st_atime_ns,
            }
            for name, filetime in times.items():
                if filetime_from_ns(host_times[name]) != filetime:
                    values[name] = str(filetime).encode()
            if st.security_descriptor is not None:
                values[XATTR_SD] = st.security_descriptor
            if st.extended_attributes:
                values[XATTR_EAS] = st.extended_attributes
            if st.reparse_buffer is not None:
                values[XATTR_REPARSE] = st.reparse_buffer
            for name, value in values.items():
                try:
                    os.setxattr(host, name, value)
                except OSError as err:
                    raise UsageError(
                        f"cannot set extended attribute {name} ({len(value)} bytes): "
                        f"{err.strerror}; extract without Windows metadata (--no-xattrs) or to "
                        "a filesystem with larger user xattrs",
                        path=host,
                    ) from None
            # setxattr changes ctime only; re-apply the times in case the filesystem moved them.
            with contextlib.suppress(OSError, OverflowError):
                os.utime(host, ns=_host_times(st))
        if st.attributes & FILE_ATTRIBUTE_READONLY and not is_dir:
            os.chmod(host, 0o444)


def _host_times(st: CimStat) -> tuple[int, int]:
    """(atime, mtime) in ns for os.utime."""
    return ns_from_filetime(st.last_access_time), ns_from_filetime(st.last_write_time)


def _copy_out(source: CimFile, host: Path, size: int, sparse: bool) -> None:
    """Write one stream to a new host file; zero blocks become holes."""
    fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        if not sparse:
            position = 0
            while position < size:
                chunk = source.pread(min(COPY_CHUNK, size - position), position)
                if not chunk:
                    break
                write_nonzero(fd, chunk, len(chunk), position)  # zero pages stay holes
                position += len(chunk)
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
