"""A formatted volume in real use: ntfs-3g (FUSE) writes 1,000 files and 200 MiB of data in
nested directories; afterwards ntfs-3g's checks pass and dissect.ntfs reads every file back."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
from dissect.ntfs import NTFS

from cimsnap.formats.blockdev import RawFileDevice
from cimsnap.formats.ntfs import NtfsVolume
from tests.formats.ntfs.helpers import MiB, make_volume, ntfs3g_mount, ntfs_checks

SMALL_FILES = 1000
BIG_DATA = 200 * MiB


def _populate(root: Path) -> dict[str, str]:
    """Write the tree; return {relative path: sha256}."""
    rng = random.Random(20240215)
    expected: dict[str, str] = {}
    for i in range(SMALL_FILES):
        rel = f"dir{i % 10:02d}/sub{i // 10 % 10:02d}/deeper/file{i:04d}.txt"
        data = rng.randbytes(rng.choice((0, 1, 700, 1500, 5000, 12000)))
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expected[rel] = hashlib.sha256(data).hexdigest()
    sizes = [96 * MiB, 64 * MiB, 40 * MiB - 4096, 4096]
    assert sum(sizes) == BIG_DATA
    for n, size in enumerate(sizes):
        rel = "/".join(["big", *(f"level{k}" for k in range(n + 1)), f"blob{n}.bin"])
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with open(path, "wb") as f:
            left = size
            while left:
                chunk = rng.randbytes(min(MiB, left))
                f.write(chunk)
                digest.update(chunk)
                left -= len(chunk)
        expected[rel] = digest.hexdigest()
    return expected


@pytest.mark.slow
def test_ntfs3g_writes_and_dissect_reads_back(tmp_path: Path) -> None:
    image = tmp_path / "vol.img"
    make_volume(image, 512 * MiB)
    with ntfs3g_mount(image, tmp_path / "mnt") as mnt:
        expected = _populate(mnt)
    ntfs_checks(image)

    with open(image, "rb") as fh:
        fs = NTFS(fh)
        root = fs.mft.get("\\")
        assert {"System Volume Information", "WcSandboxState", "dir00", "big"} <= set(
            root.listdir()
        )
        for rel, digest in expected.items():
            record = fs.mft.get(rel.replace("/", "\\"))
            digest_read = hashlib.sha256()
            stream = record.open()
            while chunk := stream.read(4 * MiB):
                digest_read.update(chunk)
            assert digest_read.hexdigest() == digest, rel
    assert len(expected) == SMALL_FILES + 4

    with RawFileDevice(image) as dev:
        vol = NtfsVolume(dev)
        info = vol.info()
        assert info.total_clusters - info.free_clusters > BIG_DATA // 4096
        names = {e.name for e in vol.list_directory(vol.lookup("dir03/sub07/deeper"))}
        assert names == {f"file{i:04d}.txt" for i in range(SMALL_FILES) if i % 100 == 73}
