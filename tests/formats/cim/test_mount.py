"""The read-only FUSE mount (``cimsnap cim mount``), driven through the command line.

Every mount is undone in teardown (``fusermount -u``, lazily if busy) and the server process
is waited for, even when a test fails.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cimsnap.formats.cim import CimImage, CimWriter, FileMetadata, encode_eas
from cimsnap.formats.cim.format import FILE_ATTRIBUTE_ARCHIVE, FILE_ATTRIBUTE_HIDDEN
from cimsnap.formats.cim.metadata import ExtendedAttribute, ns_from_filetime, symlink_reparse_buffer
from tests.conftest import require_tool

PACKAGE = "msix/pinball_1.0.2.0_x64__ynj0a7qyfqv8c"
CLI = [sys.executable, "-m", "cimsnap.cli"]


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


@contextlib.contextmanager
def mounted(image: Path, mountpoint: Path) -> Iterator[Path]:
    require_tool("fusermount")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is not available")
    mountpoint.mkdir(exist_ok=True)
    result = cli("cim", "mount", image, mountpoint)
    pid = None
    try:
        assert result.returncode == 0, result.stderr
        assert os.path.ismount(mountpoint)
        match = re.search(r"server pid (\d+)", result.stdout)
        assert match is not None, result.stdout
        pid = int(match.group(1))
        yield mountpoint
    finally:
        if os.path.ismount(mountpoint):
            done = subprocess.run(["fusermount", "-u", str(mountpoint)], check=False)
            if done.returncode != 0:
                subprocess.run(["fusermount", "-u", "-z", str(mountpoint)], check=False)
        if pid is not None:  # the server exits once unmounted
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                os.kill(pid, 9)
        assert not os.path.ismount(mountpoint)


def test_pinball_through_the_mount(testdata: Path, tmp_path: Path) -> None:
    pinball = testdata / "cim" / "pinball"
    with zipfile.ZipFile(pinball / "pinball_1.0.2.0_x64__ynj0a7qyfqv8c.msix") as archive:
        package = {
            i.filename: archive.read(i)
            for i in archive.infolist()
            if not i.is_dir() and i.filename != "[Content_Types].xml"
        }
    with mounted(pinball / "Pinball.cim", tmp_path / "mnt") as mnt:
        root = mnt / PACKAGE
        seen = {}
        for directory, _, files in os.walk(root):
            for name in files:
                path = Path(directory) / name
                seen[str(path.relative_to(root))] = path.read_bytes()
        assert seen == package
        assert sorted(os.listdir(mnt)) == ["msix"]
        assert sorted(os.listdir(root)) == sorted({m.split("/")[0] for m in package})
        exe = root / "pinball.exe"
        assert os.getxattr(exe, "user.cimfs.attributes") == b"0x00000020"
        with CimImage.open(pinball / "Pinball.cim") as image:
            st = image.stat(f"{PACKAGE}/pinball.exe")
        assert os.getxattr(exe, "user.cimfs.sd") == st.security_descriptor
        assert os.getxattr(exe, "user.cimfs.eas") == st.extended_attributes
        assert exe.stat().st_mtime_ns == ns_from_filetime(st.last_write_time)
        assert exe.stat().st_ino == st.file_id
        # Windows lookups are case-insensitive, and so is the mount.
        assert (mnt / PACKAGE.upper() / "PINBALL.EXE").read_bytes() == package["pinball.exe"]


def test_generated_image_metadata_links_and_streams(tmp_path: Path) -> None:
    image = tmp_path / "t.cim"
    sd = b"\x01\x00\x04\x80" + bytes(16)
    eas = encode_eas([ExtendedAttribute(b"USER.NOTE", b"hello")])
    reparse = symlink_reparse_buffer("target", relative=True)
    times = dict(
        creation_time=1,
        last_write_time=133_000_000_000_000_000,
        change_time=133_000_000_000_000_001,
        last_access_time=133_000_000_000_000_002,
    )
    with CimWriter.create(image) as writer:
        writer.add("dir", FileMetadata.directory(attributes=FILE_ATTRIBUTE_HIDDEN))
        writer.add("dir\\sub", FileMetadata.directory())
        writer.add(
            "dir\\file.txt",
            FileMetadata(
                attributes=FILE_ATTRIBUTE_ARCHIVE,
                security_descriptor=sd,
                extended_attributes=eas,
                **times,
            ),
            io.BytesIO(b"content" * 1000),
        )
        writer.add_link("dir\\sub\\link.txt", "dir\\file.txt")
        writer.add_stream("dir\\file.txt", "Zone.Identifier", io.BytesIO(b"[ZoneTransfer]"))
        writer.add_stream("dir\\file.txt", "huge", size=1 << 20)
        writer.add("reparse", FileMetadata(reparse_buffer=reparse))
        writer.add("sparse", FileMetadata(), size=1 << 40)
    with mounted(image, tmp_path / "mnt") as mnt:
        a = (mnt / "dir" / "file.txt").stat()
        b = (mnt / "dir" / "sub" / "link.txt").stat()
        assert a.st_ino == b.st_ino and a.st_nlink == b.st_nlink == 2
        assert a.st_size == 7000
        assert a.st_mode & 0o777 == 0o444 and (mnt / "dir").stat().st_mode & 0o777 == 0o555
        assert a.st_mtime_ns == ns_from_filetime(times["last_write_time"])
        assert a.st_atime_ns == ns_from_filetime(times["last_access_time"])
        assert a.st_ctime_ns == ns_from_filetime(times["change_time"])
        assert (mnt / "dir").stat().st_nlink == 3  # ".", "..", "sub"
        path = mnt / "dir" / "file.txt"
        assert set(os.listxattr(path)) >= {
            "user.cimfs.attributes",
            "user.cimfs.sd",
            "user.cimfs.eas",
            "user.cimfs.creation_time",
            "user.cimfs.stream.Zone.Identifier",
        }
        assert os.getxattr(path, "user.cimfs.sd") == sd
        assert os.getxattr(path, "user.cimfs.eas") == eas
        assert os.getxattr(path, "user.cimfs.creation_time") == b"1"
        assert os.getxattr(path, "user.cimfs.stream.Zone.Identifier") == b"[ZoneTransfer]"
        with pytest.raises(OSError) as too_big:
            os.getxattr(path, "user.cimfs.stream.huge")
        assert too_big.value.errno == errno.E2BIG
        with pytest.raises(OSError) as missing:
            os.getxattr(path, "user.cimfs.reparse")
        assert missing.value.errno == errno.ENODATA
        assert os.getxattr(mnt / "reparse", "user.cimfs.reparse") == reparse
        assert os.getxattr(mnt / "dir", "user.cimfs.attributes") == b"0x00000012"
        with open(mnt / "sparse", "rb") as handle:
            handle.seek((1 << 40) - 10)
            assert handle.read() == bytes(10)
        assert (mnt / "sparse").stat().st_blocks == 0
        for flags in (os.O_WRONLY, os.O_RDWR | os.O_CREAT):
            with pytest.raises(OSError) as denied:
                os.open(mnt / "dir" / "file.txt", flags)
            assert denied.value.errno in (errno.EROFS, errno.EACCES)
        with pytest.raises(OSError):
            (mnt / "new").write_bytes(b"x")
        assert not (mnt / "nope").exists()
        assert os.statvfs(mnt).f_files > 0


def test_mount_errors_are_one_line_and_mount_nothing(tmp_path: Path) -> None:
    require_tool("fusermount")
    bad = tmp_path / "bad.cim"
    bad.write_bytes(b"not a cim at all" * 10)
    (tmp_path / "mnt").mkdir()
    result = cli("cim", "mount", bad, tmp_path / "mnt")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "not a CIM file" in result.stderr
    assert not os.path.ismount(tmp_path / "mnt")
    result = cli("cim", "mount", bad, tmp_path / "missing")
    assert result.returncode == 1 and "mount point is not a directory" in result.stderr
