"""Forks: chains of 10 layers with overwrites, deletes, re-creations, links and streams.

Each layer forks the previous one and applies random operations to the writer and to an
in-memory model at once; after its commit the layer must read exactly as the model, and at the
end every layer (every parent) must still read as it did and its files be byte-for-byte
unchanged.  Also: forking a Windows-made 1.0 image, destroy rules, and overwrites.
"""

from __future__ import annotations

import copy
import hashlib
import io
import random
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cimsnap.errors import AlreadyExistsError, FailedPreconditionError, UsageError
from cimsnap.formats.cim import CimImage, CimWriter, FileMetadata, dependent_forks, destroy_image
from cimsnap.formats.cim.check import check_object_ids
from cimsnap.formats.cim.format import (
    FILE_ATTRIBUTE_ARCHIVE,
    FILE_ATTRIBUTE_DIRECTORY,
    FILE_ATTRIBUTE_HIDDEN,
    split_region_offset,
)
from tests.formats.cim.model import COLLATION, MNode, assert_matches, iter_tree, new_root

SDS = [None, b"\x01\x00\x04\x80" + bytes(16), bytes(range(40))]
NAMES = ["a", "B", "c.txt", "Dir", "ÄÖÜ", "ß", "日本", "\U0001f600x", "z" * 30, "Long Name.dat"]


class Layers:
    """Applies random operations to a writer and the model together."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.root = new_root()
        self.deleted: list[str] = []
        self.contents = [b"", b"same small", b"same big" * 400]  # shared across layers

    def meta(self, *, is_dir: bool) -> FileMetadata:
        rng = self.rng
        return FileMetadata(
            attributes=(FILE_ATTRIBUTE_DIRECTORY if is_dir else FILE_ATTRIBUTE_ARCHIVE)
            | rng.choice([0, FILE_ATTRIBUTE_HIDDEN]),
            creation_time=rng.randrange(1 << 60),
            last_write_time=rng.randrange(1 << 60),
            change_time=rng.randrange(1 << 60),
            last_access_time=rng.randrange(1 << 60),
            security_descriptor=rng.choice(SDS),
        )

    def data(self) -> bytes:
        rng = self.rng
        if rng.random() < 0.3:
            return rng.choice(self.contents)
        size = rng.choice([rng.randrange(1, 1024), rng.randrange(1024, 20000)])
        content = rng.randbytes(size)
        self.contents.append(content)
        return content

    def paths(self, *, dirs: bool | None = None) -> list[tuple[str, MNode]]:
        return [(p, n) for p, n in iter_tree(self.root) if dirs is None or n.is_dir == dirs]

    def parent_of(self, path: str) -> MNode:
        node = self.root
        for part in path.split("\\")[1:-1]:
            found = node.child(part)
            assert found is not None and found[1].is_dir
            node = found[1]
        return node

    def step(self, writer: CimWriter) -> None:
        rng = self.rng
        op = rng.choice(
            ["file", "file", "overwrite", "dir", "redir", "delete", "recreate", "link", "stream"]
        )
        if op == "recreate" and self.deleted:
            path = rng.choice(self.deleted)
            try:
                parent = self.parent_of(path)
            except AssertionError:
                return  # its directory is gone too
            self._add(writer, parent, path, rng.random() < 0.3)
            return
        if op == "overwrite":
            files = self.paths(dirs=False)
            if files:
                path, _ = rng.choice(files)
                self._add(writer, self.parent_of(path), path, False)
            return
        if op == "redir":
            dirs = self.paths(dirs=True)
            if dirs:
                path, node = rng.choice(dirs)
                node.meta = self.meta(is_dir=True)
                writer.add(path, node.meta)
            return
        if op == "delete":
            entries = self.paths()
            if entries:
                path, _ = rng.choice(entries)
                parent = self.parent_of(path)
                found = parent.child(path.rsplit("\\", 1)[1])
                assert found is not None
                del parent.children[found[0]]
                writer.delete(path)
                self.deleted.append(path)
            return
        if op == "link":
            files = self.paths(dirs=False)
            dirs = [("", self.root), *self.paths(dirs=True)]
            if files:
                source, node = rng.choice(files)
                directory, parent = rng.choice(dirs)
                name = rng.choice(NAMES)
                found = parent.child(name)
                if found is not None and found[1] is node:
                    return
                if found is not None and found[1].is_dir and found[1].children:
                    with pytest.raises(FailedPreconditionError):
                        writer.add_link(f"{directory}\\{name}", source)
                    return
                if found is not None:
                    del parent.children[found[0]]
                parent.children[name] = node
                writer.add_link(f"{directory}\\{name}", source)
            return
        if op == "stream":
            entries = self.paths()
            if entries:
                path, node = rng.choice(entries)
                name = rng.choice(["s1", "S1", "Zone.Identifier", "ü"])
                data = self.data()
                existing = [k for k in node.streams if COLLATION.equal(k, name)]
                node.streams[existing[0] if existing else name] = data
                writer.add_stream(path, name, io.BytesIO(data))
            return
        dirs = [("", self.root), *self.paths(dirs=True)]
        directory, parent = rng.choice(dirs)
        self._add(writer, parent, f"{directory}\\{rng.choice(NAMES)}", op == "dir")

    def _add(self, writer: CimWriter, parent: MNode, path: str, is_dir: bool) -> None:
        name = path.rsplit("\\", 1)[1]
        found = parent.child(name)
        meta = self.meta(is_dir=is_dir)
        if found is not None and found[1].is_dir:
            if is_dir:  # metadata update, contents and spelling kept
                found[1].meta = meta
                writer.add(path, meta)
                return
            if found[1].children:
                with pytest.raises(FailedPreconditionError):
                    writer.add(path, meta, io.BytesIO(b"x"))
                return
        if found is not None:
            del parent.children[found[0]]
        if is_dir:
            parent.children[name] = MNode(True, meta)
            writer.add(path, meta)
        else:
            data = self.data()
            parent.children[name] = MNode(False, meta, data=data)
            writer.add(path, meta, io.BytesIO(data))


def fingerprint(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=0, max_value=2**32))
def test_fork_chain_of_ten_layers(seed: int) -> None:
    layers = Layers(random.Random(seed))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        snapshots: list[tuple[Path, MNode]] = []
        parent: Path | None = None
        for number in range(10):
            path = work / f"layer{number}.cim"
            with CimWriter.create(path, parent) as writer:
                for _ in range(20):
                    layers.step(writer)
            with CimImage.open(path) as image:
                assert len(image.parent_region_sets) == number
                assert_matches(image, layers.root)
                assert check_object_ids(image) == []
            snapshots.append((path, copy.deepcopy(layers.root)))
            if number == 4:
                files_then = fingerprint(work)
            parent = path
        for path, expected in snapshots:
            with CimImage.open(path) as image:
                assert_matches(image, expected)
        # Forking never touched a parent's files.
        now = fingerprint(work)
        assert {name: now[name] for name in files_then} == files_then


def test_fork_refers_to_parent_objects(tmp_path: Path) -> None:
    big = b"big shared content" * 1000
    with CimWriter.create(tmp_path / "base.cim") as writer:
        writer.add("dir", FileMetadata.directory(security_descriptor=SDS[2]))
        writer.add("dir\\big", FileMetadata(security_descriptor=SDS[2]), io.BytesIO(big))
        writer.add("keep", FileMetadata(), io.BytesIO(b"keep me"))
    with CimWriter.create(tmp_path / "child.cim", tmp_path / "base.cim") as writer:
        writer.add("copy", FileMetadata(security_descriptor=SDS[2]), io.BytesIO(big))
        writer.delete("keep")
    with (
        CimImage.open(tmp_path / "base.cim") as base,
        CimImage.open(tmp_path / "child.cim") as child,
    ):
        assert child.parent_region_sets == (base.region_set,)
        # Same bytes, same SD: the child points into the parent's regions instead of copying.
        copied = child.entry("copy")
        original = base.entry("dir\\big")
        assert copied.default_stream.data_offset == original.default_stream.data_offset
        assert copied.sd_offset == original.sd_offset
        assert split_region_offset(copied.sd_offset)[0] < base.region_count
        assert child.listdir("\\") == ["copy", "dir"]
        assert base.listdir("\\") == ["dir", "keep"]
        assert child.read("dir\\big") == big
        # The fork's own data region holds nothing: everything it needed was in the parent.
        assert child.usage().region_bytes < base.usage().region_bytes


def test_fork_of_a_windows_made_image(testdata: Path, tmp_path: Path) -> None:
    for item in (testdata / "cim" / "pinball").iterdir():
        if item.name.startswith(("region_", "objectid_", "Pinball.cim")):
            shutil.copy(item, tmp_path / item.name)
    package = "\\msix\\pinball_1.0.2.0_x64__ynj0a7qyfqv8c"
    with CimImage.open(tmp_path / "Pinball.cim") as base:
        exe = base.read(f"{package}\\pinball.exe")
        names = base.listdir(package)
    with CimWriter.create(tmp_path / "fork.cim", tmp_path / "Pinball.cim") as writer:
        writer.delete(f"{package}\\SOUND1.WAV")
        writer.add(f"{package}\\new.txt", FileMetadata(), io.BytesIO(b"new"))
        writer.add(f"{package}\\FONT.DAT", FileMetadata(), io.BytesIO(b"replaced"))
        writer.add_link("\\pinball-link.exe", f"{package}\\PINBALL.EXE")
    with CimImage.open(tmp_path / "fork.cim") as fork:
        assert fork.version == (2, 0)
        assert fork.read(f"{package}\\pinball.exe") == exe  # an inherited PE-image stream
        assert fork.read("pinball-link.exe") == exe
        assert fork.lookup("pinball-link.exe") == fork.lookup(f"{package}\\pinball.exe")
        assert fork.read(f"{package}\\FONT.DAT") == b"replaced"
        expected = sorted([n for n in names if n != "SOUND1.WAV"] + ["new.txt"], key=COLLATION.key)
        assert fork.listdir(package) == expected
        assert check_object_ids(fork) == []
    with CimImage.open(tmp_path / "Pinball.cim") as base:
        assert base.listdir(package) == names


def test_destroy_refuses_while_a_fork_depends(tmp_path: Path) -> None:
    with CimWriter.create(tmp_path / "base.cim") as writer:
        writer.add("f", FileMetadata(), io.BytesIO(b"data" * 500))
    with CimWriter.create(tmp_path / "child.cim", tmp_path / "base.cim") as writer:
        writer.add("g", FileMetadata(), io.BytesIO(b"more"))
    with CimWriter.create(tmp_path / "other.cim") as writer:
        writer.add("h", FileMetadata(), io.BytesIO(b"unrelated"))
    assert dependent_forks(tmp_path / "base.cim") == [tmp_path / "child.cim"]
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(FailedPreconditionError, match=r"child\.cim"):
        destroy_image(tmp_path / "base.cim")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    removed = destroy_image(tmp_path / "child.cim")
    assert len(removed) == 7
    destroy_image(tmp_path / "base.cim")
    with CimImage.open(tmp_path / "other.cim") as other:
        assert other.read("h") == b"unrelated"
    assert len(list(tmp_path.iterdir())) == 7  # only "other" is left


def test_destroy_with_force_breaks_the_fork(tmp_path: Path) -> None:
    with CimWriter.create(tmp_path / "base.cim") as writer:
        writer.add("f", FileMetadata(), io.BytesIO(b"data"))
    with CimWriter.create(tmp_path / "child.cim", tmp_path / "base.cim"):
        pass
    destroy_image(tmp_path / "base.cim", force=True)
    with pytest.raises(Exception, match="missing"):
        CimImage.open(tmp_path / "child.cim")


def test_overwrite_keeps_regions_a_fork_still_needs(tmp_path: Path) -> None:
    with CimWriter.create(tmp_path / "base.cim") as writer:
        writer.add("f", FileMetadata(), io.BytesIO(b"version one"))
    with CimWriter.create(tmp_path / "child.cim", tmp_path / "base.cim"):
        pass
    with pytest.raises(AlreadyExistsError):
        CimWriter.create(tmp_path / "base.cim")
    with CimWriter.create(tmp_path / "base.cim", overwrite=True) as writer:
        writer.add("f", FileMetadata(), io.BytesIO(b"version two"))
    with CimImage.open(tmp_path / "base.cim") as base, CimImage.open(tmp_path / "child.cim") as c:
        assert base.read("f") == b"version two"
        assert c.read("f") == b"version one"  # the old regions were kept for the fork
    destroy_image(tmp_path / "child.cim")
    with CimWriter.create(tmp_path / "base.cim", overwrite=True) as writer:
        writer.add("f", FileMetadata(), io.BytesIO(b"version three"))
    assert len(list(tmp_path.iterdir())) == 7  # nobody needed the old regions: removed


def test_fork_must_live_beside_its_parent(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with CimWriter.create(tmp_path / "a" / "base.cim"):
        pass
    with pytest.raises(UsageError, match="parent's directory"):
        CimWriter.create(tmp_path / "b" / "child.cim", tmp_path / "a" / "base.cim")
