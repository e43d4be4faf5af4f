"""Layer blobs: gzip, zstd and plain tars, both digests checked, bad blobs refused cleanly."""

from __future__ import annotations

import gzip
import hashlib
import io
from pathlib import Path

import pytest

from cimsnap.errors import CimsnapError
from cimsnap.layers.apply import import_blob, local_target
from cimsnap.layers.blobs import LayerBlob, verify
from tests.images.builder import compress


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
@pytest.mark.parametrize("threaded", [True, False])
def test_digests_of_each_compression(compression: str, threaded: bool) -> None:
    data = bytes(range(256)) * 20_000 + b"tail"
    packed = compress(data, compression)
    blob = LayerBlob(io.BytesIO(packed), threaded=threaded)
    out = bytearray()
    buffer = bytearray(70_000)
    while n := blob.readinto(buffer):
        out += buffer[:n]
    found = blob.finish()
    assert bytes(out) == data
    assert (found.digest, found.size) == (sha(packed), len(packed))
    assert (found.diff_id, found.uncompressed_size) == (sha(data), len(data))
    assert found.compression == compression
    verify(found, digest=sha(packed), size=len(packed), diff_id=sha(data))


def test_multi_member_gzip_and_trailing_bytes_are_hashed() -> None:
    data = gzip.compress(b"first ") + gzip.compress(b"second")
    blob = LayerBlob(io.BytesIO(data))
    found = blob.finish()
    assert found.uncompressed_size == len(b"first second") and found.diff_id == sha(b"first second")
    assert found.digest == sha(data)


def test_mismatches_are_reported() -> None:
    packed = compress(b"x" * 1000, "gzip")
    found = LayerBlob(io.BytesIO(packed)).finish()
    with pytest.raises(CimsnapError, match="blob digest mismatch"):
        verify(found, digest=sha(b"other"))
    with pytest.raises(CimsnapError, match="blob size mismatch"):
        verify(found, size=len(packed) + 1)
    with pytest.raises(CimsnapError, match="wrong diff id"):
        verify(found, diff_id=sha(b"other"))


def test_media_type_must_match_the_content() -> None:
    with pytest.raises(CimsnapError, match="announces gzip"):
        LayerBlob(
            io.BytesIO(b"plain tar bytes" * 100),
            media_type="application/vnd.oci.image.layer.v1.tar+gzip",
        )


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_corrupt_compressed_stream(compression: str) -> None:
    data = b"".join(hashlib.sha256(bytes([i % 256, i // 256])).digest() for i in range(20_000))
    packed = bytearray(compress(data, compression))
    packed[len(packed) // 2 : len(packed) // 2 + 64] = bytes(64)
    # Either the decoder notices (gzip's CRC, a bad zstd block) or the diff ID does.
    with pytest.raises(CimsnapError, match=r"cannot decompress|wrong diff id"):
        verify(LayerBlob(io.BytesIO(bytes(packed))).finish(), diff_id=sha(data))


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_truncated_compressed_stream(compression: str) -> None:
    packed = compress(bytes(range(256)) * 4000, compression)
    with pytest.raises(CimsnapError, match="cannot decompress"):
        LayerBlob(io.BytesIO(packed[: len(packed) // 2])).finish()


def test_wrong_diff_id_leaves_no_layer(tmp_path: Path, image_tars: list[bytes]) -> None:
    """The layer is complete and valid but not the one promised: nothing is kept."""
    packed = compress(image_tars[0], "zstd")
    target = local_target(tmp_path / "snapshots" / "1")
    with pytest.raises(CimsnapError, match="wrong diff id"):
        import_blob(io.BytesIO(packed), target, diff_id=sha(b"another layer"))
    assert not target.layer_dir.exists()
    assert not any((tmp_path / "snapshots").rglob("*.cim"))
    with pytest.raises(CimsnapError, match="blob digest mismatch"):
        import_blob(io.BytesIO(packed), target, digest=sha(b"another blob"))
    assert list((tmp_path / "snapshots").iterdir()) == []
    applied = import_blob(
        io.BytesIO(packed), target, digest=sha(packed), size=len(packed), diff_id=sha(image_tars[0])
    )
    assert applied.digest == sha(image_tars[0]) and applied.size == len(image_tars[0])
    assert target.cim_path is not None and target.cim_path.is_file()
