"""Apply a layer blob to the snapshot a mount names: what containerd's differ Apply does.

containerd's unpacker prepares a snapshot with an unpack key, hands the layer blob and the
snapshot's mounts to the differ, and commits the snapshot under the layer's chain ID when the
differ returns the right diff ID.  For this project's snapshotter the mount is one ``CimFS``
mount (containerd core/mount/mount_windows.go): ``source`` is the snapshot directory, options
``cimpath=<layer CIM>``, ``parentLayerPaths=<JSON list>`` and ``parentCimPaths=<JSON list>``
(nearest parent first).  A ``windows-layer`` mount (containerd's wcifs snapshotter: source the
layer directory, ``parentLayerPaths=...``) gets the legacy layout of :mod:`.legacy`.

:func:`apply_layer` decompresses and hashes the blob while importing it, checks the blob's
digest and size and, when known, the diff ID before the layer is committed: a layer whose bytes
do not match is never left behind.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from cimsnap.formats.wintar import WinTarReader
from cimsnap.layers.blobs import UNCOMPRESSED_LAYER, BlobDigests, LayerBlob, verify
from cimsnap.layers.cimlayer import CimLayerWriter
from cimsnap.layers.entries import ImportResult
from cimsnap.layers.errors import LayerError
from cimsnap.layers.legacy import LegacyLayerWriter

CIMFS_MOUNT = "CimFS"
LEGACY_MOUNT = "windows-layer"
OPTION_CIM_PATH = "cimpath="
OPTION_PARENT_LAYERS = "parentLayerPaths="
OPTION_PARENT_CIMS = "parentCimPaths="
# Buffer between a layer blob and the tar reader: small reads are served from it, data reads of
# this size or more go straight to the blob.
TAR_READ_BUFFER = 64 << 10


class MountLike(Protocol):
    """containerd's mount.Mount as far as the differ reads it."""

    @property
    def type(self) -> str: ...

    @property
    def source(self) -> str: ...

    @property
    def options(self) -> Sequence[str]: ...


@dataclass(frozen=True)
class LayerTarget:
    """Where a layer goes, from a snapshot's mounts."""

    layer_dir: Path
    parents: tuple[Path, ...]
    cim_path: Path | None  # None: the legacy layout
    parent_cims: tuple[Path, ...]

    @property
    def legacy(self) -> bool:
        return self.cim_path is None


def _json_list(option: str, text: str) -> tuple[Path, ...]:
    try:
        value = json.loads(text)
    except ValueError:
        raise LayerError(f"mount option {option} is not a JSON list: {text!r}") from None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise LayerError(f"mount option {option} must be a JSON list of paths")
    return tuple(Path(v) for v in value)


def layer_target(mounts: Sequence[MountLike]) -> LayerTarget:
    """The layer directory, CIM and parents a differ writes to, from containerd mounts."""
    if len(mounts) != 1:
        raise LayerError(
            f"number of mounts should always be 1 for Windows layers, got {len(mounts)}"
        )
    mount = mounts[0]
    if mount.type not in (CIMFS_MOUNT, LEGACY_MOUNT):
        raise LayerError(
            f"unsupported mount type {mount.type!r} (want {CIMFS_MOUNT} or {LEGACY_MOUNT})"
        )
    if not mount.source:
        raise LayerError("the mount has no source (layer directory)")
    cim_path: Path | None = None
    parents: tuple[Path, ...] = ()
    parent_cims: tuple[Path, ...] = ()
    for option in mount.options:
        if option.startswith(OPTION_CIM_PATH):
            cim_path = Path(option[len(OPTION_CIM_PATH) :])
        elif option.startswith(OPTION_PARENT_LAYERS):
            parents = _json_list("parentLayerPaths", option[len(OPTION_PARENT_LAYERS) :])
        elif option.startswith(OPTION_PARENT_CIMS):
            parent_cims = _json_list("parentCimPaths", option[len(OPTION_PARENT_CIMS) :])
    if mount.type == CIMFS_MOUNT:
        if cim_path is None:
            raise LayerError("a CimFS mount needs a cimpath= option")
        if len(parent_cims) != len(parents):
            raise LayerError("parentCimPaths and parentLayerPaths differ in length")
    else:
        cim_path = None
    return LayerTarget(Path(mount.source), parents, cim_path, parent_cims)


@dataclass(frozen=True)
class AppliedLayer:
    """What Apply returns: the uncompressed layer's descriptor, and what was made."""

    media_type: str
    digest: str  # the diff ID
    size: int  # uncompressed bytes
    blob: BlobDigests
    result: ImportResult


def apply_layer(
    raw: BinaryIO,
    mounts: Sequence[MountLike],
    *,
    media_type: str | None = None,
    digest: str | None = None,
    size: int | None = None,
    diff_id: str | None = None,
    name: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> AppliedLayer:
    """Import the layer blob read from ``raw`` into the snapshot ``mounts`` name.

    ``digest``/``size`` (the blob's descriptor) and ``diff_id`` are verified when given;
    ``progress`` is called with the number of blob bytes read so far.
    """
    return import_blob(
        raw,
        layer_target(mounts),
        media_type=media_type,
        digest=digest,
        size=size,
        diff_id=diff_id,
        name=name,
        progress=progress,
    )


def import_blob(
    raw: BinaryIO,
    target: LayerTarget,
    *,
    media_type: str | None = None,
    digest: str | None = None,
    size: int | None = None,
    diff_id: str | None = None,
    name: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> AppliedLayer:
    """Import a (possibly compressed) layer blob into ``target``, verifying what is given."""
    algorithm = (digest or "sha256:").partition(":")[0] or "sha256"
    shown = name or digest
    blob = LayerBlob(raw, media_type=media_type, algorithm=algorithm, name=shown)
    writer: CimLayerWriter | LegacyLayerWriter
    try:
        if target.cim_path is not None:
            writer = CimLayerWriter(
                target.layer_dir,
                target.parents,
                cim_path=target.cim_path,
                parent_cims=target.parent_cims,
                source_name=shown,
            )
        else:
            writer = LegacyLayerWriter(target.layer_dir, target.parents, source_name=shown)
    except BaseException:
        blob.close()
        raise
    try:
        # Buffered: the tar reader's many small reads (headers, PAX records) then cost a C
        # call each instead of a trip through the blob's Python layers; reading ahead is
        # harmless, as the rest of the stream is drained and hashed below anyway.
        buffered = io.BufferedReader(blob, TAR_READ_BUFFER)
        reader = WinTarReader(buffered, name=shown)
        for entry in reader:
            writer.add_entry(entry)
            if progress is not None:
                progress(blob.compressed_position)
        reader.drain()
        found = blob.finish()
        verify(found, digest=digest, size=size, diff_id=diff_id, name=shown)
    except BaseException:
        writer.abort()
        blob.close()
        raise
    result = writer.close()
    if progress is not None:
        progress(found.size)
    return AppliedLayer(UNCOMPRESSED_LAYER, found.diff_id, found.uncompressed_size, found, result)


def local_target(
    layer_dir: str | Path, parents: Sequence[str | Path] = (), *, legacy: bool = False
) -> LayerTarget:
    """Where ``cimsnap layer import`` puts a layer: its CIM beside the directory, as hcsshim
    does (``<dirname>/cim-layers/<basename>.cim``), parents' CIMs likewise."""
    from cimsnap.layers.layout import cim_path_for

    layer = Path(layer_dir).absolute()
    parent_dirs = tuple(Path(p).absolute() for p in parents)
    if legacy:
        return LayerTarget(layer, parent_dirs, None, ())
    return LayerTarget(
        layer, parent_dirs, cim_path_for(layer), tuple(cim_path_for(p) for p in parent_dirs)
    )
