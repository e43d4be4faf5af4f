"""The snapshots.v1 gRPC service: every method, streaming List, containerd's error codes."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from cimsnap.service.client import SnapshotsClient
from cimsnap.service.proto import snapshots_pb2
from cimsnap.service.server import SnapshotterServer
from cimsnap.service.snapshots import SERVICE_NAME
from cimsnap.snapshotter.model import Info, Kind, Mount
from tests.snapshotter.diskcheck import DiskChain


def test_every_method_round_trips(client: SnapshotsClient, server: SnapshotterServer) -> None:
    sn = server.snapshotter
    mounts = client.prepare("default/1/extract-1 sha256:a", labels={"containerd.io/x": "1"})
    assert mounts == sn.mounts("default/1/extract-1 sha256:a")
    client.commit("default/2/base", "default/1/extract-1 sha256:a", labels={"l": "v"})
    info = client.stat("default/2/base")
    assert (info.kind, info.labels, info.parent) == (Kind.COMMITTED, {"l": "v"}, "")
    assert info.created_ns == sn.stat("default/2/base").created_ns  # ns survive the wire
    (view,) = client.view("default/3/v", "default/2/base")
    assert view.type == "CimFS" and view.options[0] == "ro"
    assert client.mounts("default/3/v") == [view]
    updated = client.update(Info(name="default/3/v", labels={"a": "b"}), ["labels.a"])
    assert updated.labels == {"a": "b"} and updated.kind is Kind.VIEW
    assert [i.name for i in client.walk(["kind==view"])] == ["default/3/v"]
    usage = client.usage("default/3/v")
    assert usage == sn.usage("default/3/v")
    client.remove("default/3/v")
    assert [i.name for i in client.walk()] == ["default/2/base"]
    client.cleanup()


def test_container_snapshot_over_grpc(client: SnapshotsClient, server: SnapshotterServer) -> None:
    client.prepare("extract-1")
    client.commit("base", "extract-1")
    (mount,) = client.prepare("ctr", "base")
    assert isinstance(mount, Mount) and mount.options[0] == "rw"
    with DiskChain(Path(mount.source) / "sandbox.vhdx") as chain:
        assert chain.parent_paths == [server.snapshotter.root / "blank-base.vhdx"]


def test_list_streams_in_batches(client: SnapshotsClient, server: SnapshotterServer) -> None:
    for i in range(250):
        server.snapshotter.prepare(f"extract-{i:03d}")
    channel = grpc.insecure_channel(f"unix:{server.address}")
    call = channel.unary_stream(
        f"/{SERVICE_NAME}/List",
        request_serializer=snapshots_pb2.ListSnapshotsRequest.SerializeToString,
        response_deserializer=snapshots_pb2.ListSnapshotsResponse.FromString,
    )
    batches = [len(r.info) for r in call(snapshots_pb2.ListSnapshotsRequest(snapshotter="x"))]
    channel.close()
    assert batches == [100, 100, 50]
    assert len(list(client.walk(["name~=^extract-1"]))) == 100


def raw_call(server: SnapshotterServer, method: str, request: object) -> grpc.RpcError:
    from cimsnap.service.snapshots import METHODS

    request_cls, response_cls, _ = METHODS[method]
    with grpc.insecure_channel(f"unix:{server.address}") as channel:
        call = channel.unary_unary(
            f"/{SERVICE_NAME}/{method}",
            request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString,
        )
        with pytest.raises(grpc.RpcError) as info:
            call(request, timeout=30)
    return info.value


def test_errors_map_to_containerd_codes(server: SnapshotterServer) -> None:
    sn = server.snapshotter
    sn.prepare("extract-1")
    sn.commit("base", "extract-1")
    sn.prepare("extract-2", "base")
    pb = snapshots_pb2
    cases = [
        ("Stat", pb.StatSnapshotRequest(key="nope"), grpc.StatusCode.NOT_FOUND, "not found"),
        (
            "Prepare",
            pb.PrepareSnapshotRequest(key="extract-2"),
            grpc.StatusCode.ALREADY_EXISTS,
            "already exists",
        ),
        (
            "Remove",
            pb.RemoveSnapshotRequest(key="base"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "failed precondition",
        ),
        (
            "Commit",
            pb.CommitSnapshotRequest(name="x", key="ctr"),
            grpc.StatusCode.UNIMPLEMENTED,
            "not implemented",
        ),
        (
            "Prepare",
            pb.PrepareSnapshotRequest(key="ctr-no-parent"),
            grpc.StatusCode.UNIMPLEMENTED,
            "not implemented",
        ),
        (
            "Mounts",
            pb.MountsRequest(key="base"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "failed precondition",
        ),
    ]
    for method, request, code, suffix in cases:
        err = raw_call(server, method, request)
        assert err.code() == code, (method, err.details())
        assert err.details().endswith(": " + suffix), err.details()
    request = pb.UpdateSnapshotRequest(info=pb.Info(name="base"))
    request.update_mask.paths.append("parent")
    err = raw_call(server, "Update", request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot update 'parent' field" in err.details()


def test_bad_filter_is_invalid_argument(client: SnapshotsClient) -> None:
    from cimsnap.errors import KIND_INVALID_ARGUMENT, CimsnapError

    with pytest.raises(CimsnapError) as err:
        list(client.walk(["name=="]))
    assert err.value.kind == KIND_INVALID_ARGUMENT
    assert "expected value or quoted" in str(err.value)


def test_any_snapshotter_name_is_accepted(server: SnapshotterServer) -> None:
    for name in ("", "cimsnap", "windows-cimfs", "anything/at all"):
        with SnapshotsClient(str(server.address), snapshotter=name) as c:
            c.prepare(f"extract-{len(name)}")
            assert c.stat(f"extract-{len(name)}").kind is Kind.ACTIVE
