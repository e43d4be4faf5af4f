"""A typed client of containerd's snapshots API, for this service or containerd itself.

Used by the tests and benchmarks (and handy for scripts): the same calls work against
``cimsnap serve`` directly and against containerd's own socket, where a namespace must be given
(sent as the ``containerd-namespace`` gRPC metadata, as containerd's Go client does) and
``snapshotter`` selects the configured proxy plugin.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grpc

from cimsnap.service.errors import from_rpc_error
from cimsnap.service.proto import snapshots_pb2
from cimsnap.service.snapshots import METHODS, SERVICE_NAME, info_from_proto, mount_from_proto
from cimsnap.snapshotter.model import Info, Mount, Usage

NAMESPACE_METADATA_KEY = "containerd-namespace"


def unix_target(address: str) -> str:
    """A gRPC target for a socket path (``unix:`` prefixed unless already a target)."""
    return address if address.startswith(("unix:", "unix-abstract:")) else f"unix:{address}"


class SnapshotsClient:
    def __init__(
        self,
        address: str,
        *,
        snapshotter: str = "cimsnap",
        namespace: str | None = None,
        timeout: float | None = 60.0,
    ) -> None:
        self.channel = grpc.insecure_channel(unix_target(address))
        self.snapshotter = snapshotter
        self.timeout = timeout
        self.metadata = ((NAMESPACE_METADATA_KEY, namespace),) if namespace else None
        self._calls: dict[str, Any] = {}
        for method, (request_cls, response_cls, streaming) in METHODS.items():
            path = f"/{SERVICE_NAME}/{method}"
            factory = self.channel.unary_stream if streaming else self.channel.unary_unary
            self._calls[method] = factory(
                path,
                request_serializer=request_cls.SerializeToString,
                response_deserializer=response_cls.FromString,
            )

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> SnapshotsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self, timeout: float = 10.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def _call(self, method: str, request: Any) -> Any:
        try:
            return self._calls[method](request, timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None

    # -- the API -------------------------------------------------------------------------------

    def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        request = snapshots_pb2.PrepareSnapshotRequest(
            snapshotter=self.snapshotter, key=key, parent=parent, labels=dict(labels or {})
        )
        return [mount_from_proto(m) for m in self._call("Prepare", request).mounts]

    def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        request = snapshots_pb2.ViewSnapshotRequest(
            snapshotter=self.snapshotter, key=key, parent=parent, labels=dict(labels or {})
        )
        return [mount_from_proto(m) for m in self._call("View", request).mounts]

    def mounts(self, key: str) -> list[Mount]:
        request = snapshots_pb2.MountsRequest(snapshotter=self.snapshotter, key=key)
        return [mount_from_proto(m) for m in self._call("Mounts", request).mounts]

    def commit(
        self, name: str, key: str, labels: Mapping[str, str] | None = None, parent: str = ""
    ) -> None:
        request = snapshots_pb2.CommitSnapshotRequest(
            snapshotter=self.snapshotter,
            name=name,
            key=key,
            labels=dict(labels or {}),
            parent=parent,
        )
        self._call("Commit", request)

    def remove(self, key: str) -> None:
        self._call(
            "Remove", snapshots_pb2.RemoveSnapshotRequest(snapshotter=self.snapshotter, key=key)
        )

    def stat(self, key: str) -> Info:
        request = snapshots_pb2.StatSnapshotRequest(snapshotter=self.snapshotter, key=key)
        return info_from_proto(self._call("Stat", request).info)

    def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        request = snapshots_pb2.UpdateSnapshotRequest(
            snapshotter=self.snapshotter,
            info=snapshots_pb2.Info(name=info.name, labels=info.labels),
        )
        request.update_mask.paths.extend(fieldpaths)
        return info_from_proto(self._call("Update", request).info)

    def walk(self, filters: Sequence[str] = ()) -> Iterator[Info]:
        request = snapshots_pb2.ListSnapshotsRequest(
            snapshotter=self.snapshotter, filters=list(filters)
        )
        try:
            for response in self._call("List", request):
                for info in response.info:
                    yield info_from_proto(info)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None

    def usage(self, key: str) -> Usage:
        response = self._call(
            "Usage", snapshots_pb2.UsageRequest(snapshotter=self.snapshotter, key=key)
        )
        return Usage(size=response.size, inodes=response.inodes)

    def cleanup(self) -> None:
        self._call("Cleanup", snapshots_pb2.CleanupRequest(snapshotter=self.snapshotter))
