"""Export a CimFS layer as a Windows layer tar: the inverse of :mod:`.cimlayer`.

A layer's CIM is a fork of its parent's: it shows the whole merged tree.  The tar of the layer is
the difference to the parent CIM, found through the fork's FileIDs (a fork keeps the parent's
FileID for everything it does not replace, :mod:`cimsnap.formats.cim.writer`):

* a path the parent has and the layer does not: a whiteout;
* a file the layer replaced (new FileID, or the parent's FileID with a changed entry, e.g. an
  added stream): the file, its streams after it;
* a directory whose own metadata changed: the directory; a directory the layer re-created (new
  FileID where the parent had one): a whiteout, then the directory and everything below it;
* a second name of a file: a hard link to the first name written, or to the parent's name of an
  inherited file.

What the import generates is left out, so importing the tar makes the same layer again:
``layout``, ``Hives\\<X>_BASE`` (links or merged hives), and the base layer's ``Hives``
directory when it holds nothing else.  The utility VM's BCD and SYSTEM hive are written as they
were before the import changed them (kept in ``.pristine`` by the importer) when available.
Entries come in the CIM's directory order, parents before children, as hcsshim's exporter
writes them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cimsnap.errors import CimsnapError, NotFoundError
from cimsnap.formats.cim import CimDirEntry, CimImage, CimStat
from cimsnap.formats.wintar import (
    IO_REPARSE_TAG_MOUNT_POINT,
    IO_REPARSE_TAG_SYMLINK,
    WinTarError,
    WinTarWriter,
    decode_reparse_point,
)
from cimsnap.layers import layout
from cimsnap.layers.cimlayer import PRISTINE_DIR, PRISTINE_FILES
from cimsnap.layers.errors import LayerError
from cimsnap.layers.metadata import win_metadata

_GENERATED_BASES = frozenset(layout.fold(h.base_path) for h in layout.HIVE_TABLE)
_PRISTINE = frozenset(layout.fold(p) for p in PRISTINE_FILES)


@dataclass
class ExportResult:
    entries: int = 0
    files: int = 0
    bytes: int = 0
    whiteouts: int = 0
    links: int = 0


class _Exporter:
    def __init__(
        self,
        image: CimImage,
        parent: CimImage | None,
        layer_dir: Path,
        writer: WinTarWriter,
        progress: Callable[[ExportResult], None] | None,
    ) -> None:
        self.image = image
        self.parent = parent
        self.layer_dir = layer_dir
        self.writer = writer
        self.progress = progress
        self.result = ExportResult()
        self.written: dict[int, str] = {}  # FileID -> first name written
        self._parent_names: dict[int, str] | None = None

    # --- walking ----------------------------------------------------------------------------

    def run(self) -> ExportResult:
        self._directory("", self.parent is not None)
        return self.result

    def _directory(self, path: str, compare: bool) -> None:
        """Export the entries of directory ``path`` (``compare``: the parent has it, same ID)."""
        entries = self.image.scandir(path or "\\")
        parent_entries: dict[bytes, CimDirEntry] = {}
        if compare and self.parent is not None:
            collation = self.parent.collation
            parent_entries = {collation.key(e.name): e for e in self.parent.scandir(path or "\\")}
            names = {self.image.collation.key(e.name) for e in entries}
            for key, gone in parent_entries.items():
                if key not in names and not self._generated(gone.path):
                    self._whiteout(_strip(gone.path))
        for entry in entries:
            child = _strip(entry.path)
            if self._generated(child, entry):
                continue
            before = parent_entries.get(self.image.collation.key(entry.name))
            if entry.is_dir:
                self._export_directory(child, entry, before)
            else:
                self._export_file(child, entry, before)

    def _export_directory(self, path: str, entry: CimDirEntry, before: CimDirEntry | None) -> None:
        stat = self.image.stat(entry.file_id)
        if stat.reparse_buffer is not None:  # a directory symlink or junction: no contents
            if not self._unchanged(entry, before):
                if before is not None and before.is_dir:
                    self._whiteout(path)
                self._symlink(path, stat)
            return
        same = before is not None and before.is_dir and before.file_id == entry.file_id
        if same:
            assert self.parent is not None and before is not None
            if not _same_metadata(stat, self.parent.stat(before.file_id)):
                self._directory_entry(path, stat)
        else:
            if before is not None and before.is_dir:
                self._whiteout(path)  # re-created: hide everything the parent had below it
            self._directory_entry(path, stat)
        self._directory(path, same)

    def _export_file(self, path: str, entry: CimDirEntry, before: CimDirEntry | None) -> None:
        if self._unchanged(entry, before):
            return
        if before is not None and before.is_dir:
            self._whiteout(path)
        first = self.written.get(entry.file_id)
        if first is not None:
            self._hardlink(path, first)
            return
        inherited = self._inherited_name(entry.file_id)
        if inherited is not None:
            self._hardlink(path, inherited)
            return
        stat = self.image.stat(entry.file_id)
        if stat.reparse_buffer is not None:
            self._symlink(path, stat)
        else:
            self._file(path, stat)
        self.written[entry.file_id] = path

    def _unchanged(self, entry: CimDirEntry, before: CimDirEntry | None) -> bool:
        if before is None or self.parent is None or before.file_id != entry.file_id:
            return False
        return self.image.entry(entry.file_id) == self.parent.entry(before.file_id)

    def _inherited_name(self, file_id: int) -> str | None:
        """The parent's name of an unchanged parent file that this layer linked anew."""
        parent = self.parent
        if parent is None or file_id > parent.file_count:
            return None
        if self.image.entry(file_id) != parent.entry(file_id):
            return None
        if self._parent_names is None:
            self._parent_names = {}
            for _top, _dirs, files in parent.walk("\\"):
                for f in files:
                    self._parent_names.setdefault(f.file_id, _strip(f.path))
        return self._parent_names.get(file_id)

    def _generated(self, path: str, entry: CimDirEntry | None = None) -> bool:
        folded = layout.fold(_strip(path))
        if folded == layout.fold(layout.LAYOUT_FILE) or folded in _GENERATED_BASES:
            return True
        if folded == layout.fold(layout.HIVES) and self.parent is None and entry is not None:
            # The base layer's Hives holds only the generated links unless the tar had more.
            return all(
                layout.fold(f"{layout.HIVES}\\{e.name}") in _GENERATED_BASES
                for e in self.image.scandir(entry.file_id)
            )
        return False

    # --- writing ----------------------------------------------------------------------------

    def _count(self) -> None:
        self.result.entries += 1
        if self.progress is not None:
            self.progress(self.result)

    def _whiteout(self, path: str) -> None:
        self.writer.add_whiteout(path)
        self.result.whiteouts += 1
        self._count()

    def _directory_entry(self, path: str, stat: CimStat) -> None:
        self.writer.add_directory(path, win_metadata(stat))
        self._count()

    def _hardlink(self, path: str, target: str) -> None:
        stat = self.image.stat(path)
        self.writer.add_hardlink(path, target, win_metadata(stat))
        self.result.links += 1
        self._count()

    def _symlink(self, path: str, stat: CimStat) -> None:
        assert stat.reparse_buffer is not None
        if stat.reparse_tag not in (IO_REPARSE_TAG_SYMLINK, IO_REPARSE_TAG_MOUNT_POINT):
            raise LayerError(
                f"reparse point with tag {stat.reparse_tag:#x} cannot be written to a layer tar"
                " (only symlinks and mount points can)",
                path=self.image.path,
                inner=path,
            )
        point = decode_reparse_point(stat.reparse_buffer)
        meta = win_metadata(stat)
        self.writer.add_symlink(path, meta, point.target, mount_point=point.is_mount_point)
        self._count()

    def _file(self, path: str, stat: CimStat) -> None:
        meta = win_metadata(stat)
        pristine = self._pristine(path)
        if pristine is not None:
            with open(pristine, "rb") as handle:
                size = pristine.stat().st_size
                self.writer.add_file(path, meta, handle, size)
        else:
            with self.image.open_file(stat.file_id) as data:
                self.writer.add_file(path, meta, data, stat.size)  # type: ignore[arg-type]
        self.result.files += 1
        self.result.bytes += stat.size
        for info in stat.streams:
            with self.image.open_file(stat.file_id, info.name) as data:
                self.writer.add_stream(path, info.name, data, info.size)  # type: ignore[arg-type]
            self.result.bytes += info.size
        self._count()

    def _pristine(self, path: str) -> Path | None:
        if layout.fold(path) not in _PRISTINE:
            return None
        candidate = layout.host_path(self.layer_dir / PRISTINE_DIR, path)
        return candidate if candidate.is_file() and not candidate.is_symlink() else None


def _strip(path: str) -> str:
    return path.lstrip("\\")


def _same_metadata(a: CimStat, b: CimStat) -> bool:
    return (
        a.attributes,
        a.creation_time,
        a.last_write_time,
        a.change_time,
        a.last_access_time,
        a.security_descriptor,
        a.extended_attributes,
        a.reparse_buffer,
    ) == (
        b.attributes,
        b.creation_time,
        b.last_write_time,
        b.change_time,
        b.last_access_time,
        b.security_descriptor,
        b.extended_attributes,
        b.reparse_buffer,
    )


@contextlib.contextmanager
def _open_images(
    cim_path: Path, parent_cim: Path | None
) -> Iterator[tuple[CimImage, CimImage | None]]:
    with CimImage.open(cim_path) as image:
        if parent_cim is None:
            yield image, None
            return
        with CimImage.open(parent_cim) as parent:
            if not image.parent_region_sets or image.parent_region_sets[-1] != parent.region_set:
                raise LayerError(
                    f"the layer's CIM is not a fork of {parent_cim.name} (give the layer's own"
                    " parent, nearest first)",
                    path=cim_path,
                )
            yield image, parent


def export_cim_layer(
    layer_dir: str | Path,
    out: BinaryIO,
    parents: list[Path] | tuple[Path, ...] = (),
    *,
    cim_path: Path | None = None,
    parent_cims: list[Path] | tuple[Path, ...] | None = None,
    progress: Callable[[ExportResult], None] | None = None,
) -> ExportResult:
    """Write the layer at ``layer_dir`` (its CIM beside it) as a layer tar to ``out``."""
    layer_dir = Path(layer_dir).absolute()
    cim = Path(cim_path) if cim_path is not None else layout.cim_path_for(layer_dir)
    if parent_cims is None:
        parent_cims = [layout.cim_path_for(p) for p in parents]
    parent_cim = Path(parent_cims[0]) if parent_cims else None
    if not cim.is_file():
        raise LayerError("the layer has no CIM", path=cim)
    try:
        with _open_images(cim, parent_cim) as (image, parent):
            writer = WinTarWriter(out, stream_data_suffix=True)
            result = _Exporter(image, parent, layer_dir, writer, progress).run()
            writer.close()
            return result
    except WinTarError as err:
        raise LayerError(f"cannot write the layer tar: {err}", path=cim) from err
    except NotFoundError:
        raise
    except CimsnapError as err:
        if isinstance(err, LayerError):
            raise
        raise LayerError(f"{err}", path=cim) from err


__all__ = ["ExportResult", "export_cim_layer"]
