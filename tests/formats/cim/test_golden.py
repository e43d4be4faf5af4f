"""Pinned output: deterministic images of fixed trees must stay byte-identical across changes.

The digests below were computed from the writer as it was before the performance work on the
writer's hot path (and must not change with it): the on-disk output of a given input is part of
the contract (deterministic mode promises byte-identical images for identical input, and layer
CIMs are compared by digest).  If a deliberate format change moves them, update the digests in
the same commit and say why.

The trees exercise every path of the writer: small-data and data-region objects around every
size boundary (24-byte digests, 1 KiB small-data limit, 4 KiB pages, the 1 MiB copy buffer and
streamed objects beyond it), duplicates (dedup within an image and against a fork's parent),
zero pages left as holes, sparse streams, alternate streams, hard links, SDs, EAs, reparse
points, Unicode names whose upcase mapping differs from ``str.upper``, more than one file table,
replaced and deleted paths (FileID reuse), a fork, and ``cim create`` of a host tree.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import random
from pathlib import Path

import pytest

from cimsnap.formats.cim import CimImage, CimWriter, FileMetadata, datapipe
from cimsnap.formats.cim.check import check_object_ids
from cimsnap.formats.cim.format import (
    FILE_ATTRIBUTE_ARCHIVE,
    FILE_ATTRIBUTE_HIDDEN,
    FILE_ATTRIBUTE_READONLY,
    FILE_ATTRIBUTE_SPARSE_FILE,
    FILE_ATTRIBUTE_SYSTEM,
)
from cimsnap.formats.cim.hostfs import (
    XATTR_ATTRIBUTES,
    XATTR_CHANGE_TIME,
    XATTR_CREATION_TIME,
    XATTR_EAS,
    XATTR_LAST_ACCESS_TIME,
    XATTR_LAST_WRITE_TIME,
    XATTR_SD,
    create_from_directory,
)
from cimsnap.formats.cim.metadata import ExtendedAttribute, encode_eas, symlink_reparse_buffer

MiB = 1 << 20
SD = bytes.fromhex("01000480") + bytes(16)
SD_OTHER = bytes.fromhex("01000480") + bytes(range(1, 17))
# Sizes around every boundary of the writer (digest length, small-data limit, page, buffer).
SIZES = (0, 1, 23, 24, 25, 100, 1023, 1024, 1025, 4095, 4096, 4097, 70_001)
LARGE_SIZES = (MiB - 1, MiB, MiB + 1, 3 * MiB + 17)

GOLDEN_BASE = "62020b13a2b9824f9a924fd0bfa91ccd2bbdef02c4b555d9d8063d9134c6174d"
GOLDEN_FORK = "2652fd8d2bbb70d10fc58def3ab811b6d671455eb6d2588c2188ac758778e442"
GOLDEN_HOSTFS = "bd2b2e82c7d3e9cff20d0c1acbccec39071c66e42e5bbe07523d22cd653300ae"


class _ReadOnly:
    """A data source with ``read`` only (no ``readinto``), as some callers pass."""

    def __init__(self, data: bytes) -> None:
        self._raw = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._raw.read(min(n, 777) if n >= 0 else 777)  # short reads too


def _meta(rng: random.Random, attributes: int = FILE_ATTRIBUTE_ARCHIVE) -> FileMetadata:
    times = [rng.randrange(1 << 62) for _ in range(4)]
    return FileMetadata(attributes, *times)


def _with_zero_pages(rng: random.Random, size: int) -> bytes:
    data = bytearray(rng.randbytes(size))
    for page in range(1, size // 4096, 3):  # every third page zero, unaligned tail kept
        data[page * 4096 : (page + 1) * 4096] = bytes(4096)
    return bytes(data)


def build_base(path: Path) -> None:
    rng = random.Random(20240501)
    with CimWriter.create(path, deterministic=True) as w:
        w.add("\\", FileMetadata.directory(creation_time=5, security_descriptor=SD))
        w.add("sizes", FileMetadata.directory(last_write_time=11, security_descriptor=SD))
        for size in SIZES + LARGE_SIZES:
            w.add(f"sizes\\f{size}", _meta(rng), io.BytesIO(rng.randbytes(size)), size=size)
        # The same bytes under other names: deduplicated.
        shared = rng.randbytes(5000)
        for i in range(3):
            w.add(f"sizes\\dup{i}", _meta(rng), io.BytesIO(shared), size=len(shared))
        big_shared = rng.randbytes(2 * MiB + 5)
        w.add("sizes\\bigdup0", _meta(rng), io.BytesIO(big_shared), size=len(big_shared))
        w.add("sizes\\bigdup1", _meta(rng), io.BytesIO(big_shared))  # size unknown
        w.add("sizes\\readonly", _meta(rng), _ReadOnly(rng.randbytes(3000)))  # type: ignore[arg-type]
        w.add("sizes\\readonly-big", _meta(rng), _ReadOnly(rng.randbytes(MiB + 300)))  # type: ignore[arg-type]

        w.add("holes", FileMetadata.directory(security_descriptor=SD_OTHER))
        w.add("holes\\zero-pages", _meta(rng), io.BytesIO(_with_zero_pages(rng, 300_000)))
        w.add("holes\\zero-pages-big", _meta(rng), io.BytesIO(_with_zero_pages(rng, 2 * MiB + 9)))
        w.add("holes\\all-zero", _meta(rng), io.BytesIO(bytes(50_000)), size=50_000)
        w.add("holes\\all-zero-small", _meta(rng), io.BytesIO(bytes(100)), size=100)
        sparse = FILE_ATTRIBUTE_SPARSE_FILE | FILE_ATTRIBUTE_ARCHIVE
        w.add("holes\\sparse-zero", _meta(rng, sparse), io.BytesIO(bytes(90_000)), size=90_000)
        w.add("holes\\sparse-zero-small", _meta(rng, sparse), io.BytesIO(bytes(10)), size=10)
        w.add("holes\\sparse-zero-big", _meta(rng, sparse), io.BytesIO(bytes(MiB + 1)))
        w.add("holes\\sparse-data", _meta(rng, sparse), io.BytesIO(_with_zero_pages(rng, 40_000)))
        w.add("holes\\no-data", _meta(rng, sparse), size=1 << 40)
        w.add("holes\\empty", _meta(rng))

        w.add("meta", FileMetadata.directory(attributes=FILE_ATTRIBUTE_HIDDEN))
        eas = encode_eas([ExtendedAttribute(b"$KERNEL.PURGE.ESBCACHE", b"\x01" * 30, 0x80)])
        for i in range(4):
            meta = _meta(rng, FILE_ATTRIBUTE_READONLY | FILE_ATTRIBUTE_SYSTEM)
            meta.security_descriptor = SD if i % 2 else SD_OTHER
            meta.extended_attributes = eas if i < 2 else b""
            w.add(f"meta\\m{i}", meta, io.BytesIO(rng.randbytes(30 + i)))
        link = _meta(rng)
        link.reparse_buffer = symlink_reparse_buffer("..\\sizes\\f100", relative=True)
        w.add("meta\\symlink", link)
        w.add_stream("meta\\m0", "Zone.Identifier", io.BytesIO(b"[ZoneTransfer]\r\nZoneId=3\r\n"))
        w.add_stream("meta\\m0", "big", io.BytesIO(rng.randbytes(20_000)))
        w.add_stream("meta\\m1", "huge", io.BytesIO(rng.randbytes(MiB + 7)))
        w.add_stream("\\", "root-stream", io.BytesIO(b"root"))
        w.add_link("meta\\m0-link", "meta\\m0")
        w.add_link("sizes\\f4096-link", "sizes\\f4096")

        # Names whose NTFS upcase differs from str.upper(), non-BMP, case variants.
        w.add("names", FileMetadata.directory())
        for name in ("µ", "ı", "ſ", "ß", "é", "É-x", "\U0001f600", "Zeta", "alpha", "ALPHA2", "ǅ"):
            w.add(f"names\\{name}", _meta(rng), io.BytesIO(name.encode("utf-8")))

        # More than one file table (1024 FileIDs each), many entries in one directory.
        w.add("many", FileMetadata.directory())
        many = [f"many\\n{rng.randrange(10**9):09d}-{i}" for i in range(1100)]
        for i, name in enumerate(many):
            w.add(name, _meta(rng), io.BytesIO(b"%d" % i))

        # Replace and delete: FileIDs are freed and reused.
        w.add("sizes\\f100", _meta(rng), io.BytesIO(b"replaced"))
        w.delete("sizes\\f1")
        w.delete(many[500])
        w.add("late", FileMetadata.directory())
        w.add("late\\after-delete", _meta(rng), io.BytesIO(rng.randbytes(2000)))


def build_fork(parent: Path, path: Path) -> None:
    rng = random.Random(77)
    with CimWriter.create(path, parent, deterministic=True) as w:
        w.add("sizes\\f4097", _meta(rng), io.BytesIO(rng.randbytes(9000)))  # overwrite
        w.delete("names\\ß")
        w.delete("holes")
        w.add("holes", FileMetadata.directory())  # re-created, empty
        w.add("new", FileMetadata.directory(security_descriptor=SD))  # SD dedup vs parent
        with CimImage.open(parent) as image:
            again = image.read("sizes\\f70001")
        w.add("new\\same-as-parent", _meta(rng), io.BytesIO(again))  # data dedup vs parent
        w.add("new\\fresh", _meta(rng), io.BytesIO(rng.randbytes(MiB + 3)))
        w.add_link("new\\link-to-parent-file", "sizes\\f25")
        w.add_stream("sizes\\f24", "s", io.BytesIO(b"fork stream"))


def build_host_tree(root: Path) -> None:
    """A host tree whose every time and attribute comes from xattrs (stat is not stable)."""
    rng = random.Random(99)
    (root / "d" / "sub").mkdir(parents=True)
    files = {
        "a.txt": b"hello",
        "d/big.bin": rng.randbytes(MiB + 4097),
        "d/mid.bin": rng.randbytes(6000),
        "d/sub/empty": b"",
        "d/sub/small": rng.randbytes(900),
        "d/sub/small:Zone.Identifier": b"zone",
        "d/zero.bin": bytes(20_000),
    }
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    os.link(root / "d" / "mid.bin", root / "d" / "sub" / "mid-link")
    for i, path in enumerate(sorted([root, *root.rglob("*")])):
        if ":" in path.name:
            continue
        attrs = 0x10 if path.is_dir() else 0x20 | (0x1 if i % 3 == 0 else 0)
        os.setxattr(path, XATTR_ATTRIBUTES, f"{attrs:#010x}".encode())
        for name in (
            XATTR_CREATION_TIME,
            XATTR_LAST_WRITE_TIME,
            XATTR_CHANGE_TIME,
            XATTR_LAST_ACCESS_TIME,
        ):
            os.setxattr(path, name, str(rng.randrange(1 << 60)).encode())
        if i % 2:
            os.setxattr(path, XATTR_SD, SD_OTHER)
        if i == 3:
            os.setxattr(path, XATTR_EAS, encode_eas([ExtendedAttribute(b"E", b"v")]))


@pytest.fixture(autouse=True, params=["default", "inline", "helper"])
def data_work(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the writer hashes and writes data (:mod:`.datapipe`) must not change a byte:
    as configured, always inline, or in the helper process from the first object."""
    if request.param == "inline":
        monkeypatch.setattr(datapipe, "USE_HELPER", False)
    elif request.param == "helper":
        monkeypatch.setattr(datapipe, "HELPER_AFTER_BYTES", 0)


def digest_directory(directory: Path) -> str:
    """SHA-256 over every file's name and bytes, in name order (names carry the GUID)."""
    hasher = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        hasher.update(path.name.encode() + b"\0")
        hasher.update(hashlib.sha256(path.read_bytes()).digest())
    return hasher.hexdigest()


def test_deterministic_image_is_pinned(tmp_path: Path) -> None:
    build_base(tmp_path / "base.cim")
    with CimImage.open(tmp_path / "base.cim") as image:
        assert check_object_ids(image) == []
        assert image.read("sizes\\bigdup1") == image.read("sizes\\bigdup0")
    assert digest_directory(tmp_path) == GOLDEN_BASE


def test_deterministic_fork_is_pinned(tmp_path: Path) -> None:
    build_base(tmp_path / "base.cim")
    build_fork(tmp_path / "base.cim", tmp_path / "fork.cim")
    with CimImage.open(tmp_path / "fork.cim") as image:
        assert check_object_ids(image) == []
        assert not image.listdir("holes")
    assert digest_directory(tmp_path) == GOLDEN_FORK


def test_deterministic_cim_create_is_pinned(tmp_path: Path) -> None:
    src = tmp_path / "src"
    out = tmp_path / "out"
    src.mkdir()
    out.mkdir()
    try:
        build_host_tree(src)
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            pytest.skip("the test directory's filesystem has no user xattrs")
        raise
    create_from_directory(out / "img.cim", src, deterministic=True)
    assert digest_directory(out) == GOLDEN_HOSTFS
