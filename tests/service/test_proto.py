"""The protos written here are wire-compatible with containerd's snapshots.v1 and types.Mount.

The expected table is containerd's api/services/snapshots/v1/snapshots.proto and
api/types/mount.proto (field names, numbers, types, labels): those decide the bytes on the wire
and the gRPC method paths.
"""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import FieldDescriptor as F

from cimsnap.service.proto import mount_pb2, snapshots_pb2

S, I64, ENUM, MSG = F.TYPE_STRING, F.TYPE_INT64, F.TYPE_ENUM, F.TYPE_MESSAGE

# message -> [(field, number, type, repeated, message type full name or None)]
CONTAINERD = {
    "containerd.types.Mount": [
        ("type", 1, S, False, None),
        ("source", 2, S, False, None),
        ("target", 3, S, False, None),
        ("options", 4, S, True, None),
    ],
    "PrepareSnapshotRequest": [
        ("snapshotter", 1, S, False, None),
        ("key", 2, S, False, None),
        ("parent", 3, S, False, None),
        ("labels", 4, MSG, True, "map"),
    ],
    "PrepareSnapshotResponse": [("mounts", 1, MSG, True, "containerd.types.Mount")],
    "ViewSnapshotRequest": [
        ("snapshotter", 1, S, False, None),
        ("key", 2, S, False, None),
        ("parent", 3, S, False, None),
        ("labels", 4, MSG, True, "map"),
    ],
    "ViewSnapshotResponse": [("mounts", 1, MSG, True, "containerd.types.Mount")],
    "MountsRequest": [("snapshotter", 1, S, False, None), ("key", 2, S, False, None)],
    "MountsResponse": [("mounts", 1, MSG, True, "containerd.types.Mount")],
    "RemoveSnapshotRequest": [("snapshotter", 1, S, False, None), ("key", 2, S, False, None)],
    "CommitSnapshotRequest": [
        ("snapshotter", 1, S, False, None),
        ("name", 2, S, False, None),
        ("key", 3, S, False, None),
        ("labels", 4, MSG, True, "map"),
        ("parent", 5, S, False, None),
    ],
    "StatSnapshotRequest": [("snapshotter", 1, S, False, None), ("key", 2, S, False, None)],
    "Info": [
        ("name", 1, S, False, None),
        ("parent", 2, S, False, None),
        ("kind", 3, ENUM, False, None),
        ("created_at", 4, MSG, False, "google.protobuf.Timestamp"),
        ("updated_at", 5, MSG, False, "google.protobuf.Timestamp"),
        ("labels", 6, MSG, True, "map"),
    ],
    "StatSnapshotResponse": [("info", 1, MSG, False, "containerd.services.snapshots.v1.Info")],
    "UpdateSnapshotRequest": [
        ("snapshotter", 1, S, False, None),
        ("info", 2, MSG, False, "containerd.services.snapshots.v1.Info"),
        ("update_mask", 3, MSG, False, "google.protobuf.FieldMask"),
    ],
    "UpdateSnapshotResponse": [("info", 1, MSG, False, "containerd.services.snapshots.v1.Info")],
    "ListSnapshotsRequest": [("snapshotter", 1, S, False, None), ("filters", 2, S, True, None)],
    "ListSnapshotsResponse": [("info", 1, MSG, True, "containerd.services.snapshots.v1.Info")],
    "UsageRequest": [("snapshotter", 1, S, False, None), ("key", 2, S, False, None)],
    "UsageResponse": [("size", 1, I64, False, None), ("inodes", 2, I64, False, None)],
    "CleanupRequest": [("snapshotter", 1, S, False, None)],
}

SERVICE = {
    "Prepare": ("PrepareSnapshotRequest", "PrepareSnapshotResponse", False),
    "View": ("ViewSnapshotRequest", "ViewSnapshotResponse", False),
    "Mounts": ("MountsRequest", "MountsResponse", False),
    "Commit": ("CommitSnapshotRequest", "google.protobuf.Empty", False),
    "Remove": ("RemoveSnapshotRequest", "google.protobuf.Empty", False),
    "Stat": ("StatSnapshotRequest", "StatSnapshotResponse", False),
    "Update": ("UpdateSnapshotRequest", "UpdateSnapshotResponse", False),
    "List": ("ListSnapshotsRequest", "ListSnapshotsResponse", True),
    "Usage": ("UsageRequest", "UsageResponse", False),
    "Cleanup": ("CleanupRequest", "google.protobuf.Empty", False),
}


def _descriptor(name: str):  # type: ignore[no-untyped-def]
    if name.startswith("containerd.types."):
        return mount_pb2.DESCRIPTOR.message_types_by_name[name.rsplit(".", 1)[1]]
    return snapshots_pb2.DESCRIPTOR.message_types_by_name[name]


@pytest.mark.parametrize("message", sorted(CONTAINERD))
def test_fields_match_containerd(message: str) -> None:
    descriptor = _descriptor(message)
    actual = []
    for f in sorted(descriptor.fields, key=lambda f: f.number):
        target = None
        if f.message_type is not None:
            target = "map" if f.message_type.GetOptions().map_entry else f.message_type.full_name
        # protobuf 7 replaced ``label`` by ``is_repeated``
        repeated = f.is_repeated if hasattr(f, "is_repeated") else f.label == F.LABEL_REPEATED
        actual.append((f.name, f.number, f.type, repeated, target))
    assert actual == CONTAINERD[message]


def test_packages_and_enum() -> None:
    assert snapshots_pb2.DESCRIPTOR.package == "containerd.services.snapshots.v1"
    assert mount_pb2.DESCRIPTOR.package == "containerd.types"
    assert snapshots_pb2.Kind == {"UNKNOWN": 0, "VIEW": 1, "ACTIVE": 2, "COMMITTED": 3}
    labels = _descriptor("Info").fields_by_name["labels"].message_type
    assert [(f.name, f.number, f.type) for f in labels.fields] == [("key", 1, S), ("value", 2, S)]


def test_service_methods_match_containerd() -> None:
    service = snapshots_pb2.DESCRIPTOR.services_by_name["Snapshots"]
    assert service.full_name == "containerd.services.snapshots.v1.Snapshots"
    actual = {}
    for m in service.methods:
        prefix = "containerd.services.snapshots.v1."
        actual[m.name] = (
            m.input_type.full_name.removeprefix(prefix),
            m.output_type.full_name.removeprefix(prefix),
            m.server_streaming,
        )
    assert actual == SERVICE


def test_known_bytes_decode() -> None:
    # A PrepareSnapshotRequest as containerd encodes it (fields 1-4, labels as a map entry).
    wire = b'\n\x07cimsnap\x12\x0edefault/1/ctr1\x1a\x0edefault/0/base"\x0b\n\x01k\x12\x06v-alue'
    request = snapshots_pb2.PrepareSnapshotRequest.FromString(wire)
    assert (request.snapshotter, request.key, request.parent) == (
        "cimsnap",
        "default/1/ctr1",
        "default/0/base",
    )
    assert dict(request.labels) == {"k": "v-alue"}
    assert request.SerializeToString() == wire


def test_generated_modules_are_current() -> None:
    pytest.importorskip("grpc_tools")
    from cimsnap.service.proto import generate

    assert generate.main(["--check"]) == 0


def test_check_compares_meaning_not_formatting() -> None:
    pytest.importorskip("grpc_tools")
    import subprocess
    import sys

    from cimsnap.service.proto import generate

    text = generate.render(generate.PROTO_DIR / "snapshots.proto")
    reformatted = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--stdin-filename", "x.py", "-"],
        input=text,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert reformatted != text  # ruff requotes the generated literals...
    assert generate.signature(reformatted) == generate.signature(text)  # ...same meaning
    changed = text.replace("containerd.services.snapshots.v1", "containerd.services.snapshots.v2")
    assert generate.signature(changed) != generate.signature(text)
