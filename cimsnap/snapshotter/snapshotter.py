"""The CimFS snapshotter: containerd's Windows CimFS snapshotter policy on top of the metastore.

Behaviour (containerd `plugins/snapshots/windows/{cimfs,common,windows}.go` after commit
994fdd74e, facts only; see also ../shared/reference/snapshotter-and-scratch.md):

- Prepare/View create ``snapshots/<id>/``.  Keys containing ``extract`` (containerd's unpack
  key prefix) get nothing else: the differ imports a layer there.  Any other snapshot needs
  parents ("scratch snapshot without any parents isn't supported") and gets ``sandbox.vhdx``,
  a copy of the shared template ``<root>/blank.vhdx`` (cimfs mode) or of the base layer's own
  ``blank.vhdx`` (legacy wcifs mode, made in the base layer directory when first needed),
  expanded (disk, partition, NTFS) when a size label asks for it.  With the UVM scratch label the
  base layer's (LAST parent's) ``UtilityVM/SystemTemplate.vhdx`` is first copied to
  ``vm/sandbox.vhdx``.  Everything happens inside the metadata write transaction; a failure
  removes the directory.
- Mounts: one ``CimFS`` mount of the snapshot directory with ``rw``/``ro``,
  ``cimpath=<cim-layers/<id>.cim>`` and, with parents, ``parentLayerPaths=[...]`` and
  ``parentCimPaths=[...]`` (JSON, nearest parent first).
- Commit only for unpack keys; the stored usage is the directory's, and Usage of a committed
  snapshot adds its CIM files.
- Remove renames the directory to ``rm-<id>`` inside the transaction and deletes it (and the
  layer CIM) after the commit; leftovers are finished by Cleanup, which also deletes directories
  and CIMs no snapshot owns and puts back an ``rm-<id>`` whose removal never committed.

Durability: by default (``durable=True``) every acknowledged operation survives a power loss
(scratch copies and metadata commits are fsynced).  ``durable=False`` ("fast") skips those
syncs: an acknowledged operation survives the death of the process, and a power loss can undo
the last Prepare/View/Commit/Update (Cleanup then removes what they left); Remove and Cleanup
always commit durably before they delete files.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import re
import shutil
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from cimsnap.errors import (
    KIND_FAILED_PRECONDITION,
    KIND_NOT_IMPLEMENTED,
    CimsnapError,
    UsageError,
)
from cimsnap.scratch.copy import copy_scratch
from cimsnap.scratch.template import DEFAULT_TEMPLATE_SIZE, TEMPLATE_BLOCK_SIZE, Template

from . import cimfiles
from .diskusage import disk_usage
from .layout import REMOVED_PREFIX, UVM_DIR, UVM_TEMPLATE_NAME, RootLayout
from .metastore import MetaStore
from .model import (
    CIMFS_MOUNT_TYPE,
    LABEL_ROOTFS_SIZE_BYTES,
    LABEL_ROOTFS_SIZE_GB,
    LABEL_UVM_SCRATCH,
    OPTION_LAYER_CIM_PATH,
    OPTION_PARENT_CIM_PATHS,
    OPTION_PARENT_LAYER_PATHS,
    Info,
    Kind,
    Mount,
    Snapshot,
    Usage,
    go_json_string_list,
    is_unpack_key,
)

log = logging.getLogger(__name__)

_UINT_RE = re.compile(r"[0-9]+")


class Mode(enum.Enum):
    """Where container scratch templates live."""

    CIMFS = "cimfs"  # one shared template in the root (this project's point)
    WCIFS = "wcifs"  # legacy: one template per base layer, in the base layer directory


class SnapshotterError(CimsnapError):
    """A snapshot operation failed; ``kind`` carries containerd's error class."""


def _wrap(prefix: str, err: CimsnapError, kind: str | None = None) -> SnapshotterError:
    wrapped = SnapshotterError(f"{prefix}: {err.message}", kind=kind or err.kind)
    wrapped.path = err.path
    return wrapped


def _parse_uint(label: str, text: str, bits: int) -> int:
    """strconv.ParseUint(text, 10, bits) with Go's error wording."""
    if not _UINT_RE.fullmatch(text):
        reason = "invalid syntax"
    elif int(text) >= 1 << bits:
        reason = "value out of range"
    else:
        return int(text)
    raise UsageError(f"failed to parse label {label!r}={text!r}: parsing {text!r}: {reason}")


def requested_scratch_size(labels: Mapping[str, str]) -> int:
    """Scratch size asked for by the size labels, in bytes; 0 = keep the template's size.

    The deprecated GiB label is read first (with a warning); the bytes label wins when both are
    present (containerd getRequestedScratchSize).
    """
    size = 0
    if LABEL_ROOTFS_SIZE_GB in labels:
        log.warning(
            '"%s" label is deprecated, please use "%s" instead.',
            LABEL_ROOTFS_SIZE_GB,
            LABEL_ROOTFS_SIZE_BYTES,
        )
        size = _parse_uint(LABEL_ROOTFS_SIZE_GB, labels[LABEL_ROOTFS_SIZE_GB], 32) << 30
    if LABEL_ROOTFS_SIZE_BYTES in labels:
        size = _parse_uint(LABEL_ROOTFS_SIZE_BYTES, labels[LABEL_ROOTFS_SIZE_BYTES], 64)
    return size


def _fsync(path: Path) -> None:
    """fsync a file or directory."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rmtree(path: Path) -> None:
    """Delete a tree; entries that vanish meanwhile (another process cleaning up) are fine."""

    def onerror(_fn: object, _failed: str, exc_info: tuple[type, BaseException, object]) -> None:
        if not isinstance(exc_info[1], FileNotFoundError):
            raise exc_info[1]

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, onerror=onerror)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class CimFSSnapshotter:
    """containerd's CimFS snapshotter for one root directory (see the module docstring)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        mode: Mode | str = Mode.CIMFS,
        template_size: int = DEFAULT_TEMPLATE_SIZE,
        durable: bool = True,
        allow_reflink: bool = True,
        template_at_start: bool = True,
    ) -> None:
        self.layout = RootLayout.at(root)
        self.mode = Mode(mode)
        self.template_size = template_size
        self.durable = durable
        self.allow_reflink = allow_reflink
        self.layout.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.ms = MetaStore(self.layout.metadata_db, durable=durable)
        try:
            self.layout.snapshots.mkdir(mode=0o700, exist_ok=True)
            self.layout.cim_layers.mkdir(mode=0o755, exist_ok=True)
            self._templates: dict[Path, Template] = {}
            self._templates_lock = threading.Lock()
            if self.mode is Mode.CIMFS and template_at_start:
                # The shared template is made (or repaired) at start-up, like containerd; without
                # template_at_start (local CLI use) it is made when the first container needs it.
                try:
                    self._template_in(self.layout.root).ensure()
                except CimsnapError as err:
                    raise _wrap("failed to init base scratch VHD", err) from err
        except BaseException:
            self.ms.close()
            raise

    # -- paths ---------------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        return self.layout.root

    def _template_in(self, directory: Path) -> Template:
        with self._templates_lock:
            template = self._templates.get(directory)
            if template is None:
                template = Template(
                    directory, size=self.template_size, block_size=TEMPLATE_BLOCK_SIZE
                )
                self._templates[directory] = template
            return template

    def _parent_paths(self, parent_ids: Sequence[str]) -> list[str]:
        return [str(self.layout.snapshot_dir(i)) for i in parent_ids]

    def _mounts(self, snapshot: Snapshot) -> list[Mount]:
        options = ["ro" if snapshot.kind is Kind.VIEW else "rw"]
        options.append(OPTION_LAYER_CIM_PATH + str(self.layout.layer_cim(snapshot.id)))
        if snapshot.parent_ids:
            layer_paths = self._parent_paths(snapshot.parent_ids)
            cim_paths = [str(self.layout.layer_cim(i)) for i in snapshot.parent_ids]
            options.append(OPTION_PARENT_LAYER_PATHS + go_json_string_list(layer_paths))
            options.append(OPTION_PARENT_CIM_PATHS + go_json_string_list(cim_paths))
        source = str(self.layout.snapshot_dir(snapshot.id))
        return [Mount(type=CIMFS_MOUNT_TYPE, source=source, options=tuple(options))]

    # -- snapshot creation ---------------------------------------------------------------------

    def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """Create an active snapshot and return its mounts."""
        return self._create(Kind.ACTIVE, key, parent, dict(labels or {}))

    def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """Create a view snapshot and return its (read-only) mounts."""
        return self._create(Kind.VIEW, key, parent, dict(labels or {}))

    def _create(self, kind: Kind, key: str, parent: str, labels: dict[str, str]) -> list[Mount]:
        with self.ms.transaction(writable=True) as tx:
            try:
                snapshot = tx.create_snapshot(kind, key, parent, labels)
            except CimsnapError as err:
                raise _wrap("failed to create snapshot", err) from err
            log.debug("createSnapshot", extra={"key": key, "snapshot_id": snapshot.id})
            snapshot_dir = self.layout.snapshot_dir(snapshot.id)
            if snapshot_dir.exists():
                # The ID was just allocated inside our exclusive write transaction, so this
                # directory can only be left over by a process killed before it committed.
                _rmtree(snapshot_dir)
            try:
                snapshot_dir.mkdir(mode=0o700)
            except OSError as err:
                raise SnapshotterError(
                    f"failed to create snapshot dir {snapshot_dir}: {err.strerror}"
                ) from err
            try:
                made = []
                if not is_unpack_key(key):
                    made = self._make_scratch(snapshot, snapshot_dir, labels)
                if self.durable:
                    self._sync_new_snapshot(snapshot_dir, made)
            except BaseException:
                _rmtree(snapshot_dir)
                raise
        return self._mounts(snapshot)

    @staticmethod
    def _sync_new_snapshot(snapshot_dir: Path, made: Sequence[Path]) -> None:
        """Make everything the new record will point at durable, before the record commits.

        ``made`` lists the files created in ``snapshot_dir`` (nothing else writes there before
        the commit).  Until the metadata commit all of it is garbage anyway (Cleanup's rule), so
        the files are synced once here, after they are complete and in place, rather than one
        by one: the first fsync commits the filesystem journal for all of them, the rest are
        cheap.  The list is passed rather than found by walking the directory: the walk cost
        about a sixth of a Prepare.
        """
        directories = sorted({p.parent for p in made} - {snapshot_dir}, reverse=True)
        for path in (*made, *directories, snapshot_dir, snapshot_dir.parent):
            _fsync(path)

    def _make_scratch(
        self, snapshot: Snapshot, snapshot_dir: Path, labels: Mapping[str, str]
    ) -> list[Path]:
        """Create the snapshot's scratch disk(s); returns the files made."""
        if not snapshot.parent_ids:
            raise SnapshotterError(
                "scratch snapshot without any parents isn't supported", kind=KIND_NOT_IMPLEMENTED
            )
        parent_paths = [Path(p) for p in self._parent_paths(snapshot.parent_ids)]
        size = requested_scratch_size(labels)
        made = []
        # The UVM scratch is made first so it can't clash with the container's sandbox.vhdx.
        if LABEL_UVM_SCRATCH in labels:
            try:
                made.append(self._make_uvm_scratch(snapshot_dir, parent_paths))
            except CimsnapError as err:
                raise _wrap("failed to make UVM's scratch layer", err) from err
        try:
            made.append(self._make_container_scratch(snapshot_dir, parent_paths, size))
        except CimsnapError as err:
            raise _wrap("failed to create scratch layer", err) from err
        return made

    def _make_uvm_scratch(self, snapshot_dir: Path, parent_paths: Sequence[Path]) -> Path:
        base_layer = parent_paths[-1]
        uvm_path = base_layer / UVM_DIR
        if not uvm_path.is_dir():
            raise SnapshotterError(
                f"failed to find UtilityVM directory in base layer {str(base_layer)!r}:"
                f" stat {uvm_path}: no such file or directory"
            )
        template = uvm_path / UVM_TEMPLATE_NAME
        if not template.is_file():
            raise SnapshotterError(f"{str(template)!r} does not exist in Utility VM image")
        vm_dir = snapshot_dir / "vm"
        vm_dir.mkdir(mode=0o700, exist_ok=True)
        self._copy(template, vm_dir / "sandbox.vhdx")
        return vm_dir / "sandbox.vhdx"

    def _make_container_scratch(
        self, snapshot_dir: Path, parent_paths: Sequence[Path], size: int
    ) -> Path:
        if self.mode is Mode.CIMFS:
            template = self._template_in(self.layout.root)
        else:
            template = self._template_in(parent_paths[-1])  # the base layer's own pair
        dest = snapshot_dir / "sandbox.vhdx"
        with template.copy_lock() as source:
            self._copy(source, dest)
        if size:
            from cimsnap.scratch import expand

            try:
                expand(dest, size)
            except CimsnapError as err:
                raise SnapshotterError(
                    f"failed to expand sandbox vhdx size to {size} bytes: {err}",
                    kind=err.kind,
                ) from err
        return dest

    def _copy(self, source: Path, dest: Path) -> None:
        # durable=False: _sync_new_snapshot syncs every new file at once before the commit
        # staged=False: the snapshot directory is garbage until the metadata commits (Cleanup)
        copy_scratch(source, dest, durable=False, allow_reflink=self.allow_reflink, staged=False)

    # -- reading -------------------------------------------------------------------------------

    def mounts(self, key: str) -> list[Mount]:
        with self.ms.transaction() as tx:
            try:
                snapshot = tx.get_snapshot(key)
            except CimsnapError as err:
                raise _wrap("failed to get snapshot mount", err) from err
        return self._mounts(snapshot)

    def stat(self, key: str) -> Info:
        with self.ms.transaction() as tx:
            return tx.get_info(key)[1]

    def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        with self.ms.transaction(writable=True) as tx:
            return tx.update_info(info, fieldpaths)

    def walk(self, filters: Sequence[str] = ()) -> Iterator[Info]:
        """Snapshots matching any filter (read in one transaction, then yielded)."""
        with self.ms.transaction() as tx:
            infos = list(tx.walk_info(filters))
        yield from infos

    def usage(self, key: str) -> Usage:
        with self.ms.transaction() as tx:
            snapshot_id, info, usage = tx.get_info(key)
        if info.kind is Kind.ACTIVE:
            usage = disk_usage(self.layout.snapshot_dir(snapshot_id))
        elif info.kind is Kind.COMMITTED:
            cim_size = cimfiles.cim_usage(self.layout.layer_cim(snapshot_id))
            usage = Usage(size=usage.size + cim_size, inodes=usage.inodes)
        return usage

    # -- commit and remove ---------------------------------------------------------------------

    def commit(
        self,
        name: str,
        key: str,
        labels: Mapping[str, str] | None = None,
        parent: str = "",
    ) -> None:
        """Commit an unpack snapshot (whose layer CIM the differ wrote) as ``name``."""
        if not is_unpack_key(key):
            raise SnapshotterError(
                "committing a scratch snapshot to read-only cim layer isn't supported yet",
                kind=KIND_NOT_IMPLEMENTED,
            )
        with self.ms.transaction(writable=True) as tx:
            try:
                snapshot_id, info, _ = tx.get_info(key)
            except CimsnapError as err:
                raise _wrap("failed to get usage during commit", err) from err
            usage = Usage()
            if info.kind is Kind.ACTIVE:
                usage = disk_usage(self.layout.snapshot_dir(snapshot_id))
            try:
                tx.commit_active(key, name, usage, dict(labels or {}), parent)
            except CimsnapError as err:
                raise _wrap("failed to commit snapshot", err) from err

    def remove(self, key: str) -> None:
        """Remove a snapshot; its files go after the metadata change is durable."""
        try:
            with self.ms.transaction() as tx:
                snapshot_id = tx.get_info(key)[0]
        except CimsnapError as err:
            # containerd wraps every failure here as failed precondition so that garbage
            # collection of other snapshots carries on.
            raise _wrap("failed to get snapshot info", err, KIND_FAILED_PRECONDITION) from err
        removed = self._pre_remove(key)
        with self._templates_lock:  # a wcifs base layer takes its template pair with it
            self._templates.pop(self.layout.snapshot_dir(snapshot_id), None)
        try:
            cimfiles.destroy_cim(self.layout.layer_cim(snapshot_id))
        except (CimsnapError, OSError) as err:
            log.warning("failed to cleanup cim files: %s", err, extra={"snapshot_id": snapshot_id})
        try:
            _rmtree(removed)
        except OSError as err:
            log.warning(
                "failed to remove root filesystem: %s", err, extra={"renamed": str(removed)}
            )

    def _pre_remove(self, key: str) -> Path:
        """Delete the record and rename the directory to ``rm-<id>`` in one transaction."""
        path = renamed = None
        restore = False
        try:
            # durable even in fast mode: the files go right after this commit
            with self.ms.transaction(writable=True, durable=True) as tx:
                snapshot_id, _ = tx.remove(key)
                path = self.layout.snapshot_dir(snapshot_id)
                renamed = self.layout.removed_dir(snapshot_id)
                try:
                    os.rename(path, renamed)
                    restore = True
                except FileNotFoundError:
                    pass
        except CimsnapError as err:
            if restore and path is not None and renamed is not None:
                try:
                    os.rename(renamed, path)
                except OSError as rename_err:
                    log.error("failed to rename after failed commit: %s", rename_err)
            raise _wrap("failed to remove snapshot", err, KIND_FAILED_PRECONDITION) from err
        assert renamed is not None
        return renamed

    # -- maintenance ---------------------------------------------------------------------------

    def cleanup(self) -> list[str]:
        """Finish interrupted work; returns the names of what was removed or restored.

        Runs under the metadata write lock, so no Prepare/Remove of any process is half-way:
        a numbered directory or CIM without a record is garbage, and an ``rm-<id>`` whose record
        still exists is a Remove that never committed (it is put back).
        """
        actions: list[str] = []
        garbage: list[Path] = []
        with self.ms.transaction(writable=True, durable=True) as tx:
            live = tx.id_map()
            snapshots = self.layout.snapshots
            for entry in sorted(os.listdir(snapshots)):
                path = snapshots / entry
                if entry.startswith(REMOVED_PREFIX):
                    snapshot_id = entry[len(REMOVED_PREFIX) :]
                    original = self.layout.snapshot_dir(snapshot_id)
                    if snapshot_id in live and not original.exists():
                        os.rename(path, original)
                        actions.append(f"restored {original}")
                    elif snapshot_id not in live:
                        garbage.append(path)
                elif entry.isdigit():
                    if entry not in live:
                        renamed = self.layout.removed_dir(entry)
                        os.rename(path, renamed)
                        garbage.append(renamed)
                    else:
                        self._remove_copy_leftovers(path, actions)
            orphan_cims = [
                cim
                for cim in self.layout.cim_layers.glob("*.cim")
                if cim.stem.isdigit() and cim.stem not in live
            ]
            # Newest first: a fork (child layer) must go before the CIM whose regions it uses.
            for cim in sorted(orphan_cims, key=lambda c: -int(c.stem)):
                try:
                    cimfiles.destroy_cim(cim)
                    actions.append(f"removed {cim}")
                except (CimsnapError, OSError) as err:
                    log.warning("failed to remove orphaned CIM %s: %s", cim, err)
        for path in garbage:
            _rmtree(path)
            actions.append(f"removed {path}")
        if actions:
            log.info("cleanup finished interrupted work", extra={"actions": actions})
        return actions

    @staticmethod
    def _remove_copy_leftovers(snapshot_dir: Path, actions: list[str]) -> None:
        for pattern in (".sandbox.vhdx.tmp-*", "vm/.sandbox.vhdx.tmp-*"):
            for leftover in snapshot_dir.glob(pattern):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
                    actions.append(f"removed {leftover}")

    def close(self) -> None:
        self.ms.close()

    def __enter__(self) -> CimFSSnapshotter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
