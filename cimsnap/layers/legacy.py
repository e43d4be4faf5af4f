"""The legacy (wcifs) layer layout: a layer expanded into files, for the comparison mode.

Before CimFS, Windows layers were directories of real files, merged at run time by the wcifs
filter driver; hcsshim's legacyLayerWriter (internal/wclayer/legacy.go) expands a layer tar into
such a directory.  What this project writes, concretely (its choices, listed in the README):

* ``Files\\``, ``Hives\\`` and ``UtilityVM\\Files\\`` as host trees holding the layer's own
  entries only (a delta on its parents, as wcifs layers are), in the host convention of
  :mod:`cimsnap.formats.cim.hostfs` (the one ``cimsnap cim create/extract`` use): Windows
  metadata in ``user.cimfs.*`` extended attributes (attributes, four FILETIMEs, raw security
  descriptor, EA chain, reparse buffer), alternate streams as ``<file>:<stream>`` siblings,
  hard links as host hard links (to a parent layer's file for a cross-layer link, as hcsshim's
  pending links do); symlinks and junctions are never host symlinks but an empty file (or
  directory) carrying the reparse buffer, so nothing on the host points anywhere;
* whiteouts in ``tombstones.txt`` as hcsshim's legacy reader expects it (UTF-8 BOM,
  ``Version 1.0``, then one ``\\<path below Files>`` per line); whiteouts inside the utility VM
  are refused (hcsshim clones the parent's utility VM for them, which this layout does not do);
* ``Hives\\<X>_BASE`` hard links and ``layout`` in a base layer; merged ``<X>_BASE`` hives in a
  non-base layer (merged with the nearest parent's host ``Hives\\<X>_BASE``);
* with a utility VM (build newer than Server 2022): ``SystemTemplateBase.vhdx`` (formatted) and
  its differencing ``SystemTemplate.vhdx``; the BCD and SYSTEM hive are left as they came (a
  wcifs utility VM does not boot from a CIM).  The container scratch template pair of the wcifs
  mode (``blank-base.vhdx``, ``blank.vhdx``) is the snapshotter's, made in the base layer's
  directory when a container first needs it.

:func:`export_legacy_layer` writes such a directory back as a layer tar.
"""

from __future__ import annotations

import contextlib
import os
import stat as stat_module
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from cimsnap.errors import CimsnapError
from cimsnap.formats import vhdx
from cimsnap.formats.cim.hostfs import (
    STREAM_SEPARATOR,
    XATTR_ATTRIBUTES,
    XATTR_CHANGE_TIME,
    XATTR_CREATION_TIME,
    XATTR_EAS,
    XATTR_LAST_ACCESS_TIME,
    XATTR_LAST_WRITE_TIME,
    XATTR_REPARSE,
    XATTR_SD,
)
from cimsnap.formats.cim.metadata import ns_from_filetime
from cimsnap.formats.wintar import (
    EntryKind,
    FileTimes,
    WinMetadata,
    WinTarEntry,
    WinTarError,
    WinTarWriter,
    decode_ea_buffer,
    decode_reparse_point,
)
from cimsnap.layers import hostfiles, layout
from cimsnap.layers.entries import ImportResult, LayerEntryWriter, write_layer
from cimsnap.layers.errors import LayerError
from cimsnap.layers.export import ExportResult
from cimsnap.layers.hives import link_base_hives, uvm_build_number
from cimsnap.layers.metadata import cim_metadata, parent_directory_metadata

TOMBSTONES_FILE = "tombstones.txt"
# Marks a directory the layer needed but its tar did not name (it is not exported).
XATTR_IMPLICIT = "user.cimsnap.implicit_directory"
TOMBSTONES_HEADER = "\ufeffVersion 1.0"  # hcsshim readTombstones: BOM + "Version 1.0"
DIRECTORY = 0x10
REPARSE_POINT = 0x400


def _host(root: Path, layer_path: str) -> Path:
    return layout.host_path(root, layer_path)


def _check_no_symlinks(root: Path, layer_path: str) -> Path:
    """The host path of ``layer_path`` below ``root``, refusing any symlink on the way."""
    current = root
    for part in layer_path.split("\\"):
        current = current / part
        if current.is_symlink():
            raise LayerError("a host path component is a symlink", path=current)
    return current


def _set_metadata(
    path: Path,
    attributes: int,
    times: FileTimes,
    sd: bytes | None,
    eas: bytes,
    reparse: bytes | None,
) -> None:
    values = {
        XATTR_ATTRIBUTES: f"{attributes:#010x}".encode(),
        XATTR_CREATION_TIME: str(times.creation).encode(),
        XATTR_LAST_WRITE_TIME: str(times.last_write).encode(),
        XATTR_CHANGE_TIME: str(times.change).encode(),
        XATTR_LAST_ACCESS_TIME: str(times.last_access).encode(),
    }
    if sd is not None:
        values[XATTR_SD] = sd
    if eas:
        values[XATTR_EAS] = eas
    if reparse is not None:
        values[XATTR_REPARSE] = reparse
    for name, value in values.items():
        try:
            os.setxattr(path, name, value, follow_symlinks=False)
        except OSError as err:
            raise LayerError(
                f"cannot store Windows metadata ({name}, {len(value)} bytes) on the host:"
                f" {err.strerror}",
                path=path,
            ) from None
    with contextlib.suppress(OSError, OverflowError):
        os.utime(
            path,
            ns=(ns_from_filetime(times.last_access), ns_from_filetime(times.last_write)),
            follow_symlinks=False,
        )


class LegacyLayerWriter(LayerEntryWriter):
    """Expands one layer tar into a legacy layer directory (see the module docstring)."""

    def __init__(
        self,
        layer_dir: str | Path,
        parents: list[Path] | tuple[Path, ...] = (),
        *,
        source_name: str | None = None,
    ) -> None:
        self.layer_dir = Path(layer_dir).absolute()
        self.parents = [Path(p).absolute() for p in parents]
        self.source_name = source_name
        self.size = 0
        self.entries = 0
        self.has_uvm = False
        self._tombstones: list[str] = []
        self._directories: list[tuple[Path, WinTarEntry]] = []
        self._done = False
        self._created_dir = hostfiles.prepare_layer_dir(self.layer_dir)

    def _parent_dirs(self, path: str, entry: WinTarEntry) -> Path:
        host = _host(self.layer_dir, path)
        parts = host.relative_to(self.layer_dir).parts[:-1]
        current = self.layer_dir
        for part in parts:
            current = current / part
            if not current.exists():
                hostfiles.make_dirs(current.parent, (part,))
                meta = parent_directory_metadata(entry)
                times = FileTimes(
                    meta.creation_time,
                    meta.last_write_time,
                    meta.change_time,
                    meta.last_access_time,
                )
                _set_metadata(current, meta.attributes, times, None, b"", None)
                os.setxattr(current, XATTR_IMPLICIT, b"1", follow_symlinks=False)
            elif current.is_symlink() or not current.is_dir():
                raise LayerError("a path component on the host is not a directory", path=current)
        return host

    def _add(self, entry: WinTarEntry) -> None:
        path = entry.path
        if layout.fold(path) == layout.fold(layout.UTILITY_VM):
            self.has_uvm = True
        meta = cim_metadata(entry)
        host = self._parent_dirs(path, entry)
        is_dir = meta.is_directory
        if host.exists() or host.is_symlink():
            if host.is_dir() and not host.is_symlink():
                if not is_dir:
                    raise LayerError("the layer has a directory and a file of the same name")
            else:
                host.unlink()  # the tar writes this file twice: the last one wins
        if is_dir:
            with contextlib.suppress(FileExistsError):
                host.mkdir(mode=0o755)
            with contextlib.suppress(OSError):
                os.removexattr(host, XATTR_IMPLICIT, follow_symlinks=False)
            self._directories.append((host, entry))
        elif entry.kind is EntryKind.FILE:
            hostfiles.write_new_file(host, entry.data, entry.size)  # type: ignore[arg-type]
            self.size += entry.size
        else:
            hostfiles.write_new_file(host, b"")
        if not is_dir:
            self._apply(host, entry)

    def _apply(self, host: Path, entry: WinTarEntry) -> None:
        meta = cim_metadata(entry)
        _set_metadata(
            host,
            meta.attributes,
            entry.times,
            meta.security_descriptor,
            meta.extended_attributes,
            meta.reparse_buffer,
        )

    def _add_stream(self, entry: WinTarEntry) -> None:
        owner = _host(self.layer_dir, entry.path)
        if not owner.is_file() or owner.is_symlink():
            raise LayerError("alternate stream of a file this layer does not have")
        sidecar = owner.with_name(f"{owner.name}{STREAM_SEPARATOR}{entry.stream_name}")
        with contextlib.suppress(FileNotFoundError):
            sidecar.unlink()
        hostfiles.write_new_file(sidecar, entry.data, entry.size)  # type: ignore[arg-type]

    def _add_link(self, entry: WinTarEntry) -> None:
        target = entry.link_target
        assert target is not None
        source = None
        for root in (self.layer_dir, *self.parents):
            candidate = _host(root, target)
            if candidate.is_file() and not candidate.is_symlink():
                source = _check_no_symlinks(root, target)
                break
        if source is None:
            raise LayerError(
                f"hard link target {target} does not exist in the layer or its parents"
            )
        host = self._parent_dirs(entry.path, entry)
        if host.exists() or host.is_symlink():
            if host.is_dir() and not host.is_symlink():
                raise LayerError("a hard link would replace a directory")
            host.unlink()
        os.link(source, host, follow_symlinks=False)
        # Streams belong to the file, not to a name: every name gets the stream siblings.
        for sidecar in sorted(
            source.parent.glob(f"{_glob_escape(source.name)}{STREAM_SEPARATOR}*")
        ):
            stream = sidecar.name[len(source.name) :]
            os.link(sidecar, host.with_name(host.name + stream), follow_symlinks=False)

    def _remove(self, path: str) -> None:
        if not layout.fold(path).startswith(layout.fold(layout.FILES) + "\\"):
            raise LayerError("whiteouts inside UtilityVM are not supported in the legacy layout")
        host = _host(self.layer_dir, path)
        if host.is_dir() and not host.is_symlink():
            import shutil

            shutil.rmtree(host)
        elif host.exists() or host.is_symlink():
            host.unlink()
        self._tombstones.append(path[len(layout.FILES) :])  # "\Windows\notepad.exe"

    def _opaque(self, directory: str) -> None:
        names: set[str] = set()
        for parent in self.parents:
            host = _host(parent, directory)
            if host.is_dir() and not host.is_symlink():
                names.update(n for n in os.listdir(host) if STREAM_SEPARATOR not in n)
        for name in sorted(names):
            self._tombstones.append(f"{directory}\\{name}"[len(layout.FILES) :])

    def close(self) -> ImportResult:
        if self._done:
            raise LayerError("the layer writer is already closed", path=self.layer_dir)
        result = ImportResult(self.layer_dir, self.size, self.entries)
        try:
            process_uvm = False
            if self.has_uvm:
                build = uvm_build_number(_host(self.layer_dir, layout.UVM_SOFTWARE_HIVE))
                hostfiles.write_new_file(
                    self.layer_dir / layout.UVM_BUILD_FILE, str(build).encode("ascii")
                )
                result.uvm_build = build
                process_uvm = build > layout.LTSC2022_BUILD
            if not self.parents:
                link_base_hives(self.layer_dir)
                hostfiles.write_new_file(
                    self.layer_dir / layout.LAYOUT_FILE, layout.LAYOUT_CONTENTS
                )
            else:
                result.merged_hives = self._merge_hives()
            if process_uvm:
                self._uvm_templates()
            text = "\n".join([TOMBSTONES_HEADER, *self._tombstones]) + "\n"
            hostfiles.write_new_file(self.layer_dir / TOMBSTONES_FILE, text.encode("utf-8"))
            for host, entry in reversed(self._directories):  # children changed their times
                self._apply(host, entry)
        except BaseException as err:
            self.abort()
            if isinstance(err, CimsnapError) and not isinstance(err, LayerError):
                raise LayerError(f"{err}", path=self.layer_dir) from err
            raise
        self._done = True
        return result

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        hostfiles.discard_layer_dir(self.layer_dir, self._created_dir)

    def _merge_hives(self) -> list[str]:
        from cimsnap.formats.regf import Hive, merge_into

        merged = []
        for hive in layout.HIVE_TABLE:
            delta = _host(self.layer_dir, hive.delta_path)
            if not delta.is_file():
                continue
            base_path = _host(self.parents[0], hive.base_path)
            if not base_path.is_file():
                raise LayerError(
                    f"the parent layer has no {hive.base_path} to merge {hive.delta_path} into",
                    path=self.parents[0],
                )
            try:
                base = Hive.open(base_path, recover=False)
                merge_into(base, Hive.open(delta, recover=False))
                base.save(_host(self.layer_dir, hive.base_path))
            except CimsnapError as err:
                raise LayerError(f"merging {hive.delta_path}: {err}", path=self.layer_dir) from err
            merged.append(hive.base_path)
        return merged

    def _uvm_templates(self) -> None:
        from cimsnap.scratch import create_scratch

        uvm = _host(self.layer_dir, layout.UTILITY_VM)
        base, template = uvm / layout.UVM_BASE_VHD, uvm / layout.UVM_TEMPLATE_VHD
        try:
            create_scratch(base, size=layout.UVM_VHD_SIZE, block_size=layout.UVM_VHD_BLOCK_SIZE)
            vhdx.create_differencing(template, base, block_size=layout.UVM_VHD_BLOCK_SIZE)
        except BaseException:
            for leftover in (template, base):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
            raise


def import_legacy_layer(
    stream: BinaryIO,
    layer_dir: str | Path,
    parents: list[Path] | tuple[Path, ...] = (),
    *,
    name: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> ImportResult:
    """Expand the layer tar read from ``stream`` into a legacy layer directory."""
    writer = LegacyLayerWriter(layer_dir, parents, source_name=name)
    return write_layer(writer, stream, name=name, progress=progress)


# --- export -----------------------------------------------------------------------------------


def _read_metadata(path: Path) -> tuple[WinMetadata, bytes | None]:
    try:
        names = set(os.listxattr(path, follow_symlinks=False))
    except OSError:
        names = set()

    def get(name: str) -> bytes | None:
        return os.getxattr(path, name, follow_symlinks=False) if name in names else None

    def number(name: str, fallback: int) -> int:
        raw = get(name)
        if raw is None:
            return fallback
        try:
            return int(raw.decode("ascii"), 0)
        except ValueError:
            raise LayerError(f"extended attribute {name} is not a number", path=path) from None

    st = os.lstat(path)
    from cimsnap.formats.cim.metadata import filetime_from_ns

    is_dir = stat_module.S_ISDIR(st.st_mode)
    attributes = number(XATTR_ATTRIBUTES, DIRECTORY if is_dir else 0x20)
    times = FileTimes(
        number(XATTR_CREATION_TIME, filetime_from_ns(st.st_mtime_ns)),
        number(XATTR_LAST_WRITE_TIME, filetime_from_ns(st.st_mtime_ns)),
        number(XATTR_CHANGE_TIME, filetime_from_ns(st.st_ctime_ns)),
        number(XATTR_LAST_ACCESS_TIME, filetime_from_ns(st.st_atime_ns)),
    )
    eas_raw = get(XATTR_EAS)
    eas = tuple(decode_ea_buffer(eas_raw)) if eas_raw else ()
    return WinMetadata(attributes, times, get(XATTR_SD), eas), get(XATTR_REPARSE)


def _walk(root: Path, top: str) -> Iterator[tuple[str, Path, bool]]:
    """(layer path, host path, is_dir) below ``root/top``, parents first, names sorted."""
    start = _host(root, top)
    if not start.is_dir() or start.is_symlink():
        return
    stack = [(top, start)]
    while stack:
        path, host = stack.pop()
        yield path, host, True
        names = sorted(n for n in os.listdir(host) if STREAM_SEPARATOR not in n)
        subdirs = []
        for name in names:
            child, child_host = f"{path}\\{name}", host / name
            if child_host.is_symlink():
                raise LayerError("a legacy layer never holds host symlinks", path=child_host)
            if child_host.is_dir():
                subdirs.append((child, child_host))
            else:
                yield child, child_host, False
        stack.extend(reversed(subdirs))


def export_legacy_layer(
    layer_dir: str | Path,
    out: BinaryIO,
    parents: list[Path] | tuple[Path, ...] = (),
    *,
    progress: Callable[[ExportResult], None] | None = None,
) -> ExportResult:
    """Write the legacy layer at ``layer_dir`` as a layer tar."""
    layer_dir = Path(layer_dir).absolute()
    if not (layer_dir / TOMBSTONES_FILE).is_file():
        raise LayerError(f"not a legacy layer directory (no {TOMBSTONES_FILE})", path=layer_dir)
    result = ExportResult()
    tombstones = _read_tombstones(layer_dir)
    writer = WinTarWriter(out, stream_data_suffix=True)
    first: dict[tuple[int, int], str] = {}
    parent_inodes: dict[tuple[int, int], str] | None = None
    generated = {layout.fold(h.base_path) for h in layout.HIVE_TABLE}

    def count() -> None:
        result.entries += 1
        if progress is not None:
            progress(result)

    try:
        for top in (layout.FILES, layout.HIVES, layout.UTILITY_VM):
            for path, host, is_dir in _walk(layer_dir, top):
                folded = layout.fold(path)
                if folded in generated:
                    continue
                if path == layout.UTILITY_VM:
                    writer.add_directory(path, _read_metadata(host)[0])
                    count()
                    continue
                if folded.startswith("utilityvm\\") and not folded.startswith("utilityvm\\files"):
                    continue
                if (
                    path == layout.HIVES
                    and not parents
                    and all(layout.fold(f"{path}\\{n}") in generated for n in os.listdir(host))
                ):
                    continue
                meta, reparse = _read_metadata(host)
                if is_dir and reparse is None:
                    if not _is_implicit(host):
                        writer.add_directory(path, meta)
                        count()
                    for gone in tombstones.pop(folded, []):
                        writer.add_whiteout(gone)
                        result.whiteouts += 1
                        count()
                    continue
                if reparse is not None:
                    point = decode_reparse_point(reparse)
                    writer.add_symlink(path, meta, point.target, mount_point=point.is_mount_point)
                    count()
                    continue
                st = os.lstat(host)
                key = (st.st_dev, st.st_ino)
                if key in first:
                    writer.add_hardlink(path, first[key], meta)
                    result.links += 1
                    count()
                    continue
                if st.st_nlink > 1 and parents:
                    if parent_inodes is None:
                        parent_inodes = _inodes(parents)
                    if key in parent_inodes:
                        writer.add_hardlink(path, parent_inodes[key], meta)
                        result.links += 1
                        count()
                        continue
                first[key] = path
                with open(host, "rb") as data:
                    writer.add_file(path, meta, data, st.st_size)
                result.files += 1
                result.bytes += st.st_size
                for sidecar in sorted(
                    host.parent.glob(f"{_glob_escape(host.name)}{STREAM_SEPARATOR}*")
                ):
                    stream_name = sidecar.name[len(host.name) + 1 :]
                    with open(sidecar, "rb") as data:
                        size = os.fstat(data.fileno()).st_size
                        writer.add_stream(path, stream_name, data, size)
                    result.bytes += size
                count()
        for remaining in tombstones.values():  # whiteouts below directories the layer lacks
            for gone in remaining:
                writer.add_whiteout(gone)
                result.whiteouts += 1
                count()
        writer.close()
    except WinTarError as err:
        raise LayerError(f"cannot write the layer tar: {err}", path=layer_dir) from err
    return result


def _is_implicit(path: Path) -> bool:
    try:
        return XATTR_IMPLICIT in os.listxattr(path, follow_symlinks=False)
    except OSError:
        return False


def _glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


def _read_tombstones(layer_dir: Path) -> dict[str, list[str]]:
    """Directory (folded layer path) -> whiteout layer paths, from tombstones.txt."""
    lines = (layer_dir / TOMBSTONES_FILE).read_text("utf-8").splitlines()
    if not lines or lines[0] != TOMBSTONES_HEADER:
        raise LayerError("invalid tombstones file", path=layer_dir / TOMBSTONES_FILE)
    out: dict[str, list[str]] = {}
    for line in lines[1:]:
        if not line:
            continue
        if not line.startswith("\\") or "\\..\\" in line + "\\" or line.endswith("\\.."):
            raise LayerError(f"invalid tombstone {line!r}", path=layer_dir / TOMBSTONES_FILE)
        path = layout.FILES + line
        directory = path.rsplit("\\", 1)[0]
        out.setdefault(layout.fold(directory), []).append(path)
    return out


def _inodes(parents: list[Path] | tuple[Path, ...]) -> dict[tuple[int, int], str]:
    found: dict[tuple[int, int], str] = {}
    for parent in parents:
        for top in (layout.FILES, layout.UTILITY_VM_FILES):
            for path, host, is_dir in _walk(parent, top):
                if not is_dir:
                    st = os.lstat(host)
                    found.setdefault((st.st_dev, st.st_ino), path)
    return found
