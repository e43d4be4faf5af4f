"""OCI image layouts (image-spec image-layout.md): find an image, its config and its layers.

A layout directory has ``oci-layout`` (``imageLayoutVersion`` 1.0.0), ``index.json`` and
``blobs/<algorithm>/<hex>``.  :meth:`OciLayout.image` picks a manifest from the index (by the
``org.opencontainers.image.ref.name`` or ``io.containerd.image.name`` annotation, or the only
one; nested indexes are followed, preferring ``windows/amd64``), reads the manifest and the
config (size-limited, digests verified) and returns the layers with their diff IDs and chain IDs
(image-spec config.md: ChainID(L0) = DiffID(L0), ChainID(Ln) = sha256(ChainID(Ln-1) + " " +
DiffID(Ln))).  Layer blobs are opened as streams and verified while they are read.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from cimsnap.layers.blobs import MEDIA_TYPE_COMPRESSION, check_digest
from cimsnap.layers.errors import LayerError

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
MAX_METADATA_BLOB = 8 << 20  # manifests, indexes and configs are small JSON documents
MAX_INDEX_DEPTH = 4
PREFERRED_PLATFORM = ("windows", "amd64")


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: dict[str, Any] | None = None

    @classmethod
    def parse(cls, raw: Any, where: str) -> Descriptor:
        if not isinstance(raw, dict):
            raise LayerError(f"{where}: a descriptor must be a JSON object")
        digest = raw.get("digest")
        size = raw.get("size")
        media_type = raw.get("mediaType", "")
        if not isinstance(digest, str) or not isinstance(size, int) or size < 0:
            raise LayerError(f"{where}: descriptor needs a digest and a non-negative size")
        if not isinstance(media_type, str):
            raise LayerError(f"{where}: mediaType must be a string")
        annotations = raw.get("annotations") or {}
        if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise LayerError(f"{where}: annotations must map strings to strings")
        platform = raw.get("platform")
        return cls(
            media_type,
            check_digest(digest),
            size,
            dict(annotations),
            platform if isinstance(platform, dict) else None,
        )


@dataclass(frozen=True)
class Layer:
    descriptor: Descriptor
    diff_id: str
    chain_id: str


@dataclass(frozen=True)
class OciImage:
    manifest: Descriptor
    config: Descriptor
    config_json: dict[str, Any]
    layers: tuple[Layer, ...]

    @property
    def chain_id(self) -> str:
        return self.layers[-1].chain_id if self.layers else ""

    @property
    def os(self) -> str:
        return str(self.config_json.get("os", ""))


def chain_ids(diff_ids: list[str]) -> list[str]:
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            text = f"{out[-1]} {diff_id}".encode()
            out.append("sha256:" + hashlib.sha256(text).hexdigest())
    return out


class OciLayout:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        marker = self.path / LAYOUT_FILE
        try:
            version = json.loads(marker.read_text()).get("imageLayoutVersion")
        except FileNotFoundError:
            raise LayerError(
                "not an OCI image layout (no oci-layout file)", path=self.path
            ) from None
        except (ValueError, AttributeError):
            raise LayerError("oci-layout is not valid JSON", path=marker) from None
        if version != "1.0.0":
            raise LayerError(f"unsupported imageLayoutVersion {version!r}", path=marker)
        self.index = self._json(self.path / INDEX_FILE)

    # --- blobs ------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        algorithm, _, hexdigest = check_digest(digest).partition(":")
        return self.path / "blobs" / algorithm / hexdigest

    def open_blob(self, descriptor: Descriptor) -> BinaryIO:
        path = self.blob_path(descriptor.digest)
        try:
            return open(path, "rb")
        except FileNotFoundError:
            raise LayerError(f"blob {descriptor.digest} is missing", path=path) from None

    def read_blob(self, descriptor: Descriptor) -> bytes:
        """A small blob, verified against its descriptor."""
        if descriptor.size > MAX_METADATA_BLOB:
            raise LayerError(
                f"blob {descriptor.digest} claims {descriptor.size} bytes, more than a manifest"
                " or config may have",
                path=self.path,
            )
        with self.open_blob(descriptor) as handle:
            data = handle.read(MAX_METADATA_BLOB + 1)
        algorithm, _, expected = descriptor.digest.partition(":")
        actual = hashlib.new(algorithm, data).hexdigest()
        if actual != expected or len(data) != descriptor.size:
            raise LayerError(
                f"blob {descriptor.digest} does not match its descriptor (digest {algorithm}:"
                f"{actual}, {len(data)} bytes)",
                path=self.blob_path(descriptor.digest),
            )
        return data

    def _json(self, path: Path, data: bytes | None = None) -> dict[str, Any]:
        try:
            if data is None:
                with open(path, "rb") as handle:
                    data = handle.read(MAX_METADATA_BLOB + 1)
            if len(data) > MAX_METADATA_BLOB:
                raise LayerError("JSON document is too large", path=path)
            value = json.loads(data)
        except FileNotFoundError:
            raise LayerError("file is missing", path=path) from None
        except (ValueError, UnicodeDecodeError) as err:
            raise LayerError(f"not valid JSON: {err}", path=path) from None
        if not isinstance(value, dict):
            raise LayerError("JSON document is not an object", path=path)
        return value

    # --- images -----------------------------------------------------------------------------

    def refs(self) -> list[str]:
        names = []
        for raw in self.index.get("manifests") or []:
            if isinstance(raw, dict):
                annotations = raw.get("annotations") or {}
                for key in (CONTAINERD_NAME, REF_NAME):
                    if isinstance(annotations.get(key), str):
                        names.append(annotations[key])
                        break
        return names

    def image(self, ref: str | None = None) -> OciImage:
        manifests = self._manifests(self.index, str(self.path / INDEX_FILE))
        if ref is not None:
            chosen = [d for d in manifests if _matches(d, ref)]
            if not chosen:
                known = ", ".join(self.refs()) or "none"
                raise LayerError(
                    f"no image named {ref!r} in the layout (names: {known})", path=self.path
                )
        else:
            chosen = manifests
        if len(chosen) != 1:
            raise LayerError(
                f"the layout holds {len(chosen)} images; choose one with --ref"
                f" ({', '.join(self.refs())})",
                path=self.path,
            )
        return self._resolve(chosen[0], 0)

    def _manifests(self, index: dict[str, Any], where: str) -> list[Descriptor]:
        raw = index.get("manifests")
        if not isinstance(raw, list):
            raise LayerError(f"{where}: 'manifests' must be a list")
        return [Descriptor.parse(item, f"{where} manifests[{i}]") for i, item in enumerate(raw)]

    def _resolve(self, descriptor: Descriptor, depth: int) -> OciImage:
        if depth > MAX_INDEX_DEPTH:
            raise LayerError("image indexes are nested too deeply", path=self.path)
        document = self._json(self.blob_path(descriptor.digest), self.read_blob(descriptor))
        media_type = document.get("mediaType") or descriptor.media_type
        if media_type in INDEX_TYPES or "manifests" in document:
            children = self._manifests(document, descriptor.digest)
            return self._resolve(_pick_platform(children, descriptor.digest), depth + 1)
        if media_type not in MANIFEST_TYPES and "layers" not in document:
            raise LayerError(f"{descriptor.digest} is not an image manifest ({media_type})")
        config = Descriptor.parse(document.get("config"), f"manifest {descriptor.digest} config")
        config_json = self._json(self.blob_path(config.digest), self.read_blob(config))
        raw_layers = document.get("layers")
        if not isinstance(raw_layers, list):
            raise LayerError(f"manifest {descriptor.digest}: 'layers' must be a list")
        layers = [
            Descriptor.parse(item, f"manifest {descriptor.digest} layers[{i}]")
            for i, item in enumerate(raw_layers)
        ]
        for layer in layers:
            if layer.media_type not in MEDIA_TYPE_COMPRESSION:
                raise LayerError(
                    f"layer {layer.digest} has an unsupported media type {layer.media_type!r}"
                )
        rootfs = config_json.get("rootfs") or {}
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
            raise LayerError(f"config {config.digest} has no rootfs.diff_ids list")
        for diff_id in diff_ids:
            check_digest(diff_id)
        if len(diff_ids) != len(layers):
            raise LayerError(
                f"number of layers and diffIDs don't match: {len(layers)} != {len(diff_ids)}"
            )
        chains = chain_ids(list(diff_ids))
        return OciImage(
            descriptor,
            config,
            config_json,
            tuple(
                Layer(d, diff, chain)
                for d, diff, chain in zip(layers, diff_ids, chains, strict=True)
            ),
        )


def _matches(descriptor: Descriptor, ref: str) -> bool:
    names = [
        n
        for n in (descriptor.annotations.get(CONTAINERD_NAME), descriptor.annotations.get(REF_NAME))
        if n
    ]
    if ref in names:
        return True
    # A bare tag matches "name:tag" (docker save / containerd export write full names).
    return any(":" in n and n.rsplit(":", 1)[1] == ref for n in names)


def _pick_platform(children: list[Descriptor], where: str) -> Descriptor:
    if not children:
        raise LayerError(f"index {where} lists no manifests")
    windows = [c for c in children if (c.platform or {}).get("os") == PREFERRED_PLATFORM[0]]
    preferred = [
        c for c in windows if (c.platform or {}).get("architecture") == PREFERRED_PLATFORM[1]
    ]
    for group in (preferred, windows):
        if group:
            return group[0]
    if len(children) == 1:
        return children[0]
    raise LayerError(f"index {where} has no windows image among {len(children)} manifests")
