"""Import a Windows layer tar into a CimFS layer: hcsshim's CimLayerWriter, entry by entry.

Behaviour of hcsshim at the seed commit (pkg/ociwclayer/cim/import.go and
internal/wclayer/cim/{LayerWriter,process,pending}.go), facts only:

* the layer's CIM ``<snapshots>/cim-layers/<id>.cim`` is a fork of the nearest parent's CIM;
* files, directories and symlinks go straight into the CIM, alternate streams after their file,
  hard links as CIM links, whiteouts as deletions (hiding the parents' entry);
* "std files" (registry hives, delta hives, the utility VM's SYSTEM/SOFTWARE hives, its BCD and
  ``bootmgfw.efi``; :func:`cimsnap.layers.layout.is_std_file`) are written to the layer
  directory first and remembered as *pending operations*, as are hard links to them; streams on
  them and links named like them are errors;
* at the end: a layer whose tar has ``UtilityVM`` has its utility VM's build read from its
  SOFTWARE hive (written to ``uvmbuildversion``) and, when newer than Windows Server 2022, is
  processed (:mod:`.uvm`); a base layer then gets the ``Hives\\<X>_BASE`` links and the
  ``layout`` file, a non-base layer its delta hives merged with the parent's base hives; the
  pending operations are applied to the CIM in order, and the CIM is committed;
* the total size of the files is returned (what hcsshim's import returns).

Beyond hcsshim (choices, listed in the README): a directory the tar names no entry for is
created (hcsshim fails); a whiteout of a path no parent has is ignored; an opaque-directory
marker hides everything the parents have in that directory; the utility VM's BCD and SYSTEM
hive are copied to ``.pristine/`` in the layer directory before they are changed, so an export
can give them back as they came.

Failure at any point aborts the CIM (its temporary files go) and empties the layer directory.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cimsnap.errors import CimsnapError, NotFoundError
from cimsnap.formats.cim import CimImage, CimWriter, FileMetadata
from cimsnap.formats.wintar import EntryKind, WinTarEntry, filetime_from_unix_ns
from cimsnap.layers import hostfiles, layout
from cimsnap.layers.entries import ImportResult, LayerEntryWriter, write_layer
from cimsnap.layers.errors import LayerError
from cimsnap.layers.hives import link_base_hives, merge_delta_hives, uvm_build_number
from cimsnap.layers.metadata import cim_metadata, generated_metadata, parent_directory_metadata
from cimsnap.layers.uvm import UvmResult, process_utility_vm

# Where the utility VM files changed by the import are kept as they came (for export).
PRISTINE_DIR = ".pristine"
PRISTINE_FILES = (layout.BCD_FILE, layout.UVM_SYSTEM_HIVE)

Clock = Callable[[], int]  # FILETIME now
_UTILITY_VM_FOLDED = layout.fold(layout.UTILITY_VM)


def filetime_now() -> int:
    return filetime_from_unix_ns(time.time_ns())


@dataclass(frozen=True)
class _PendingAdd:
    path: str
    host: Path
    meta: FileMetadata


@dataclass(frozen=True)
class _PendingLink:
    new: str
    existing: str


class CimLayerWriter(LayerEntryWriter):
    """Writes one CIM layer from tar entries; finish with :meth:`close` or :meth:`abort`.

    ``layer_dir`` must be absent or empty.  ``parents`` are the parent layer directories,
    nearest first; their CIMs are found beside them (``parent_cims`` overrides that, as the
    snapshotter's mount options do).
    """

    def __init__(
        self,
        layer_dir: str | Path,
        parents: list[Path] | tuple[Path, ...] = (),
        *,
        cim_path: Path | None = None,
        parent_cims: list[Path] | tuple[Path, ...] | None = None,
        clock: Clock = filetime_now,
        source_name: str | None = None,
    ) -> None:
        self.layer_dir = Path(layer_dir).absolute()
        self.source_name = source_name  # the tar's name, for errors
        self.parents = [Path(p).absolute() for p in parents]
        self.cim_path = (
            Path(cim_path) if cim_path is not None else layout.cim_path_for(self.layer_dir)
        )
        if parent_cims is None:
            parent_cims = [layout.cim_path_for(p) for p in self.parents]
        self.parent_cims = [Path(p) for p in parent_cims]
        if len(self.parent_cims) != len(self.parents):
            raise LayerError("the parent layer and parent CIM lists differ in length")
        self.clock = clock
        self.size = 0
        self.entries = 0
        self.has_uvm = False
        self._pending: list[_PendingAdd | _PendingLink] = []
        self._deferred_links: set[str] = set()
        # Folded paths this layer added: an opaque whiteout keeps them while it hides what the
        # parents have.  Only a layer with parents can have something to hide.
        self._added: set[str] | None = set() if self.parents else None
        self._parent_image: CimImage | None = None
        self._done = False
        self._created_cim_dir = False
        if self.parent_cims and not self.parent_cims[0].is_file():
            raise LayerError("the parent layer has no CIM", path=self.parent_cims[0])
        self._created_dir = hostfiles.prepare_layer_dir(self.layer_dir)
        try:
            cim_dir = self.cim_path.parent
            if not cim_dir.is_dir():
                cim_dir.mkdir(mode=0o755)
                self._created_cim_dir = True
            parent = self.parent_cims[0] if self.parent_cims else None
            self.writer = CimWriter.create(self.cim_path, parent)
        except BaseException:
            self._discard()
            raise

    # --- entries ----------------------------------------------------------------------------

    def _add(self, entry: WinTarEntry) -> None:
        path = entry.path
        folded = layout.fold(path)
        if folded == _UTILITY_VM_FOLDED:
            self.has_uvm = True
        if entry.kind is EntryKind.FILE:
            self.size += entry.size
        meta = cim_metadata(entry)
        if layout.is_std_folded(folded):
            if entry.kind is not EntryKind.FILE:
                raise LayerError(f"{path} must be a regular file, the tar has a {entry.kind}")
            host = layout.host_path(self.layer_dir, path)
            hostfiles.make_dirs(self.layer_dir, host.relative_to(self.layer_dir).parts[:-1])
            hostfiles.write_new_file(host, entry.data, entry.size)  # type: ignore[arg-type]
            self._pending.append(_PendingAdd(path, host, meta))
            return
        data: BinaryIO | None = entry.data if entry.kind is EntryKind.FILE else None  # type: ignore[assignment]
        size = entry.size if entry.kind is EntryKind.FILE else None
        try:
            self.writer.add(path, meta, data, size=size)
        except NotFoundError:
            if not self._create_parents(path, entry):
                raise
            self.writer.add(path, meta, data, size=size)
        if self._added is not None:
            self._added.add(folded)

    def _create_parents(self, path: str, entry: WinTarEntry) -> bool:
        """Create the missing directories above ``path``; False if none was missing."""
        parts = path.split("\\")
        created = False
        for depth in range(1, len(parts)):
            prefix = "\\".join(parts[:depth])
            if not self.writer.exists(prefix):
                self.writer.add(prefix, parent_directory_metadata(entry))
                if self._added is not None:
                    self._added.add(layout.fold(prefix))
                created = True
        return created

    def _add_stream(self, entry: WinTarEntry) -> None:
        if layout.is_std_file(entry.path):
            raise LayerError(f"unexpected alternate stream {entry.stream_name!r} of {entry.path}")
        assert entry.stream_name is not None
        self.writer.add_stream(entry.path, entry.stream_name, entry.data, size=entry.size)  # type: ignore[arg-type]

    def _add_link(self, entry: WinTarEntry) -> None:
        new, target = entry.path, entry.link_target
        assert target is not None
        if layout.is_std_file(new):
            raise LayerError(f"unexpected link {new} in layer (it names a registry or boot file)")
        if layout.is_std_file(target) or layout.fold(target) in self._deferred_links:
            # The target reaches the CIM only at the end: so does the link (hcsshim linkOp).
            self._pending.append(_PendingLink(new, target))
            self._deferred_links.add(layout.fold(new))
            return
        if not self.writer.exists(target):
            raise LayerError(
                f"hard link target {target} does not exist in the layer or its parents"
            )
        try:
            self.writer.add_link(new, target)
        except NotFoundError:
            if not self._create_parents(new, entry):
                raise
            self.writer.add_link(new, target)
        if self._added is not None:
            self._added.add(layout.fold(new))

    def _remove(self, path: str) -> None:
        with contextlib.suppress(NotFoundError):  # nothing to hide: not in any parent
            self.writer.delete(path)
        if self._added is not None:
            self._added.discard(layout.fold(path))

    def _opaque(self, directory: str) -> None:
        """Hide what the parents have in ``directory`` (this layer's own entries stay)."""
        if not self.parent_cims or self._added is None:
            return
        if self._parent_image is None:
            self._parent_image = CimImage.open(self.parent_cims[0])
        try:
            names = self._parent_image.listdir(directory)
        except (NotFoundError, CimsnapError):
            return
        for name in names:
            child = f"{directory}\\{name}"
            if layout.fold(child) not in self._added:
                with contextlib.suppress(NotFoundError):
                    self.writer.delete(child)

    # --- the end ----------------------------------------------------------------------------

    def close(self) -> ImportResult:
        """Process the layer, apply the pending operations and commit the CIM."""
        self._check_open()
        result = ImportResult(self.layer_dir, self.size, self.entries, self.cim_path)
        try:
            process_uvm = False
            if self.has_uvm:
                build = uvm_build_number(layout.host_path(self.layer_dir, layout.UVM_SOFTWARE_HIVE))
                hostfiles.write_new_file(
                    self.layer_dir / layout.UVM_BUILD_FILE, str(build).encode("ascii")
                )
                result.uvm_build = build
                # CIM boot of the utility VM exists after Windows Server 2022 only.
                process_uvm = build > layout.LTSC2022_BUILD
            if not self.parents:
                if process_uvm:
                    result.uvm = self._process_uvm()
                self._process_base_hives()
                self._write_layout_file()
            else:
                result.merged_hives = self._merge_hives()
                if process_uvm:
                    result.uvm = self._process_uvm()
            self._apply_pending()
            self.writer.commit()
        except BaseException as err:
            self.abort()
            if isinstance(err, CimsnapError) and not isinstance(err, LayerError):
                raise LayerError(f"{err}", path=self.layer_dir) from err
            raise
        finally:
            self._close_parent_image()
        self._done = True
        return result

    def abort(self) -> None:
        """Remove everything this import wrote (CIM temporaries, the layer directory's files)."""
        if self._done:
            return
        self._done = True
        with contextlib.suppress(Exception):
            self.writer.abort()
        self._close_parent_image()
        self._discard()

    def _discard(self) -> None:
        hostfiles.discard_layer_dir(self.layer_dir, self._created_dir)
        if self._created_cim_dir:
            with contextlib.suppress(OSError):
                self.cim_path.parent.rmdir()  # only if nothing else is in it

    def _close_parent_image(self) -> None:
        if self._parent_image is not None:
            self._parent_image.close()
            self._parent_image = None

    def _check_open(self) -> None:
        if self._done:
            raise LayerError("the layer writer is already closed", path=self.layer_dir)

    def _process_uvm(self) -> UvmResult:
        self._save_pristine()
        return process_utility_vm(self.layer_dir, self.cim_path)

    def _save_pristine(self) -> None:
        for path in PRISTINE_FILES:
            source = layout.host_path(self.layer_dir, path)
            if source.is_file():
                target = layout.host_path(self.layer_dir / PRISTINE_DIR, path)
                hostfiles.make_dirs(self.layer_dir, target.relative_to(self.layer_dir).parts[:-1])
                shutil.copyfile(source, target, follow_symlinks=False)

    def _process_base_hives(self) -> None:
        links = link_base_hives(self.layer_dir)
        hives_dir = layout.host_path(self.layer_dir, layout.HIVES)
        self._pending.append(
            _PendingAdd(layout.HIVES, hives_dir, generated_metadata(self.clock(), directory=True))
        )
        self._pending.extend(_PendingLink(new, existing) for new, existing in links)

    def _write_layout_file(self) -> None:
        host = self.layer_dir / layout.LAYOUT_FILE
        hostfiles.write_new_file(host, layout.LAYOUT_CONTENTS)
        host.chmod(0o755)  # processLayoutFile writes it 0755
        self._pending.append(
            _PendingAdd(layout.LAYOUT_FILE, host, generated_metadata(self.clock()))
        )

    def _merge_hives(self) -> list[str]:
        merged = merge_delta_hives(self.layer_dir, self.parent_cims[0])
        for path in merged:
            host = layout.host_path(self.layer_dir, path)
            self._pending.append(_PendingAdd(path, host, generated_metadata(self.clock())))
        return merged

    def _apply_pending(self) -> None:
        for op in self._pending:
            try:
                if isinstance(op, _PendingLink):
                    self.writer.add_link(op.new, op.existing)
                elif op.meta.is_directory:
                    self.writer.add(op.path, op.meta)
                else:
                    with open(op.host, "rb") as handle:
                        size = hostfiles.file_size(handle)
                        self.writer.add(op.path, op.meta, handle, size=size)
            except CimsnapError as err:
                shown = op.new if isinstance(op, _PendingLink) else op.path
                raise LayerError(
                    f"apply pending operations: {err}", path=self.layer_dir, inner=shown
                ) from err


def import_cim_layer(
    stream: BinaryIO,
    layer_dir: str | Path,
    parents: list[Path] | tuple[Path, ...] = (),
    *,
    name: str | None = None,
    cim_path: Path | None = None,
    parent_cims: list[Path] | tuple[Path, ...] | None = None,
    progress: Callable[[int], None] | None = None,
    clock: Clock = filetime_now,
) -> ImportResult:
    """Import the layer tar read from ``stream`` into a CIM layer at ``layer_dir``.

    ``progress`` is called with the number of tar bytes consumed after each entry.
    """
    writer = CimLayerWriter(
        layer_dir,
        parents,
        cim_path=cim_path,
        parent_cims=parent_cims,
        clock=clock,
        source_name=name,
    )
    return write_layer(writer, stream, name=name, progress=progress)
