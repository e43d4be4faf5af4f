"""The writer's semantics (Windows CimCreateFile & co.) and its placement rules."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from cimsnap.errors import FailedPreconditionError, NotFoundError, UsageError
from cimsnap.formats.cim import CimImage, CimWriter, FileMetadata
from cimsnap.formats.cim.check import check_object_ids
from cimsnap.formats.cim.format import RegionType, split_region_offset
from cimsnap.formats.cim.objectid import read_objectid_file
from cimsnap.formats.cim.writer import SMALL_DATA_LIMIT


def test_paths_parents_and_case(tmp_path: Path) -> None:
    with CimWriter.create(tmp_path / "t.cim") as writer:
        with pytest.raises(NotFoundError):
            writer.add("missing\\file", FileMetadata(), io.BytesIO(b"x"))
        writer.add("Dir", FileMetadata.directory())
        writer.add("DIR/Sub", FileMetadata.directory())  # '/' and any case resolve
        writer.add("dir\\sub\\f.txt", FileMetadata(), io.BytesIO(b"x"))
        with pytest.raises(NotFoundError):
            writer.add("dir\\sub\\f.txt\\below", FileMetadata(), io.BytesIO(b"x"))
        root_meta = FileMetadata.directory(creation_time=42, security_descriptor=b"\x01" * 20)
        writer.add("\\", root_meta)
        with pytest.raises(UsageError):
            writer.add("\\", FileMetadata())
    with CimImage.open(tmp_path / "t.cim") as image:
        assert image.listdir() == ["Dir"]
        assert image.listdir("dir") == ["Sub"]
        assert image.stat("\\").creation_time == 42
        assert image.stat("").security_descriptor == b"\x01" * 20


@pytest.mark.parametrize("name", ["a:b", "x\0y", ".", "..", "n" * 256, "\U0001f600" * 128])
def test_invalid_names(tmp_path: Path, name: str) -> None:
    with CimWriter.create(tmp_path / "t.cim") as writer, pytest.raises(UsageError):
        writer.add(name, FileMetadata(), io.BytesIO(b"x"))


def test_path_length_limit(tmp_path: Path) -> None:
    with CimWriter.create(tmp_path / "t.cim") as writer:
        path = ""
        for _ in range(130):  # 130 x 251 units > 32767
            path += "\\" + "d" * 250
            if sum(len(p) + 1 for p in path.split("\\")[1:]) > 32767:
                with pytest.raises(UsageError, match="longer than 32767"):
                    writer.add(path, FileMetadata.directory())
                break
            writer.add(path, FileMetadata.directory())


def test_invalid_metadata(tmp_path: Path) -> None:
    with CimWriter.create(tmp_path / "t.cim") as writer:
        for meta in (
            FileMetadata(reparse_buffer=b"\x0c\x00\x00\xa0\xff\x00\x00\x00"),  # length lies
            FileMetadata(extended_attributes=b"\x00\x00\x00\x00\x00\x05\x01\x00AB"),
            FileMetadata(security_descriptor=b""),
            FileMetadata(creation_time=-1),
        ):
            with pytest.raises(UsageError):
                writer.add("f", meta, io.BytesIO(b"x"))
        assert not writer.exists("f")


def test_overwrite_unlinks_and_keeps_other_links(tmp_path: Path) -> None:
    with CimWriter.create(tmp_path / "t.cim") as writer:
        writer.add("a", FileMetadata(), io.BytesIO(b"old"))
        writer.add_link("b", "a")
        writer.add("A", FileMetadata(), io.BytesIO(b"new"))  # replaces the name, new spelling
        writer.add("d", FileMetadata.directory())
        writer.add("d\\x", FileMetadata(), io.BytesIO(b"x"))
        with pytest.raises(FailedPreconditionError):
            writer.add("d", FileMetadata(), io.BytesIO(b"file over a non-empty dir"))
        with pytest.raises(FailedPreconditionError):
            writer.add_link("d", "a")
        writer.add("D", FileMetadata.directory(creation_time=7))  # metadata only
        writer.add("e", FileMetadata.directory())
        writer.add("e", FileMetadata(), io.BytesIO(b"file over an empty dir"))
        with pytest.raises(UsageError):
            writer.add_link("dir-link", "d")
        writer.add_stream("a", "S", io.BytesIO(b"1"))
        writer.add_stream("a", "s", io.BytesIO(b"2"))  # same stream, first spelling kept
    with CimImage.open(tmp_path / "t.cim") as image:
        assert image.listdir() == ["A", "b", "d", "e"]
        assert image.read("a") == b"new" and image.read("b") == b"old"
        assert image.lookup("a") != image.lookup("b")
        assert image.stat("d").creation_time == 7 and image.listdir("d") == ["x"]
        assert image.read("e") == b"file over an empty dir"
        assert [(s.name, s.size) for s in image.stat("a").streams] == [("S", 1)]
        assert image.read("a:s") == b"2"


def test_delete(tmp_path: Path) -> None:
    with CimWriter.create(tmp_path / "t.cim") as writer:
        writer.add("d", FileMetadata.directory())
        writer.add("d\\f", FileMetadata(), io.BytesIO(b"f" * 5000))
        writer.add_link("g", "d\\f")
        writer.add("h", FileMetadata(), io.BytesIO(b"h"))
        with pytest.raises(NotFoundError):
            writer.delete("nope")
        with pytest.raises(UsageError):
            writer.delete("\\")
        writer.delete("d")  # the subtree goes; g keeps the file
        writer.delete("h")
        writer.add("i", FileMetadata(), io.BytesIO(b"i"))  # reuses the lowest free FileID
    with CimImage.open(tmp_path / "t.cim") as image:
        assert image.listdir() == ["g", "i"]
        assert image.read("g") == b"f" * 5000
        # FileIDs: root 1, d 2, f 3, h 4; d and h were freed, i took 2, the table shrank.
        assert image.lookup("i") == 2 and image.lookup("g") == 3
        assert image.file_count == 3


def test_region_choice_and_dedup(tmp_path: Path) -> None:
    small = b"s" * (SMALL_DATA_LIMIT - 1)
    large = b"L" * SMALL_DATA_LIMIT
    with CimWriter.create(tmp_path / "t.cim") as writer:
        writer.add("small", FileMetadata(), io.BytesIO(small))
        writer.add("large", FileMetadata(), io.BytesIO(large))
        writer.add("large2", FileMetadata(), io.BytesIO(large))
        writer.add("sized", FileMetadata(), io.BytesIO(large + b"ignored"), size=len(large))
    with CimImage.open(tmp_path / "t.cim") as image:
        kinds = {
            name: image.region_type(
                split_region_offset(image.entry(name).default_stream.data_offset)[0]
            )
            for name in ("small", "large", "large2", "sized")
        }
        assert kinds == {
            "small": RegionType.SMALL_DATA,
            "large": RegionType.DATA,
            "large2": RegionType.DATA,
            "sized": RegionType.DATA,
        }
        offsets = {image.entry(n).default_stream.data_offset for n in ("large", "large2", "sized")}
        assert len(offsets) == 1  # stored once
        assert split_region_offset(offsets.pop())[1] == 4096  # first data object at 0x1000
        _, entries = read_objectid_file(tmp_path / image.region_set.objectid_name(1))
        assert len(entries) == 1
        assert image.read("sized") == large


def test_short_data_fails_cleanly(tmp_path: Path) -> None:
    with CimWriter.create(tmp_path / "t.cim") as writer:
        writer.add("keep", FileMetadata(), io.BytesIO(b"k" * 9000))
        with pytest.raises(UsageError, match="ended after"):
            writer.add("short", FileMetadata(), io.BytesIO(b"x" * 5000), size=10_000)
        with pytest.raises(UsageError, match="ended after"):
            writer.add("short", FileMetadata(), io.BytesIO(b"x" * 10), size=500)
        assert not writer.exists("short")
    with CimImage.open(tmp_path / "t.cim") as image:
        assert image.listdir() == ["keep"]
        # Nothing of the failed stream stayed in the data region.
        assert image.region_path(1).stat().st_size == 4096 + 12288


def test_abort_and_exceptions_leave_nothing(tmp_path: Path) -> None:
    writer = CimWriter.create(tmp_path / "t.cim")
    writer.add("f", FileMetadata(), io.BytesIO(b"x" * 10_000))
    writer.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError), CimWriter.create(tmp_path / "t.cim") as writer:
        writer.add("f", FileMetadata(), io.BytesIO(b"x" * 10_000))
        raise RuntimeError("caller failed")
    assert list(tmp_path.iterdir()) == []
    with CimWriter.create(tmp_path / "t.cim") as writer:
        pass
    with pytest.raises(UsageError):
        writer.add("late", FileMetadata())
    with pytest.raises(UsageError):
        writer.commit()


def test_failed_commit_removes_what_it_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_replace = os.replace

    def failing_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if str(dst).endswith(".cim"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    writer = CimWriter.create(tmp_path / "t.cim")
    writer.add("f", FileMetadata(), io.BytesIO(b"x" * 10_000))
    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        writer.commit()
    assert list(tmp_path.iterdir()) == []


def test_buffered_objects_land_where_they_belong(tmp_path: Path) -> None:
    """Data objects are stored one call late (hashing overlaps the next file): replacing or
    re-linking a file before that must still give every name its own final content."""
    first = b"1" * 5000
    second = b"2" * 6000
    with CimWriter.create(tmp_path / "t.cim") as writer:
        writer.add("a", FileMetadata(), io.BytesIO(first))  # buffered
        writer.add("a", FileMetadata(), io.BytesIO(b"small now"))  # replaced before stored
        writer.add("b", FileMetadata(), io.BytesIO(second))  # buffered
        writer.add_link("b2", "b")
        writer.add_stream("b", "s", io.BytesIO(first))  # stores b, buffers the stream
        writer.add_stream("b", "S", io.BytesIO(b"tiny"))  # replaces it before it is stored
        writer.add_stream("b", "t", io.BytesIO(second))  # same bytes as b: deduplicated
        writer.add("c", FileMetadata(), io.BytesIO(first))  # same bytes as the dropped stream
        writer.delete("c")
        writer.add("d", FileMetadata(), io.BytesIO(os.urandom(3 << 20)))  # streamed path
    with CimImage.open(tmp_path / "t.cim") as image:
        assert image.read("a") == b"small now"
        assert image.read("b") == image.read("b2") == second
        assert image.read("b:s") == b"tiny"
        assert image.read("b:t") == second
        assert (
            image.entry("b").default_stream.data_offset
            == next(
                s for n, s in image._stream_table(image.entry("b"), "b") if n == "t"
            ).data_offset
        )
        assert image.stat("d").size == 3 << 20
        assert check_object_ids(image) == []


def test_abort_with_a_buffered_object(tmp_path: Path) -> None:
    writer = CimWriter.create(tmp_path / "t.cim")
    writer.add("a", FileMetadata(), io.BytesIO(b"x" * 500_000))
    writer.abort()
    assert list(tmp_path.iterdir()) == []
