"""The ``containerd.services.snapshots.v1.Snapshots`` gRPC service over a CimFS snapshotter.

Every method of containerd's snapshots API (api/services/snapshots/v1/snapshots.proto) maps to
one snapshotter call; List streams its answer in batches.  The ``snapshotter`` field of each
request carries the name containerd's configuration gives this proxy plugin and is accepted
whatever it is.  Errors become the gRPC codes containerd expects (:mod:`.errors`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import empty_pb2

from cimsnap.service.errors import to_status
from cimsnap.service.proto import mount_pb2, snapshots_pb2
from cimsnap.snapshotter.model import Info, Kind, Mount
from cimsnap.snapshotter.snapshotter import CimFSSnapshotter

log = logging.getLogger(__name__)

SERVICE_NAME = "containerd.services.snapshots.v1.Snapshots"
LIST_BATCH = 100  # infos per streamed ListSnapshotsResponse, as containerd's service sends them


def mount_to_proto(mount: Mount) -> Any:
    return mount_pb2.Mount(
        type=mount.type, source=mount.source, target=mount.target, options=list(mount.options)
    )


def mount_from_proto(message: Any) -> Mount:
    return Mount(
        type=message.type,
        source=message.source,
        target=message.target,
        options=tuple(message.options),
    )


def info_to_proto(info: Info) -> Any:
    message = snapshots_pb2.Info(
        name=info.name, parent=info.parent, kind=int(info.kind), labels=info.labels
    )
    message.created_at.FromNanoseconds(info.created_ns)
    message.updated_at.FromNanoseconds(info.updated_ns)
    return message


def info_from_proto(message: Any) -> Info:
    return Info(
        name=message.name,
        kind=Kind(message.kind) if message.kind in Kind._value2member_map_ else Kind.UNKNOWN,
        parent=message.parent,
        labels=dict(message.labels),
        created_ns=message.created_at.ToNanoseconds(),
        updated_ns=message.updated_at.ToNanoseconds(),
    )


class SnapshotsService:
    """Request handlers; one instance serves every connection (the snapshotter is thread-safe)."""

    def __init__(self, snapshotter: CimFSSnapshotter) -> None:
        self.sn = snapshotter

    def Prepare(self, request: Any, context: grpc.ServicerContext) -> Any:
        mounts = self.sn.prepare(request.key, request.parent, dict(request.labels))
        return snapshots_pb2.PrepareSnapshotResponse(mounts=[mount_to_proto(m) for m in mounts])

    def View(self, request: Any, context: grpc.ServicerContext) -> Any:
        mounts = self.sn.view(request.key, request.parent, dict(request.labels))
        return snapshots_pb2.ViewSnapshotResponse(mounts=[mount_to_proto(m) for m in mounts])

    def Mounts(self, request: Any, context: grpc.ServicerContext) -> Any:
        mounts = self.sn.mounts(request.key)
        return snapshots_pb2.MountsResponse(mounts=[mount_to_proto(m) for m in mounts])

    def Commit(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.sn.commit(request.name, request.key, dict(request.labels), request.parent)
        return empty_pb2.Empty()

    def Remove(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.sn.remove(request.key)
        return empty_pb2.Empty()

    def Stat(self, request: Any, context: grpc.ServicerContext) -> Any:
        return snapshots_pb2.StatSnapshotResponse(info=info_to_proto(self.sn.stat(request.key)))

    def Update(self, request: Any, context: grpc.ServicerContext) -> Any:
        info = info_from_proto(request.info)
        updated = self.sn.update(info, list(request.update_mask.paths))
        return snapshots_pb2.UpdateSnapshotResponse(info=info_to_proto(updated))

    def List(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        batch: list[Any] = []
        for info in self.sn.walk(list(request.filters)):
            batch.append(info_to_proto(info))
            if len(batch) >= LIST_BATCH:
                yield snapshots_pb2.ListSnapshotsResponse(info=batch)
                batch = []
        if batch:
            yield snapshots_pb2.ListSnapshotsResponse(info=batch)

    def Usage(self, request: Any, context: grpc.ServicerContext) -> Any:
        usage = self.sn.usage(request.key)
        return snapshots_pb2.UsageResponse(size=usage.size, inodes=usage.inodes)

    def Cleanup(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.sn.cleanup()
        return empty_pb2.Empty()


# method -> (request class, response class, server-streaming)
METHODS: dict[str, tuple[Any, Any, bool]] = {
    "Prepare": (snapshots_pb2.PrepareSnapshotRequest, snapshots_pb2.PrepareSnapshotResponse, False),
    "View": (snapshots_pb2.ViewSnapshotRequest, snapshots_pb2.ViewSnapshotResponse, False),
    "Mounts": (snapshots_pb2.MountsRequest, snapshots_pb2.MountsResponse, False),
    "Commit": (snapshots_pb2.CommitSnapshotRequest, empty_pb2.Empty, False),
    "Remove": (snapshots_pb2.RemoveSnapshotRequest, empty_pb2.Empty, False),
    "Stat": (snapshots_pb2.StatSnapshotRequest, snapshots_pb2.StatSnapshotResponse, False),
    "Update": (snapshots_pb2.UpdateSnapshotRequest, snapshots_pb2.UpdateSnapshotResponse, False),
    "List": (snapshots_pb2.ListSnapshotsRequest, snapshots_pb2.ListSnapshotsResponse, True),
    "Usage": (snapshots_pb2.UsageRequest, snapshots_pb2.UsageResponse, False),
    "Cleanup": (snapshots_pb2.CleanupRequest, empty_pb2.Empty, False),
}


def _describe(request: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    # (LogRecord reserves "name", so the commit target is logged as "commit_name")
    for attr, field in (("key", "key"), ("parent", "parent"), ("name", "commit_name")):
        value = getattr(request, attr, "")
        if value:
            fields[field] = value
    info = getattr(request, "info", None)
    if info is not None and info.name:
        fields["key"] = info.name
    return fields


def _unary(method: str, fn: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        started = time.perf_counter()
        fields = {"method": method, **_describe(request)}
        try:
            response = fn(request, context)
        except Exception as err:
            code, text = to_status(err)
            level = logging.ERROR if code == grpc.StatusCode.UNKNOWN else logging.INFO
            log.log(level, text, extra={**fields, "code": code.name}, exc_info=_is_bug(err))
            context.abort(code, text)
        log.debug("ok", extra={**fields, "ms": round((time.perf_counter() - started) * 1e3, 3)})
        return response

    return handler


def _stream(
    method: str, fn: Callable[[Any, grpc.ServicerContext], Iterator[Any]]
) -> Callable[..., Any]:
    def handler(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        fields = {"method": method}
        try:
            yield from fn(request, context)
        except Exception as err:
            code, text = to_status(err)
            log.info(text, extra={**fields, "code": code.name}, exc_info=_is_bug(err))
            context.abort(code, text)

    return handler


def _is_bug(err: BaseException) -> bool:
    from cimsnap.errors import CimsnapError

    return not isinstance(err, CimsnapError | OSError)


def generic_handler(service: SnapshotsService) -> grpc.GenericRpcHandler:
    """The gRPC handler serving ``service`` under containerd's service name."""
    handlers = {}
    for method, (request_cls, response_cls, streaming) in METHODS.items():
        fn = getattr(service, method)
        if streaming:
            handlers[method] = grpc.unary_stream_rpc_method_handler(
                _stream(method, fn),
                request_deserializer=request_cls.FromString,
                response_serializer=response_cls.SerializeToString,
            )
        else:
            handlers[method] = grpc.unary_unary_rpc_method_handler(
                _unary(method, fn),
                request_deserializer=request_cls.FromString,
                response_serializer=response_cls.SerializeToString,
            )
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)
