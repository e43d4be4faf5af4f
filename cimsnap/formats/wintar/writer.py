"""Writer of Windows layer tars, emitting what hcsshim's exporter emits.

hcsshim's ExportLayerToTar (pkg/ociwclayer/export.go) builds each header with go-winio's
BasicInfoHeader and WriteTarFileFromBackupStream and writes it with Go's archive/tar; this
writer reproduces those headers field by field and :class:`TarWriter` reproduces Go's encoding,
so the bytes match:

* files, directories, symlinks: PAX format, name with forward slashes, mode ``0100000`` /
  ``040000`` / ``0120000`` (plus ``040000`` for directory symlinks), mtime/atime/ctime from the
  last-write/access/change times, records ``MSWINDOWS.fileattr``, ``LIBARCHIVE.creationtime``,
  ``MSWINDOWS.rawsd``, ``MSWINDOWS.xattr.<name>``, ``MSWINDOWS.mountpoint=1``; a symlink's link
  name is its target with backslashes, as Windows reports it;
* alternate streams: right after their file, named ``<file>:<stream>``, with the file's mode
  and times and no Windows records (``stream_data_suffix=True`` appends ``:$DATA``, the form
  hcsshim's CIM importer insists on; go-winio's writer does not write it);
* hard links: mode ``0644``, the file's attributes and times, link name with forward slashes;
* whiteouts: a bare ustar header ``<dir>/.wh.<name>`` (mode 0, time 0, size 0).

Regular files always get mode ``0100000`` (newer Windows versions report a data stream even for
empty files; older ones did not, and go-winio then wrote mode 0 for empty files).  Every path
is checked with the reader's rules, so the writer never produces a tar the reader refuses.
After an error the writer refuses further use; write to a temporary file and rename on success.
"""

from __future__ import annotations

import base64
import io
from typing import BinaryIO

from cimsnap.formats.secdesc import SecurityDescriptorError, parse_security_descriptor
from cimsnap.formats.wintar import paths
from cimsnap.formats.wintar.ea import check_ea_name, check_unique_names
from cimsnap.formats.wintar.errors import WinTarError
from cimsnap.formats.wintar.model import EntryKind, WinMetadata, WinTarEntry
from cimsnap.formats.wintar.records import (
    FILE_ATTRIBUTE_DIRECTORY,
    FILE_ATTRIBUTE_REPARSE_POINT,
    MODE_DIRECTORY,
    MODE_HARDLINK,
    MODE_REGULAR,
    MODE_SYMLINK,
    MOUNT_POINT_VALUE,
    OPAQUE_WHITEOUT,
    PAX_CREATION_TIME,
    PAX_EA_PREFIX,
    PAX_FILE_ATTRIBUTES,
    PAX_MOUNT_POINT,
    PAX_RAW_SD,
    WHITEOUT_PREFIX,
)
from cimsnap.formats.wintar.reparse import encode_reparse_point
from cimsnap.formats.wintar.tarstream import (
    TYPE_DIR,
    TYPE_LINK,
    TYPE_REG,
    TYPE_SYMLINK,
    TarHeaderSpec,
    TarWriter,
)
from cimsnap.formats.wintar.times import FILETIME_MAX, filetime_to_unix_ns, format_pax_time

DataSource = bytes | bytearray | memoryview | BinaryIO


class WinTarWriter:
    """Write a Windows layer tar to ``fileobj``; call :meth:`close` (or use ``with``) to finish.

    Paths are layer-relative Windows paths (``Files\\Windows\\win.ini``; ``/`` is accepted too).
    """

    def __init__(self, fileobj: BinaryIO, *, stream_data_suffix: bool = False) -> None:
        self._tar = TarWriter(fileobj)
        self._stream_suffix = stream_data_suffix
        self._owner: tuple[str, TarHeaderSpec] | None = None
        self._failed = False

    # -- public API ----------------------------------------------------------------------

    def add_directory(self, path: str, meta: WinMetadata) -> None:
        self._run(self._add_directory, path, meta)

    def add_file(
        self, path: str, meta: WinMetadata, data: DataSource = b"", size: int | None = None
    ) -> None:
        """A regular file; ``data`` is bytes or a stream giving exactly ``size`` bytes."""
        self._run(self._add_file, path, meta, data, size)

    def add_stream(
        self, path: str, stream_name: str, data: DataSource = b"", size: int | None = None
    ) -> None:
        """An alternate data stream of ``path``, which must be the entry written just before
        (or whose other streams were)."""
        self._run(self._add_stream, path, stream_name, data, size)

    def add_symlink(
        self, path: str, meta: WinMetadata, target: str, *, mount_point: bool = False
    ) -> None:
        """A symbolic link (or, with ``mount_point``, a junction) to the Windows path ``target``."""
        self._run(self._add_symlink, path, meta, target, mount_point)

    def add_hardlink(self, path: str, target: str, meta: WinMetadata) -> None:
        """A hard link ``path`` to the earlier (or parent-layer) file ``target``."""
        self._run(self._add_hardlink, path, target, meta)

    def add_whiteout(self, path: str) -> None:
        """Remove ``path`` (below Files or UtilityVM\\Files) from the parent layers."""
        self._run(self._add_whiteout, path)

    def add_opaque_whiteout(self, directory: str) -> None:
        """Mark ``directory`` opaque (overlay's ``.wh..wh..opq``; hcsshim ignores it)."""
        self._run(self._add_opaque, directory)

    def add_entry(self, entry: WinTarEntry, data: DataSource | None = None) -> None:
        """Write an entry as read by the reader (``data`` defaults to ``entry.data``)."""
        source: DataSource = entry.data if data is None else data  # type: ignore[assignment]
        if entry.kind is EntryKind.FILE:
            self.add_file(entry.path, entry.metadata, source, entry.size)
        elif entry.kind is EntryKind.DIRECTORY:
            self.add_directory(entry.path, entry.metadata)
        elif entry.kind is EntryKind.SYMLINK:
            assert entry.link_target is not None
            self.add_symlink(
                entry.path, entry.metadata, entry.link_target, mount_point=entry.is_mount_point
            )
        elif entry.kind is EntryKind.HARDLINK:
            assert entry.link_target is not None
            self.add_hardlink(entry.path, entry.link_target, entry.metadata)
        elif entry.kind is EntryKind.STREAM:
            assert entry.stream_name is not None
            self.add_stream(entry.path, entry.stream_name, source, entry.size)
        elif entry.kind is EntryKind.WHITEOUT:
            self.add_whiteout(entry.path)
        else:
            self.add_opaque_whiteout(entry.path)

    def close(self) -> None:
        """Write the end-of-archive marker (nothing more after an error)."""
        if not self._failed:
            self._run(self._tar.close)

    def __enter__(self) -> WinTarWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()

    # -- implementation ------------------------------------------------------------------

    def _run(self, method: object, *args: object) -> None:
        if self._failed:
            raise WinTarError("tar writer cannot continue after an earlier error")
        try:
            method(*args)  # type: ignore[operator]
        except BaseException:
            self._failed = True
            raise

    @staticmethod
    def _path(path: str) -> str:
        try:
            return paths.layer_path(path)
        except paths.UnsafePathError as exc:
            raise WinTarError(str(exc), inner=path) from None

    def _spec(
        self, path: str, typeflag: str, mode: int, meta: WinMetadata, attributes: int
    ) -> TarHeaderSpec:
        """backuptar.BasicInfoHeader: PAX format, times, fileattr and creationtime records."""
        times = meta.times
        for value in (times.creation, times.last_write, times.change, times.last_access):
            if not 0 <= value <= FILETIME_MAX:
                raise WinTarError(f"time {value} is not a valid FILETIME", inner=path)
        if not 0 <= attributes <= 0xFFFFFFFF:
            raise WinTarError(f"attributes {attributes:#x} do not fit 32 bits", inner=path)
        return TarHeaderSpec(
            name=path.replace("\\", "/"),
            typeflag=typeflag,
            mode=mode,
            mtime_ns=filetime_to_unix_ns(times.last_write),
            atime_ns=filetime_to_unix_ns(times.last_access),
            ctime_ns=filetime_to_unix_ns(times.change),
            pax_records={
                PAX_FILE_ATTRIBUTES: str(attributes),
                PAX_CREATION_TIME: format_pax_time(filetime_to_unix_ns(times.creation)),
            },
            format_pax=True,
        )

    def _add_metadata_records(self, spec: TarHeaderSpec, meta: WinMetadata, path: str) -> None:
        sd = meta.security_descriptor
        if sd:
            try:
                parse_security_descriptor(sd)
            except SecurityDescriptorError as exc:
                raise WinTarError(exc.message, inner=path) from None
            spec.pax_records[PAX_RAW_SD] = base64.b64encode(sd).decode("ascii")
        for ea in meta.eas:
            check_ea_name(ea.name)
            if len(ea.value) > 0xFFFF:
                raise WinTarError(f"EA {ea.name!r} value exceeds 65535 bytes", inner=path)
            spec.pax_records[PAX_EA_PREFIX + ea.name] = base64.b64encode(ea.value).decode("ascii")
        check_unique_names(list(meta.eas))

    def _add_directory(self, path: str, meta: WinMetadata) -> None:
        path = self._path(path)
        if not meta.attributes & FILE_ATTRIBUTE_DIRECTORY:
            raise WinTarError("directory without FILE_ATTRIBUTE_DIRECTORY", inner=path)
        attributes = meta.attributes & ~FILE_ATTRIBUTE_REPARSE_POINT
        spec = self._spec(path, TYPE_DIR, MODE_DIRECTORY, meta, attributes)
        self._add_metadata_records(spec, meta, path)
        self._tar.write_header(spec)
        self._owner = (path, spec)

    def _add_file(self, path: str, meta: WinMetadata, data: DataSource, size: int | None) -> None:
        path = self._path(path)
        if meta.attributes & FILE_ATTRIBUTE_DIRECTORY:
            raise WinTarError("regular file with FILE_ATTRIBUTE_DIRECTORY", inner=path)
        if path in paths.SKELETON_DIRECTORIES:
            raise WinTarError(f"{path} must be a directory", inner=path)
        attributes = meta.attributes & ~FILE_ATTRIBUTE_REPARSE_POINT
        source, size = _source(data, size, path)
        spec = self._spec(path, TYPE_REG, MODE_REGULAR, meta, attributes)
        spec.size = size
        self._add_metadata_records(spec, meta, path)
        self._tar.write_header(spec)
        self._tar.copy_from(source, size)
        self._owner = (path, spec)

    def _add_symlink(self, path: str, meta: WinMetadata, target: str, mount_point: bool) -> None:
        path = self._path(path)
        if path in paths.SKELETON_DIRECTORIES:
            raise WinTarError(f"{path} must be a directory", inner=path)
        target = target.replace("/", "\\")
        encode_reparse_point(target, mount_point)  # validates the target
        attributes = meta.attributes | FILE_ATTRIBUTE_REPARSE_POINT
        mode = MODE_SYMLINK | (MODE_DIRECTORY if attributes & FILE_ATTRIBUTE_DIRECTORY else 0)
        spec = self._spec(path, TYPE_SYMLINK, mode, meta, attributes)
        spec.linkname = target
        self._add_metadata_records(spec, meta, path)
        if mount_point:
            spec.pax_records[PAX_MOUNT_POINT] = MOUNT_POINT_VALUE
        self._tar.write_header(spec)
        self._owner = (path, spec)

    def _add_stream(self, path: str, stream: str, data: DataSource, size: int | None) -> None:
        path = self._path(path)
        try:
            paths.check_stream_name(stream)
        except paths.UnsafePathError as exc:
            raise WinTarError(str(exc), inner=f"{path}:{stream}") from None
        if self._owner is None or self._owner[0] != path:
            raise WinTarError("stream must directly follow its file", inner=f"{path}:{stream}")
        owner = self._owner[1]
        source, size = _source(data, size, path)
        name = f"{owner.name}:{stream}" + (
            f":{paths.DATA_STREAM_TYPE}" if self._stream_suffix else ""
        )
        spec = TarHeaderSpec(
            name=name,
            typeflag=TYPE_REG,
            mode=owner.mode,
            size=size,
            mtime_ns=owner.mtime_ns,
            atime_ns=owner.atime_ns,
            ctime_ns=owner.ctime_ns,
            format_pax=True,
        )
        self._tar.write_header(spec)
        self._tar.copy_from(source, size)

    def _add_hardlink(self, path: str, target: str, meta: WinMetadata) -> None:
        self._owner = None
        path = self._path(path)
        target = self._path(target)
        try:
            paths.check_link_location(path, "hard link")
            paths.check_link_location(target, "hard link target")
        except paths.UnsafePathError as exc:
            raise WinTarError(str(exc), inner=path) from None
        if path == target:
            raise WinTarError("hard link to itself", inner=path)
        spec = self._spec(path, TYPE_LINK, MODE_HARDLINK, meta, meta.attributes)
        spec.linkname = target.replace("\\", "/")
        self._tar.write_header(spec)

    def _add_whiteout(self, path: str) -> None:
        self._owner = None
        path = self._path(path)
        try:
            paths.check_link_location(path, "whiteout")
        except paths.UnsafePathError as exc:
            raise WinTarError(str(exc), inner=path) from None
        parent, _, base = path.rpartition("\\")
        if base.startswith(WHITEOUT_PREFIX):
            raise WinTarError("cannot white out a name starting with .wh.", inner=path)
        self._tar.write_header(
            TarHeaderSpec(name=f"{parent}/{WHITEOUT_PREFIX}{base}".replace("\\", "/"))
        )

    def _add_opaque(self, directory: str) -> None:
        self._owner = None
        directory = self._path(directory)
        if not any(paths.is_at_or_under(directory, r) for r in paths.LINK_AND_WHITEOUT_ROOTS):
            raise WinTarError("opaque whiteout outside Files and UtilityVM\\Files", inner=directory)
        name = directory.replace("\\", "/") + "/" + OPAQUE_WHITEOUT
        self._tar.write_header(TarHeaderSpec(name=name))


def _source(data: DataSource, size: int | None, path: str) -> tuple[BinaryIO, int]:
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        if size is not None and size != len(raw):
            raise WinTarError(f"size {size} does not match {len(raw)} bytes of data", inner=path)
        return io.BytesIO(raw), len(raw)
    if size is None or size < 0:
        raise WinTarError("a size is needed when the data is a stream", inner=path)
    return data, size
