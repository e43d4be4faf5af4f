"""Round trips: generated trees -> image -> reader, and image -> extract -> create -> identical.

Trees come from hypothesis (tests/formats/cim/model.py): Unicode names (incl. non-BMP), a deep
directory chain, empty / small / data-region / sparse / holed files, hard links, alternate
streams, security descriptors, EAs and reparse points, with random FILETIMEs.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import tempfile
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from cimsnap.errors import UsageError
from cimsnap.formats.cim import CimImage, CimWriter, FileMetadata
from cimsnap.formats.cim.check import check_object_ids
from cimsnap.formats.cim.format import (
    FILE_ATTRIBUTE_ARCHIVE,
    FILE_ATTRIBUTE_READONLY,
    FILE_ATTRIBUTE_REPARSE_POINT,
    FILE_ATTRIBUTE_SPARSE_FILE,
)
from cimsnap.formats.cim.hostfs import create_from_directory, extract_image
from cimsnap.formats.cim.metadata import IO_REPARSE_TAG_SYMLINK, filetime_from_ns, symlink_target
from tests.formats.cim.model import MNode, assert_matches, trees, write_model

SETTINGS = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def build(directory: Path, tree: MNode, name: str = "t.cim", **kwargs: bool) -> Path:
    path = directory / name
    with CimWriter.create(path, **kwargs) as writer:
        write_model(writer, tree)
    return path


@SETTINGS
@given(tree=trees())
def test_api_round_trip(tree: MNode) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = build(Path(tmp), tree)
        with CimImage.open(path) as image:
            assert image.version == (2, 0)
            assert_matches(image, tree)
            assert check_object_ids(image) == []


@SETTINGS
@given(tree=trees(max_entries=15))
def test_extract_then_create_is_identical(tree: MNode) -> None:
    tree.streams.clear()  # streams of the root would land outside DESTDIR
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        first = build(work, tree, "first.cim")
        with CimImage.open(first) as image:
            extract_image(image, work / "a")
        create_from_directory(work / "second.cim", work / "a")
        with CimImage.open(work / "second.cim") as image:
            assert_matches(image, tree)
            extract_image(image, work / "b")
        assert host_snapshot(work / "a") == host_snapshot(work / "b")


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees(max_entries=30))
def test_deterministic_output_is_byte_identical(tree: MNode) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        outputs = []
        for run in ("one", "two"):
            (work / run).mkdir()
            build(work / run, tree, deterministic=True)
            outputs.append({p.name: p.read_bytes() for p in sorted((work / run).iterdir())})
        assert outputs[0] == outputs[1]
        assert len(outputs[0]) == 7  # .cim + 3 regions + 3 object-ID files
        build(work / "one", tree, "other.cim", deterministic=True)  # other name: other GUID
        assert len(list((work / "one").iterdir())) == 14
        # Without the deterministic mode every image gets a fresh region-set GUID.
        build(work / "two", tree, "a.cim")
        build(work / "two", tree, "b.cim")
        with CimImage.open(work / "two" / "a.cim") as a, CimImage.open(work / "two" / "b.cim") as b:
            assert a.region_set.guid != b.region_set.guid


class PatternStream(io.RawIOBase):
    """``size`` bytes of zeros with a marker every GiB, generated on the fly (never in memory)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.size - self.position)
        view = memoryview(buffer).cast("B")
        view[:n] = bytes(n)
        for marker in range(0, self.size, 1 << 30):
            if self.position <= marker < self.position + n:
                view[marker - self.position] = 0xA5
        self.position += n
        return n


def test_gigabyte_stream_in_constant_memory(tmp_path: Path) -> None:
    size = (1 << 30) + 12345
    tracemalloc.start()
    try:
        with CimWriter.create(tmp_path / "big.cim") as writer:
            writer.add("big", FileMetadata(), PatternStream(size))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20  # a few copy buffers, not the stream
    with CimImage.open(tmp_path / "big.cim") as image, image.open("big") as handle:
        assert handle.size == size
        assert handle.pread(2, 0) == b"\xa5\x00"
        assert handle.pread(3, (1 << 30) - 1) == b"\x00\xa5\x00"
        assert handle.pread(100, size - 50) == bytes(50)
        data_region = image.region_path(1)
    # Zero pages were never written: the region file is sparse on the host.
    assert data_region.stat().st_blocks * 512 < 1 << 20


def test_plain_host_tree_without_xattrs(tmp_path: Path) -> None:
    """A Linux tree: times from stat, READONLY from the mode, SPARSE from holes, symlinks
    become symlink reparse points, hard links stay one file."""
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "plain.txt").write_bytes(b"hello world")
    (src / "big.bin").write_bytes(os.urandom(200_000))
    os.link(src / "big.bin", src / "sub" / "big-link.bin")
    with open(src / "holes.img", "wb") as handle:
        handle.truncate(10 << 20)
        handle.seek(5 << 20)
        handle.write(b"middle")
    with open(src / "sub" / "empty-sparse", "wb") as handle:
        handle.truncate(1 << 30)
    (src / "ro.txt").write_bytes(b"read only")
    (src / "ro.txt").chmod(0o444)
    os.symlink("sub/deeper", src / "link-to-dir")
    os.symlink("/etc/hostname", src / "abs-link")
    (src / "sub" / "deeper" / "file:Zone.Identifier").write_bytes(b"nope")
    (src / "sub" / "deeper" / "file:Zone.Identifier").unlink()
    (src / "sub" / "deeper" / "file").write_bytes(b"x")
    (src / "sub" / "deeper" / "file:Zone.Identifier").write_bytes(b"[ZoneTransfer]\r\nZoneId=3")

    stats = create_from_directory(tmp_path / "img.cim", src)
    assert stats.hard_links == 1 and stats.streams == 1
    with CimImage.open(tmp_path / "img.cim") as image:
        assert image.read("big.bin") == (src / "big.bin").read_bytes()
        assert image.lookup("big.bin") == image.lookup("SUB\\BIG-LINK.BIN")
        st = image.stat("plain.txt")
        assert st.attributes == FILE_ATTRIBUTE_ARCHIVE
        assert st.last_write_time == filetime_from_ns((src / "plain.txt").stat().st_mtime_ns)
        assert image.stat("ro.txt").attributes == FILE_ATTRIBUTE_ARCHIVE | FILE_ATTRIBUTE_READONLY
        holes = image.stat("holes.img")
        assert holes.attributes & FILE_ATTRIBUTE_SPARSE_FILE and not holes.sparse
        assert image.read("holes.img") == (src / "holes.img").read_bytes()
        empty = image.stat("sub\\empty-sparse")
        assert empty.sparse and empty.size == 1 << 30
        link = image.stat("link-to-dir")
        assert link.is_dir and link.attributes & FILE_ATTRIBUTE_REPARSE_POINT
        assert link.reparse_tag == IO_REPARSE_TAG_SYMLINK
        assert link.reparse_buffer is not None
        assert symlink_target(link.reparse_buffer) == ("sub\\deeper", True)
        absolute = image.stat("abs-link").reparse_buffer
        assert absolute is not None and symlink_target(absolute) == ("\\etc\\hostname", False)
        assert image.read("sub\\deeper\\file:Zone.Identifier") == b"[ZoneTransfer]\r\nZoneId=3"
        extract_image(image, tmp_path / "out")
    out = tmp_path / "out"
    assert (out / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
    assert os.stat(out / "big.bin").st_ino == os.stat(out / "sub" / "big-link.bin").st_ino
    assert (out / "holes.img").read_bytes() == (src / "holes.img").read_bytes()
    assert os.stat(out / "holes.img").st_blocks * 512 < 1 << 20  # holes kept
    assert os.stat(out / "sub" / "empty-sparse").st_blocks * 512 <= 8192  # (an xattr block)
    assert (out / "plain.txt").stat().st_mtime_ns // 100 == (
        src / "plain.txt"
    ).stat().st_mtime_ns // 100
    assert (out / "sub" / "deeper" / "file:Zone.Identifier").read_bytes().endswith(b"ZoneId=3")


# --- host tree comparison -------------------------------------------------------------------


def canonical_digest(path: Path) -> str:
    """Digest of a file's content that skips holes and zero pages (sparse files may be huge)."""
    hasher = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as err:
                if err.errno == errno.ENXIO:
                    break
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            for page in range(start - start % 4096, end, 4096):
                chunk = os.pread(fd, 4096, page)
                if chunk.strip(b"\0"):
                    hasher.update(page.to_bytes(8, "little") + chunk)
            offset = end
        hasher.update(size.to_bytes(8, "little"))
    finally:
        os.close(fd)
    return hasher.hexdigest()


def host_snapshot(root: Path) -> dict[str, object]:
    """Everything cimsnap keeps on a host tree: names, content, user xattrs, links, times."""
    out: dict[str, object] = {}
    inodes: dict[int, str] = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames) + sorted(filenames):
            path = Path(directory) / name
            st = path.lstat()
            relative = str(path.relative_to(root))
            xattrs = {n: os.getxattr(path, n) for n in sorted(os.listxattr(path))}
            link_group = inodes.setdefault(st.st_ino, relative)
            content = "dir" if path.is_dir() else canonical_digest(path)
            out[relative] = (content, xattrs, link_group, st.st_mtime_ns, st.st_mode)
    return out


def test_special_files_are_refused_without_waiting(tmp_path: Path) -> None:
    """A FIFO (or device, socket) in the tree: a clear error, nothing opened or left behind."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a")
    os.mkfifo(src / "pipe")
    with pytest.raises(UsageError, match="special files"):
        create_from_directory(tmp_path / "img.cim", src)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
