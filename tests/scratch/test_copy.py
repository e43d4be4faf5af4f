"""The sandbox copy: reflink where the filesystem can, else a sparse copy; never half a file."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cimsnap.scratch import copy as copy_module
from cimsnap.scratch.copy import CopyError, CopyMethod, copy_scratch

KIB = 1024
MIB = 1 << 20


def write_sparse(path: Path, size: int, extents: list[tuple[int, bytes]]) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in extents:
            f.seek(offset)
            f.write(data)


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name)


@pytest.mark.parametrize("staged", [True, False])
def test_sparse_copy_keeps_content_and_holes(tmp_path: Path, staged: bool) -> None:
    src = tmp_path / "blank.vhdx"
    extents = [(0, os.urandom(64 * KIB)), (MIB + 100, b"x" * 5000), (5 * MIB, os.urandom(70000))]
    write_sparse(src, 8 * MIB, extents)
    dst = tmp_path / "sandbox.vhdx"
    method = copy_scratch(src, dst, allow_reflink=False, staged=staged)
    assert method is CopyMethod.SPARSE
    assert dst.read_bytes() == src.read_bytes()
    assert allocated(dst) <= allocated(src) < MIB
    assert leftovers(tmp_path) == []


def test_read_write_fallback_skips_zero_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_copy_file_range(*args: object) -> int:
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(copy_module.os, "copy_file_range", no_copy_file_range)
    src = tmp_path / "src"
    data = bytearray(os.urandom(3 * MIB))
    data[MIB : 2 * MIB] = bytes(MIB)  # explicit zeros: allocated in the source
    src.write_bytes(bytes(data))
    dst = tmp_path / "dst"
    assert copy_scratch(src, dst, allow_reflink=False) is CopyMethod.SPARSE_READ_WRITE
    assert dst.read_bytes() == bytes(data)
    assert allocated(dst) <= allocated(src) - MIB + 64 * KIB


def test_empty_and_dense_files(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    copy_scratch(tmp_path / "empty", tmp_path / "empty2")
    assert (tmp_path / "empty2").read_bytes() == b""
    dense = os.urandom(300 * KIB + 7)
    (tmp_path / "dense").write_bytes(dense)
    copy_scratch(tmp_path / "dense", tmp_path / "dense2")
    assert (tmp_path / "dense2").read_bytes() == dense


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 4 * MIB), st.binary(min_size=1, max_size=20000)), max_size=6),
    st.integers(0, 64 * KIB),
)
def test_any_layout_copies_exactly(extents: list[tuple[int, bytes]], tail: int) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "s", Path(tmp) / "d"
        size = max([o + len(d) for o, d in extents] + [0]) + tail
        write_sparse(src, size, extents)
        copy_scratch(src, dst, durable=False)
        assert dst.read_bytes() == src.read_bytes()


@pytest.mark.parametrize("staged", [True, False])
def test_refuses_to_replace_an_existing_file(tmp_path: Path, staged: bool) -> None:
    (tmp_path / "src").write_bytes(b"new")
    (tmp_path / "dst").write_bytes(b"old")
    with pytest.raises(CopyError) as err:
        copy_scratch(tmp_path / "src", tmp_path / "dst", staged=staged)
    assert (tmp_path / "dst").read_bytes() == b"old"
    assert str(tmp_path / "dst") in str(err.value)
    assert leftovers(tmp_path) == []


def test_missing_source_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CopyError) as err:
        copy_scratch(tmp_path / "nope.vhdx", tmp_path / "dst")
    assert str(err.value).count("\n") == 0 and "nope.vhdx" in str(err.value)
    assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize("staged", [True, False])
def test_failure_half_way_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, staged: bool
) -> None:
    def disk_full(*args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(copy_module.os, "copy_file_range", disk_full)
    (tmp_path / "src").write_bytes(os.urandom(100 * KIB))
    with pytest.raises(CopyError, match="No space left"):
        copy_scratch(tmp_path / "src", tmp_path / "dst", allow_reflink=False, staged=staged)
    assert not (tmp_path / "dst").exists() and leftovers(tmp_path) == []


def test_durable_copy_is_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(copy_module.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    (tmp_path / "src").write_bytes(b"data")
    copy_scratch(tmp_path / "src", tmp_path / "a", durable=True)
    assert len(synced) == 1
    copy_scratch(tmp_path / "src", tmp_path / "b", durable=False)
    assert len(synced) == 1


@pytest.fixture
def reflink_dir(tmp_path: Path) -> Iterator[Path]:
    """An XFS (reflink=1) filesystem on a loop device, unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mkfs.xfs") is None:
        pytest.skip("needs root and mkfs.xfs (xfsprogs) for a reflink filesystem")
    image, mountpoint = tmp_path / "xfs.img", tmp_path / "mnt"
    with open(image, "wb") as f:
        f.truncate(300 * MIB)  # XFS's minimum size
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot loop-mount here")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)


def test_reflink_shares_extents(reflink_dir: Path) -> None:
    src = reflink_dir / "blank.vhdx"
    write_sparse(src, 4 * MIB, [(0, os.urandom(200 * KIB)), (3 * MIB, os.urandom(KIB))])
    dst = reflink_dir / "sandbox.vhdx"
    assert copy_scratch(src, dst) is CopyMethod.REFLINK
    assert dst.read_bytes() == src.read_bytes()
    extents = subprocess.run(
        ["filefrag", "-v", str(dst)], capture_output=True, text=True, check=True
    ).stdout
    assert "shared" in extents  # the kernel reports the blocks as shared with the template


def test_filesystem_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(copy_module.os, "link", no_links)
    (tmp_path / "src").write_bytes(b"scratch")
    copy_scratch(tmp_path / "src", tmp_path / "dst")
    assert (tmp_path / "dst").read_bytes() == b"scratch" and leftovers(tmp_path) == []
    with pytest.raises(CopyError):
        copy_scratch(tmp_path / "src", tmp_path / "dst")  # still never replaces
    assert leftovers(tmp_path) == []
