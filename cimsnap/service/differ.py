"""The ``containerd.services.diff.v1.Diff`` service: containerd's differ ``Apply`` for CimFS layers.

containerd 2.x can use an out-of-process differ (``proxy_plugins`` entry of type ``diff``) and
its unpacker calls ``Apply(descriptor of the layer blob, mounts of the unpack snapshot)``.  This
service implements it over :func:`cimsnap.layers.apply.apply_layer`: the mount must be the one
``CimFS`` mount of an unpack snapshot (``cimpath=``, ``parentLayerPaths=``,
``parentCimPaths=``; a ``windows-layer`` mount gets the legacy layout), the blob (uncompressed,
gzip or zstd) is read from containerd's content store, its digest and size are checked against
the descriptor and its diff ID against the ``containerd.io/uncompressed`` annotation when
present; the response carries the uncompressed layer's descriptor (the diff ID), which
containerd's unpacker compares with the image config.  ``Diff`` (making a layer from two mounts)
is not implemented: CimFS scratch layers cannot be committed to layers yet (as in containerd).

Where blobs come from (:func:`content_from_environment`):

* ``CIMSNAP_CONTENT_DIR``: containerd content store directories (``:``-separated), read
  directly (``<dir>/blobs/<algorithm>/<hex>``; containerd's default is
  ``/var/lib/containerd/io.containerd.content.v1.content``, used when it exists);
* ``CIMSNAP_CONTAINERD_ADDRESS``: containerd's gRPC socket (default
  ``/run/containerd/containerd.sock`` when it exists), read through containerd's content API
  (``containerd.services.content.v1.Content/Read``) in the request's namespace (the
  ``containerd-namespace`` gRPC metadata containerd sends along).

Apply only writes below the snapshotter's ``snapshots`` directory: a mount naming anything else
is refused.  ``sync_fs`` needs nothing more: the CIM writer fsyncs what it commits.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import grpc

from cimsnap.errors import KIND_NOT_IMPLEMENTED, CimsnapError, NotFoundError, UsageError
from cimsnap.layers.apply import apply_layer, layer_target
from cimsnap.layers.blobs import PrefixedReader, check_digest
from cimsnap.service.errors import to_status
from cimsnap.service.proto import diff_content_pb2, diff_pb2, diff_types_pb2
from cimsnap.snapshotter.model import Mount

log = logging.getLogger(__name__)

SERVICE_NAME = "containerd.services.diff.v1.Diff"
CONTENT_SERVICE = "containerd.services.content.v1.Content"
NAMESPACE_METADATA_KEY = "containerd-namespace"
LABEL_UNCOMPRESSED = "containerd.io/uncompressed"  # containerd pkg/labels LabelUncompressed
ENV_CONTENT_DIR = "CIMSNAP_CONTENT_DIR"
ENV_CONTAINERD_ADDRESS = "CIMSNAP_CONTAINERD_ADDRESS"
DEFAULT_CONTENT_DIR = Path("/var/lib/containerd/io.containerd.content.v1.content")
DEFAULT_CONTAINERD_ADDRESS = Path("/run/containerd/containerd.sock")


class ContentSource(Protocol):
    def open(self, digest: str, namespace: str | None) -> BinaryIO: ...


class LocalContentStore:
    """A containerd content store directory (``blobs/<algorithm>/<hex>``)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def open(self, digest: str, namespace: str | None) -> BinaryIO:
        algorithm, _, hexdigest = check_digest(digest).partition(":")
        path = self.root / "blobs" / algorithm / hexdigest
        try:
            return open(path, "rb")
        except FileNotFoundError:
            raise NotFoundError(f"content {digest} not found", path=self.root) from None

    def __repr__(self) -> str:
        return f"LocalContentStore({str(self.root)!r})"


class _ReadStream(io.RawIOBase):
    """The byte stream of a ``Content/Read`` call."""

    def __init__(self, responses: Iterator[Any], digest: str) -> None:
        super().__init__()
        self._responses = responses
        self._digest = digest
        self._pending = memoryview(b"")
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._pending and not self._eof:
            try:
                response = next(self._responses)
            except StopIteration:
                self._eof = True
                break
            except grpc.RpcError as err:
                raise _content_error(err, self._digest) from None
            self._pending = memoryview(response.data)
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        cancel = getattr(self._responses, "cancel", None)
        if cancel is not None and not self._eof:
            cancel()
        super().close()


def _content_error(err: grpc.RpcError, digest: str) -> CimsnapError:
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else str(err)
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFoundError(f"content {digest} not found in containerd: {details}")
    return CimsnapError(f"reading content {digest} from containerd failed: {details}")


class ContainerdContent:
    """Blobs read through containerd's content API (in the caller's namespace)."""

    def __init__(self, address: str) -> None:
        target = address if address.startswith("unix:") else f"unix:{address}"
        self.address = address
        self.channel = grpc.insecure_channel(target)
        self._read = self.channel.unary_stream(
            f"/{CONTENT_SERVICE}/Read",
            request_serializer=diff_content_pb2.ReadContentRequest.SerializeToString,
            response_deserializer=diff_content_pb2.ReadContentResponse.FromString,
        )

    def open(self, digest: str, namespace: str | None) -> BinaryIO:
        metadata = ((NAMESPACE_METADATA_KEY, namespace),) if namespace else None
        responses = self._read(
            diff_content_pb2.ReadContentRequest(digest=check_digest(digest)), metadata=metadata
        )
        stream = _ReadStream(responses, digest)
        try:
            head = bytearray(1)
            got = stream.readinto(head)  # fail early (not found) rather than mid-import
        except BaseException:
            stream.close()
            raise
        return io.BufferedReader(PrefixedReader(bytes(head[:got]), stream, owns_rest=True), 1 << 20)

    def close(self) -> None:
        self.channel.close()

    def __repr__(self) -> str:
        return f"ContainerdContent({self.address!r})"


class ContentSources:
    """The first source that has the blob."""

    def __init__(self, sources: Sequence[ContentSource]) -> None:
        self.sources = list(sources)

    def open(self, digest: str, namespace: str | None) -> BinaryIO:
        if not self.sources:
            raise NotFoundError(
                f"content {digest}: no content source configured (set {ENV_CONTENT_DIR} or"
                f" {ENV_CONTAINERD_ADDRESS})"
            )
        last: CimsnapError | None = None
        for source in self.sources:
            try:
                return source.open(digest, namespace)
            except NotFoundError as err:
                last = err
        assert last is not None
        raise last

    def close(self) -> None:
        for source in self.sources:
            close = getattr(source, "close", None)
            if close is not None:
                close()


def content_from_environment(environ: dict[str, str] | None = None) -> ContentSources:
    env = os.environ if environ is None else environ
    sources: list[ContentSource] = []
    dirs = env.get(ENV_CONTENT_DIR)
    if dirs is not None:
        sources.extend(LocalContentStore(d) for d in dirs.split(":") if d)
    elif DEFAULT_CONTENT_DIR.is_dir():
        sources.append(LocalContentStore(DEFAULT_CONTENT_DIR))
    address = env.get(ENV_CONTAINERD_ADDRESS)
    if address is not None:
        if address:
            sources.append(ContainerdContent(address))
    elif DEFAULT_CONTAINERD_ADDRESS.exists():
        sources.append(ContainerdContent(str(DEFAULT_CONTAINERD_ADDRESS)))
    return ContentSources(sources)


def descriptor_to_proto(media_type: str, digest: str, size: int) -> Any:
    return diff_types_pb2.Descriptor(media_type=media_type, digest=digest, size=size)


def _namespace(context: grpc.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == NAMESPACE_METADATA_KEY:
            return str(value)
    return None


class DiffService:
    """Request handlers of the diff service (one instance serves every connection)."""

    def __init__(self, content: ContentSource, *, snapshots_dir: Path | None = None) -> None:
        self.content = content
        self.snapshots_dir = snapshots_dir.resolve() if snapshots_dir is not None else None

    def _check_inside(self, mounts: list[Mount]) -> None:
        if self.snapshots_dir is None:
            return
        target = layer_target(mounts)
        paths = [target.layer_dir, *target.parents, *target.parent_cims]
        if target.cim_path is not None:
            paths.append(target.cim_path)
        for path in paths:
            resolved = Path(os.path.realpath(path))
            if not resolved.is_relative_to(self.snapshots_dir):
                raise UsageError(
                    f"mount path {path} is outside the snapshotter's {self.snapshots_dir}"
                )

    def Apply(self, request: Any, context: grpc.ServicerContext) -> Any:
        desc = request.diff
        if not desc.digest:
            raise UsageError("the request has no layer descriptor")
        mounts = [
            Mount(type=m.type, source=m.source, target=m.target, options=tuple(m.options))
            for m in request.mounts
        ]
        self._check_inside(mounts)
        diff_id = desc.annotations.get(LABEL_UNCOMPRESSED) or None
        with self.content.open(desc.digest, _namespace(context)) as raw:
            applied = apply_layer(
                raw,
                mounts,
                media_type=desc.media_type or None,
                digest=desc.digest,
                size=desc.size or None,
                diff_id=diff_id,
                name=desc.digest,
            )
        return diff_pb2.ApplyResponse(
            applied=descriptor_to_proto(applied.media_type, applied.digest, applied.size)
        )

    def Diff(self, request: Any, context: grpc.ServicerContext) -> Any:
        raise CimsnapError(
            "cimsnap's differ only applies layers (Diff of CimFS snapshots is not supported)",
            kind=KIND_NOT_IMPLEMENTED,
        )


METHODS: dict[str, tuple[Any, Any]] = {
    "Apply": (diff_pb2.ApplyRequest, diff_pb2.ApplyResponse),
    "Diff": (diff_pb2.DiffRequest, diff_pb2.DiffResponse),
}


def _unary(method: str, fn: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        started = time.perf_counter()
        fields = {"method": f"diff.{method}"}
        if method == "Apply":
            fields["digest"] = request.diff.digest
        try:
            response = fn(request, context)
        except Exception as err:
            code, text = to_status(err)
            level = logging.ERROR if code == grpc.StatusCode.UNKNOWN else logging.INFO
            log.log(
                level,
                text,
                extra={**fields, "code": code.name},
                exc_info=not isinstance(err, (CimsnapError, OSError)),
            )
            context.abort(code, text)
        log.info("ok", extra={**fields, "ms": round((time.perf_counter() - started) * 1e3, 3)})
        return response

    return handler


def generic_handler(service: DiffService) -> grpc.GenericRpcHandler:
    handlers = {
        method: grpc.unary_unary_rpc_method_handler(
            _unary(method, getattr(service, method)),
            request_deserializer=request_cls.FromString,
            response_serializer=response_cls.SerializeToString,
        )
        for method, (request_cls, response_cls) in METHODS.items()
    }
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


class DiffClient:
    """A client of the diff service (tests, scripts): ``apply(descriptor, mounts)``."""

    def __init__(
        self, address: str, *, namespace: str | None = None, timeout: float | None = 300
    ) -> None:
        target = address if address.startswith("unix:") else f"unix:{address}"
        self.channel = grpc.insecure_channel(target)
        self.metadata = ((NAMESPACE_METADATA_KEY, namespace),) if namespace else None
        self.timeout = timeout
        self._apply = self.channel.unary_unary(
            f"/{SERVICE_NAME}/Apply",
            request_serializer=diff_pb2.ApplyRequest.SerializeToString,
            response_deserializer=diff_pb2.ApplyResponse.FromString,
        )
        self._diff = self.channel.unary_unary(
            f"/{SERVICE_NAME}/Diff",
            request_serializer=diff_pb2.DiffRequest.SerializeToString,
            response_deserializer=diff_pb2.DiffResponse.FromString,
        )

    def apply(
        self,
        media_type: str,
        digest: str,
        size: int,
        mounts: Sequence[Mount],
        annotations: dict[str, str] | None = None,
    ) -> Any:
        from cimsnap.service.errors import from_rpc_error

        request = diff_pb2.ApplyRequest(
            diff=diff_types_pb2.Descriptor(
                media_type=media_type, digest=digest, size=size, annotations=annotations or {}
            ),
        )
        for mount in mounts:
            request.mounts.add(
                type=mount.type,
                source=mount.source,
                target=mount.target,
                options=list(mount.options),
            )
        try:
            return self._apply(request, timeout=self.timeout, metadata=self.metadata).applied
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None

    def diff(self) -> Any:
        from cimsnap.service.errors import from_rpc_error

        try:
            return self._diff(diff_pb2.DiffRequest(), timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> DiffClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
