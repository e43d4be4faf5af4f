"""Unpack an image into a snapshotter the way containerd's unpacker does (core/unpack).

For each layer, bottom to top (facts from containerd core/unpack/unpacker.go):

* the chain ID names the committed snapshot; a layer whose chain ID is already committed is
  skipped (containerd's rootfs.ApplyLayers stats it first);
* the layer is prepared as an active snapshot keyed ``extract-<nanoseconds>-<random> <chainID>``
  (snapshots.UnpackKeyFormat; the unique part is the current time's nanosecond within the second
  and 3 random bytes in URL-safe base64) on top of the previous chain ID, with the labels
  ``containerd.io/snapshot.ref=<chainID>`` plus the layer annotations under
  ``containerd.io/snapshot/`` (snapshots.FilterInheritedLabels); an AlreadyExists prepare is
  retried with a new key (up to three times), and is fine if the chain ID got committed meanwhile;
* the differ applies the blob to the snapshot's mounts and must return the config's diff ID
  ("wrong diff id calculated on extraction" otherwise);
* the snapshot is committed as the chain ID with the same labels (AlreadyExists is success);
  on any failure the unpack snapshot is removed.

The snapshotter is anything with ``prepare``/``commit``/``remove``/``stat`` (the local
:class:`~cimsnap.snapshotter.snapshotter.CimFSSnapshotter`, or a gRPC client of containerd's
snapshots API, so that containerd records the snapshots); this module imports neither.
"""

from __future__ import annotations

import base64
import contextlib
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cimsnap.errors import KIND_ALREADY_EXISTS, KIND_NOT_FOUND, CimsnapError
from cimsnap.layers.apply import AppliedLayer, MountLike, apply_layer
from cimsnap.layers.errors import LayerError
from cimsnap.layers.oci import Layer, OciImage, OciLayout

LABEL_SNAPSHOT_REF = "containerd.io/snapshot.ref"
INHERITED_LABEL_PREFIX = "containerd.io/snapshot/"
UNPACK_KEY_FORMAT = "extract-{unique} {chain_id}"
PREPARE_TRIES = 3


class Snapshots(Protocol):
    def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> Sequence[MountLike]: ...

    def commit(
        self, name: str, key: str, labels: Mapping[str, str] | None = None, parent: str = ""
    ) -> None: ...

    def remove(self, key: str) -> None: ...

    def stat(self, key: str) -> Any: ...


def unpack_key(chain_id: str) -> str:
    """``extract-<nanos>-<rand> <chainID>`` as containerd's uniquePart makes it."""
    nanos = time.time_ns() % 1_000_000_000
    random_part = base64.urlsafe_b64encode(secrets.token_bytes(3)).decode("ascii")
    return UNPACK_KEY_FORMAT.format(unique=f"{nanos}-{random_part}", chain_id=chain_id)


def snapshot_labels(layer: Layer) -> dict[str, str]:
    labels = {
        k: v
        for k, v in layer.descriptor.annotations.items()
        if k.startswith(INHERITED_LABEL_PREFIX)
    }
    labels[LABEL_SNAPSHOT_REF] = layer.chain_id
    return labels


@dataclass
class UnpackedLayer:
    chain_id: str
    diff_id: str
    key: str | None  # None when the layer was already unpacked
    applied: AppliedLayer | None = None

    @property
    def skipped(self) -> bool:
        return self.key is None


@dataclass
class Progress:
    """Callbacks of an unpack (all optional)."""

    layer_started: Callable[[int, Layer], None] | None = None
    bytes_read: Callable[[int, int], None] | None = None  # (layer index, blob bytes read)
    layer_done: Callable[[int, UnpackedLayer], None] | None = None


def _exists(sn: Snapshots, key: str) -> bool:
    try:
        sn.stat(key)
    except CimsnapError as err:
        if err.kind == KIND_NOT_FOUND:
            return False
        raise
    return True


def unpack_image(
    layout: OciLayout,
    image: OciImage,
    sn: Snapshots,
    *,
    progress: Progress | None = None,
    extra_labels: Mapping[str, str] | None = None,
) -> list[UnpackedLayer]:
    """Unpack every layer of ``image`` into ``sn``; returns what happened per layer.

    ``extra_labels`` go on every prepared and committed snapshot (e.g. ``containerd.io/gc.root``
    when unpacking through containerd without an image record that would keep them).
    """
    progress = progress or Progress()
    done: list[UnpackedLayer] = []
    parent = ""
    for index, layer in enumerate(image.layers):
        if progress.layer_started:
            progress.layer_started(index, layer)
        unpacked = _unpack_layer(layout, sn, index, layer, parent, progress, extra_labels or {})
        done.append(unpacked)
        if progress.layer_done:
            progress.layer_done(index, unpacked)
        parent = layer.chain_id
    return done


def _unpack_layer(
    layout: OciLayout,
    sn: Snapshots,
    index: int,
    layer: Layer,
    parent: str,
    progress: Progress,
    extra_labels: Mapping[str, str],
) -> UnpackedLayer:
    chain_id = layer.chain_id
    if _exists(sn, chain_id):
        return UnpackedLayer(chain_id, layer.diff_id, None)
    labels = {**extra_labels, **snapshot_labels(layer)}
    key = ""
    mounts: Sequence[MountLike] = ()
    for _ in range(PREPARE_TRIES):
        key = unpack_key(chain_id)
        try:
            mounts = sn.prepare(key, parent, labels)
            break
        except CimsnapError as err:
            if err.kind != KIND_ALREADY_EXISTS:
                raise LayerError(f"failed to prepare extraction snapshot {key!r}: {err}") from err
            if _exists(sn, chain_id):
                return UnpackedLayer(chain_id, layer.diff_id, None)
    else:
        raise LayerError(f"unable to prepare extraction snapshot for {chain_id}")
    try:
        descriptor = layer.descriptor

        def report(read: int) -> None:
            if progress.bytes_read:
                progress.bytes_read(index, read)

        with layout.open_blob(descriptor) as raw:
            applied = apply_layer(
                raw,
                mounts,
                media_type=descriptor.media_type,
                digest=descriptor.digest,
                size=descriptor.size,
                diff_id=layer.diff_id,
                name=f"layer {index + 1} ({descriptor.digest})",
                progress=report,
            )
        try:
            sn.commit(chain_id, key, labels)
        except CimsnapError as err:
            if err.kind != KIND_ALREADY_EXISTS:
                raise
            with contextlib.suppress(CimsnapError):
                sn.remove(key)
    except BaseException:
        with contextlib.suppress(CimsnapError):
            sn.remove(key)
        raise
    return UnpackedLayer(chain_id, layer.diff_id, key, applied)
