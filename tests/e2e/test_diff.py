"""End to end: the differ (``containerd.services.diff.v1.Diff/Apply``) of ``cimsnap serve``.

Debian's containerd (1.6) cannot use a proxy differ (containerd 2.x can), so the tests play
containerd's unpacker against the service's socket: Prepare an unpack snapshot, Apply the layer
blob to its mounts, Commit.  Blobs come from a content store directory, or from a real
containerd's content store through its content API (``ctr content ingest`` puts them there).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cimsnap.errors import CimsnapError
from cimsnap.formats.cim import CimImage
from cimsnap.layers import layout
from cimsnap.layers.unpack import unpack_key
from cimsnap.service.client import SnapshotsClient
from cimsnap.service.differ import DiffClient
from cimsnap.snapshotter.model import Mount
from tests.e2e.containerd import NAMESPACE, CimsnapService, Containerd
from tests.images.builder import MEDIA_TYPES, LayerSpec, chain_ids, compress
from tests.images.fixtures import image_specs_fixture, image_tars_fixture
from tests.images.model import assert_cim_matches, expected_trees, fold

pytestmark = pytest.mark.tool
__all__ = ["image_specs_fixture", "image_tars_fixture"]  # fixtures used below

HIVE_BASES = {fold(h.base_path) for h in layout.HIVE_TABLE}
REWRITTEN = {fold(layout.BCD_FILE), fold(layout.UVM_SYSTEM_HIVE)}
UNCOMPRESSED = "containerd.io/uncompressed"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def store_blob(content_dir: Path, data: bytes, digest: str | None = None) -> str:
    digest = digest or sha(data)
    path = content_dir / "blobs" / "sha256" / digest.split(":")[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def start_service(
    workdir: Path, env: dict[str, str], extra_args: tuple[str, ...] = ()
) -> CimsnapService:
    service = CimsnapService(workdir, extra_args=extra_args)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        service.start()
    return service


@pytest.fixture(scope="module")
def content_dir(e2e_dir: Path) -> Path:
    path = e2e_dir / "content"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def differ_service(e2e_dir: Path, content_dir: Path) -> Iterator[CimsnapService]:
    service = start_service(
        e2e_dir / "svc-diff",
        {"CIMSNAP_CONTENT_DIR": str(content_dir), "CIMSNAP_CONTAINERD_ADDRESS": ""},
    )
    try:
        yield service
    finally:
        service.stop()


def apply_chain(
    service: CimsnapService,
    blobs: list[tuple[str, str, int, dict[str, str]]],
    namespace: str | None = None,
) -> list[str]:
    """Prepare/Apply/Commit each blob as containerd's unpacker would; returns the chain IDs."""
    done: list[str] = []
    diff_ids: list[str] = []
    with (
        SnapshotsClient(str(service.address)) as sn,
        DiffClient(str(service.address), namespace=namespace) as differ,
    ):
        for media_type, digest, size, annotations in blobs:
            parent = done[-1] if done else ""
            key = unpack_key(f"pending-{len(done)}")
            mounts = sn.prepare(key, parent)
            applied = differ.apply(media_type, digest, size, mounts, annotations)
            diff_ids.append(applied.digest)
            chain = chain_ids(diff_ids)[-1]
            sn.commit(chain, key)
            done.append(chain)
    return done


def snapshot_dirs(service: CimsnapService) -> dict[str, Path]:
    from cimsnap.snapshotter.metastore import MetaStore

    store = MetaStore(service.root / "metadata.db")
    try:
        with store.transaction() as tx:
            return {name: service.root / "snapshots" / i for i, name in tx.id_map().items()}
    finally:
        store.close()


def test_apply_uncompressed_gzip_and_zstd_layers(
    differ_service: CimsnapService,
    content_dir: Path,
    image_specs: list[LayerSpec],
    image_tars: list[bytes],
) -> None:
    blobs = []
    for tar, kind in zip(image_tars, ["gzip", "zstd", "none"], strict=True):
        packed = compress(tar, kind)
        blobs.append(
            (
                MEDIA_TYPES[kind],
                store_blob(content_dir, packed),
                len(packed),
                {UNCOMPRESSED: sha(tar)},
            )
        )
    chain = apply_chain(differ_service, blobs)
    assert chain == chain_ids([sha(t) for t in image_tars])  # Apply returned the diff IDs
    dirs = snapshot_dirs(differ_service)
    trees = expected_trees(image_specs)
    for i, name in enumerate(chain):
        layer_dir = dirs[name]
        with CimImage.open(layer_dir.parent / "cim-layers" / f"{layer_dir.name}.cim") as image:
            ignore = HIVE_BASES | {"layout"} | ({"hives"} if i == 0 else set())
            assert_cim_matches(image, trees[i], ignore=ignore, ignore_content=REWRITTEN)
    assert (dirs[chain[0]] / "UtilityVM" / "SystemTemplate.vhdx").is_file()
    assert "[proxy_plugins.cimsnap-diff]" in differ_service.stdout()
    assert 'type = "diff"' in differ_service.stdout()


@pytest.fixture
def unpack_snapshot(
    differ_service: CimsnapService,
) -> Iterator[tuple[SnapshotsClient, str, list[Mount]]]:
    with SnapshotsClient(str(differ_service.address)) as sn:
        key = unpack_key("sha256:" + "0" * 64)
        mounts = sn.prepare(key)
        try:
            yield sn, key, mounts
        finally:
            sn.remove(key)


def test_wrong_blob_digest_is_refused(
    differ_service: CimsnapService,
    content_dir: Path,
    unpack_snapshot,
    image_tars: list[bytes],  # type: ignore[no-untyped-def]
) -> None:
    _, _, mounts = unpack_snapshot
    packed = compress(image_tars[0], "gzip")
    lie = sha(b"some other blob")
    store_blob(content_dir, packed, digest=lie)  # stored under a digest it does not have
    with (
        DiffClient(str(differ_service.address)) as differ,
        pytest.raises(CimsnapError, match="blob digest mismatch") as caught,
    ):
        differ.apply(MEDIA_TYPES["gzip"], lie, len(packed), mounts)
    assert caught.value.kind == "invalid argument"
    assert not any(Path(mounts[0].source).iterdir())
    assert not Path(next(o for o in mounts[0].options if o.startswith("cimpath="))[8:]).exists()


def test_wrong_diff_id_is_refused(
    differ_service: CimsnapService,
    content_dir: Path,
    unpack_snapshot,
    image_tars: list[bytes],  # type: ignore[no-untyped-def]
) -> None:
    _, _, mounts = unpack_snapshot
    packed = compress(image_tars[0], "zstd")
    digest = store_blob(content_dir, packed)
    with (
        DiffClient(str(differ_service.address)) as differ,
        pytest.raises(CimsnapError, match="wrong diff id"),
    ):
        differ.apply(
            MEDIA_TYPES["zstd"], digest, len(packed), mounts, {UNCOMPRESSED: sha(b"not this layer")}
        )
    assert not any(Path(mounts[0].source).iterdir())


def test_missing_content_and_bad_requests(
    differ_service: CimsnapService,
    unpack_snapshot,  # type: ignore[no-untyped-def]
) -> None:
    _, _, mounts = unpack_snapshot
    with DiffClient(str(differ_service.address)) as differ:
        with pytest.raises(CimsnapError, match="not found") as caught:
            differ.apply(MEDIA_TYPES["none"], sha(b"absent"), 6, mounts)
        assert caught.value.kind == "not found"
        outside = [Mount(type="CimFS", source="/etc", options=("rw", "cimpath=/etc/x.cim"))]
        with pytest.raises(CimsnapError, match="outside the snapshotter"):
            differ.apply(MEDIA_TYPES["none"], sha(b"absent"), 6, outside)
        with pytest.raises(CimsnapError, match="mount type"):
            differ.apply(
                MEDIA_TYPES["none"], sha(b"x"), 1, [Mount(type="overlay", source=mounts[0].source)]
            )
        with pytest.raises(CimsnapError, match="only applies layers") as caught:
            differ.diff()
        assert caught.value.kind == "not implemented"


def test_content_from_containerd(
    containerd: Containerd, e2e_dir: Path, image_tars: list[bytes]
) -> None:
    """Blobs read through containerd's content API, in the request's namespace."""
    # The serve flags, which override whatever the environment says.
    service = start_service(
        e2e_dir / "svc-diff-ctd",
        {"CIMSNAP_CONTENT_DIR": str(e2e_dir / "nowhere"), "CIMSNAP_CONTAINERD_ADDRESS": ""},
        (
            "--content-dir",
            str(e2e_dir / "empty-content"),
            "--containerd-address",
            str(containerd.address),
        ),
    )
    try:
        blobs = []
        for tar, kind in zip(image_tars[:2], ["zstd", "gzip"], strict=True):
            packed = compress(tar, kind)
            digest = sha(packed)
            proc = subprocess.run(
                [
                    "ctr",
                    "--address",
                    str(containerd.address),
                    "--namespace",
                    NAMESPACE,
                    "content",
                    "ingest",
                    "--expected-digest",
                    digest,
                    "--expected-size",
                    str(len(packed)),
                    f"test-{digest[7:19]}",
                ],
                input=packed,
                capture_output=True,
                timeout=60,
            )
            assert proc.returncode == 0, proc.stderr
            blobs.append((MEDIA_TYPES[kind], digest, len(packed), {}))
        chain = apply_chain(service, blobs, namespace=NAMESPACE)
        assert chain == chain_ids([sha(t) for t in image_tars[:2]])
        # Another namespace does not see the content.
        with (
            SnapshotsClient(str(service.address)) as sn,
            DiffClient(str(service.address), namespace="elsewhere") as differ,
        ):
            key = unpack_key("sha256:" + "1" * 64)
            mounts = sn.prepare(key)
            try:
                with pytest.raises(CimsnapError, match="not found"):
                    differ.apply(*blobs[0][:3], mounts)
            finally:
                sn.remove(key)
    finally:
        service.stop()
    assert os.path.exists(containerd.address)


def test_messages_are_wire_compatible_with_containerd() -> None:
    """Field numbers and types as in containerd's diff.proto, descriptor.proto, content.proto."""
    from cimsnap.service.proto import diff_content_pb2, diff_pb2, diff_types_pb2

    def fields(message: object) -> dict[str, tuple[int, int]]:
        descriptor = message.DESCRIPTOR  # type: ignore[attr-defined]
        return {f.name: (f.number, f.type) for f in descriptor.fields}

    string, int64, boolean, nested, raw = 9, 3, 8, 11, 12  # FieldDescriptor.TYPE_*
    assert fields(diff_pb2.ApplyRequest) == {
        "diff": (1, nested),
        "mounts": (2, nested),
        "payloads": (3, nested),
        "sync_fs": (4, boolean),
    }
    assert fields(diff_pb2.ApplyResponse) == {"applied": (1, nested)}
    assert fields(diff_pb2.DiffRequest) == {
        "left": (1, nested),
        "right": (2, nested),
        "media_type": (3, string),
        "ref": (4, string),
        "labels": (5, nested),
        "source_date_epoch": (6, nested),
    }
    assert fields(diff_pb2.DiffResponse) == {"diff": (3, nested)}
    assert fields(diff_types_pb2.Descriptor) == {
        "media_type": (1, string),
        "digest": (2, string),
        "size": (3, int64),
        "annotations": (5, nested),
    }
    assert fields(diff_content_pb2.ReadContentRequest) == {
        "digest": (1, string),
        "offset": (2, int64),
        "size": (3, int64),
    }
    assert fields(diff_content_pb2.ReadContentResponse) == {"offset": (1, int64), "data": (2, raw)}
    assert (
        diff_pb2.DESCRIPTOR.services_by_name["Diff"].full_name == "containerd.services.diff.v1.Diff"
    )
    # Bytes as Go's encoder writes them: field 1 (diff) holding field 2 (digest), then sync_fs.
    request = diff_pb2.ApplyRequest(sync_fs=True)
    request.diff.digest = "sha256:ab"
    assert request.SerializeToString() == b"\n\x0b\x12\tsha256:ab \x01"
