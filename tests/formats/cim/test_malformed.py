"""Malformed images: clear CimsnapErrors naming the file, never another exception or a hang.

Targeted corruptions of every offset, length and count field (out of range, region index beyond
the count, huge counts), truncated files, directory cycles and unsorted link tables, then a
bounded fuzz loop of random single-field corruptions that opens, walks, stats and reads
everything and also forks the damaged image.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from cimsnap.errors import CimsnapError
from cimsnap.formats.cim import (
    CimFormatError,
    CimImage,
    CimWriter,
    FileMetadata,
    destroy_image,
    encode_eas,
)
from cimsnap.formats.cim.check import referenced_objects
from cimsnap.formats.cim.format import (
    FILE_ATTRIBUTE_SPARSE_FILE,
    FILE_ENTRY_V1,
    FILE_TABLE_DIRECTORY_ENTRY,
    FILESYSTEM_OBJECT,
    FileEntry,
    RegionHeader,
    split_region_offset,
)
from cimsnap.formats.cim.metadata import ExtendedAttribute, symlink_reparse_buffer

pytestmark = pytest.mark.timeout(120)  # a hang fails instead of blocking the suite


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pristine(tmp_path_factory.mktemp("pristine"))


def make_pristine(directory: Path) -> Path:
    """A small image with every kind of object: dirs, files, link, streams, SD, EAs, reparse."""
    sd = b"\x01\x00\x04\x80" + bytes(16)
    with CimWriter.create(directory / "img.cim") as writer:
        writer.add("a", FileMetadata.directory(security_descriptor=sd))
        writer.add("a\\b", FileMetadata.directory())
        writer.add("a\\b\\c", FileMetadata.directory())
        writer.add(
            "a\\small.txt",
            FileMetadata(
                security_descriptor=sd,
                extended_attributes=encode_eas([ExtendedAttribute(b"NAME", b"value")]),
            ),
            io.BytesIO(b"small"),
        )
        writer.add("a\\b\\big.bin", FileMetadata(), io.BytesIO(bytes(range(256)) * 40))
        writer.add_link("a\\b\\c\\link.bin", "a\\b\\big.bin")
        writer.add_stream("a\\small.txt", "ads", io.BytesIO(b"stream data"))
        writer.add_stream("a\\small.txt", "zz", io.BytesIO(b"x" * 3000))
        writer.add(
            "lnk",
            FileMetadata(reparse_buffer=symlink_reparse_buffer("a\\small.txt", relative=True)),
        )
        writer.add("sparse", FileMetadata(attributes=FILE_ATTRIBUTE_SPARSE_FILE), size=1 << 40)
        for i in range(3):
            writer.add(f"z{i}", FileMetadata(), io.BytesIO(b"%d" % i))
    return directory


def exercise(path: Path) -> None:
    """Everything a user can do with an image: open, walk, stat, list, read (bounded)."""
    with CimImage.open(path) as image:
        image.usage()
        for top, dirs, files in image.walk():
            image.listdir(top)
            for entry in dirs + files:
                st = image.stat(entry.file_id)
                st.eas  # noqa: B018 - decoding checks the chain
                if not entry.is_dir:
                    with image.open(entry.file_id) as handle:
                        for offset in (0, handle.size // 2, max(handle.size - 4096, 0)):
                            handle.pread(8192, offset)
                for stream in st.streams:
                    with image.open(entry.file_id, stream.name) as handle:
                        handle.pread(8192, 0)


def fork_and_change(path: Path) -> None:
    child = path.with_name("child.cim")
    before = set(path.parent.iterdir())
    try:
        with CimWriter.create(child, path) as writer:
            writer.add("new", FileMetadata(), io.BytesIO(b"new" * 500))
            for name in ("a", "lnk", "z1"):
                if writer.exists(name):
                    writer.delete(name)
        exercise(child)
    finally:
        if child.exists():
            destroy_image(child)
        assert set(path.parent.iterdir()) == before  # committed or not, nothing left over


class Layout:
    """Where each structure of the pristine image lives: (file name, byte offset)."""

    def __init__(self, directory: Path) -> None:
        with CimImage.open(directory / "img.cim") as image:
            self.cim = "img.cim"
            self.regions = [image.region_path(i).name for i in range(image.region_count)]
            fs_index, self.fs = split_region_offset(image.header.filesystem_offset)
            self.meta = self.regions[fs_index]
            raw = (directory / self.meta).read_bytes()
            _, ftd, _, _ = FILESYSTEM_OBJECT.unpack_from(raw, self.fs)
            self.ftd = split_region_offset(ftd)[1]
            table, _, size, _ = FILE_TABLE_DIRECTORY_ENTRY.unpack_from(raw, self.ftd)
            self.table = split_region_offset(table)[1]
            self.entry_size = size
            self.entries = {
                name: self.table + (image.lookup(name) - 1) * size
                for name in ("\\", "a", "a\\b", "a\\small.txt", "a\\b\\big.bin", "lnk")
            }
            self.dir_table = {
                name: split_region_offset(image.entry(name).default_stream.data_offset)[1]
                for name in ("\\", "a", "a\\b")
            }
            small = image.entry("a\\small.txt")
            self.sd = split_region_offset(small.sd_offset)[1]
            self.streams = split_region_offset(small.stream_table_offset)[1]
            self.ids = {name: image.lookup(name) for name in ("\\", "a", "a\\b", "a\\b\\c")}


def patch(directory: Path, name: str, offset: int, fmt: str, value: int | bytes) -> None:
    with open(directory / name, "r+b") as handle:
        handle.seek(offset)
        handle.write(struct.pack("<" + fmt, value))


@pytest.fixture
def image_dir(pristine: Path, tmp_path: Path) -> Path:
    directory = tmp_path / "img"
    shutil.copytree(pristine, directory)
    return directory


BAD_OFFSETS = {
    "region index beyond the count": (0x0100 << 48) | 0x40,
    "byte offset past the end": 0x7FFFFFFF,
    "inside the region header": 8,
    "all ones": 0xFFFFFFFFFFFFFFFF,
}


def targeted_cases(layout: Layout) -> Iterator[tuple[str, str, int, str, int]]:
    """(description, file, offset, struct format, value): each must give a CimFormatError."""
    cim = layout.cim
    yield "image magic", cim, 0, "Q", 0x4141414141414141
    yield "image version 9", cim, 16, "I", 9
    yield "image file type", cim, 12, "B", 1
    yield "image header length", cim, 8, "I", 4
    yield "region count 0", cim, 48, "H", 0
    yield "region count beyond the files", cim, 48, "H", 0xFFFF
    yield "parent count huge", cim, 70, "H", 0xFFFF
    for label, value in BAD_OFFSETS.items():
        yield f"filesystem offset: {label}", cim, 56, "Q", value
    for index, region in enumerate(layout.regions):
        yield f"region {index} magic", region, 0, "Q", 0
        yield f"region {index} file type", region, 12, "B", 0
    meta, fs = layout.meta, layout.fs
    for label, value in BAD_OFFSETS.items():
        yield f"upcase offset: {label}", meta, fs, "Q", value
        yield f"file table directory offset: {label}", meta, fs + 8, "Q", value
        yield f"file table offset: {label}", meta, layout.ftd, "Q", value
    yield "file table directory length huge", meta, fs + 16, "I", 0xFFFFFFF
    yield "file table directory length 0", meta, fs + 16, "I", 0
    yield "root FileID 0", meta, fs + 20, "I", 0
    yield "root FileID huge", meta, fs + 20, "I", 0xFFFFFFFF
    yield "root FileID is a file", meta, fs + 20, "I", layout.ids["a\\b\\c"] + 3
    yield "file table count > 1024", meta, layout.ftd + 8, "H", 1025
    yield "file table entry size 0", meta, layout.ftd + 10, "H", 0
    yield "file table entry size huge", meta, layout.ftd + 10, "H", 0xFFFF
    stream_at = 40  # FileEntry: default stream
    for name, at in layout.entries.items():
        if name == "lnk":
            continue  # an empty stream: its data offset is never used
        for label, value in BAD_OFFSETS.items():
            yield f"{name} default stream offset: {label}", meta, at + stream_at, "Q", value
        yield f"{name} stream length huge", meta, at + stream_at + 8, "Q", (1 << 47)
        yield f"{name} stream type 7", meta, at + stream_at + 8 + 6, "B", 7
    small = layout.entries["a\\small.txt"]
    for label, value in BAD_OFFSETS.items():
        yield f"SD offset: {label}", meta, small + 56, "Q", value
        yield f"EA offset: {label}", meta, small + 64, "Q", value
        yield f"stream table offset: {label}", meta, small + 80, "Q", value
        yield f"reparse offset: {label}", meta, layout.entries["lnk"] + 72, "Q", value
    yield "EA length past the end", meta, small + 2, "H", 0xFFFF
    for name, at in layout.dir_table.items():
        yield f"{name} link table length", meta, at, "I", 0xFFFFFFF0
        yield f"{name} link table count huge", meta, at + 4, "I", 0x7FFFFFFF
        yield f"{name} link table FileID 0", meta, at + 8, "I", 0
        yield f"{name} link table FileID huge", meta, at + 8, "I", 0xFFFFFF
    root_table = layout.dir_table["\\"]
    yield "root name offset past the end", meta, root_table + 8 + 4 * 5, "I", 0xFFFFFF
    yield "root name offset into the header", meta, root_table + 8 + 4 * 5, "I", 2
    yield "stream table length", meta, layout.streams, "I", 0xFFFFFFF0
    yield "stream table count huge", meta, layout.streams + 4, "I", 0x7FFFFFFF
    # A directory containing itself, and one containing its parent: cycles.
    yield "directory cycle (self)", meta, layout.dir_table["a\\b"] + 8, "I", layout.ids["a\\b"]
    yield "directory cycle (parent)", meta, layout.dir_table["a\\b"] + 8, "I", layout.ids["a"]


def test_targeted_corruptions_give_format_errors(pristine: Path, tmp_path: Path) -> None:
    layout = Layout(pristine)
    cases = list(targeted_cases(layout))
    assert len(cases) > 100
    unreported = []
    for description, name, offset, fmt, value in cases:
        directory = tmp_path / "case"
        shutil.rmtree(directory, ignore_errors=True)
        shutil.copytree(pristine, directory)
        patch(directory, name, offset, fmt, value)
        try:
            exercise(directory / "img.cim")
        except CimFormatError as err:
            assert err.path is not None, description
            assert str(err) and "\n" not in str(err), description
        else:
            unreported.append(description)
    assert unreported == [], "\n".join(unreported)


def test_unsorted_link_table(image_dir: Path) -> None:
    layout = Layout(image_dir)
    # The root lists a, lnk, sparse, z0, z1, z2: make the first name sort last.
    raw = (image_dir / layout.meta).read_bytes()
    table = layout.dir_table["\\"]
    (count,) = struct.unpack_from("<I", raw, table + 4)
    (first_name,) = struct.unpack_from("<I", raw, table + 8 + 4 * count)
    patch(image_dir, layout.meta, table + first_name + 2, "H", ord("~"))
    with pytest.raises(CimFormatError, match="not sorted"):
        exercise(image_dir / "img.cim")


def test_directory_cycle_is_reported_not_followed(image_dir: Path) -> None:
    layout = Layout(image_dir)
    patch(image_dir, layout.meta, layout.dir_table["a\\b"] + 8, "I", layout.ids["a"])
    with CimImage.open(image_dir / "img.cim") as image:
        with pytest.raises(CimFormatError, match="reachable twice"):
            list(image.walk())
        # Lookups still terminate (a path is finite): a\b's first name now leads back to a.
        looped = "a\\b\\BIG.BIN\\b\\big.bin\\small.txt"
        assert image.lookup(looped) == image.lookup("a\\small.txt")


@pytest.mark.parametrize("which", ["cim", "metadata", "data", "small"])
def test_truncated_files(pristine: Path, tmp_path: Path, which: str) -> None:
    layout = Layout(pristine)
    name = {
        "cim": layout.cim,
        "metadata": layout.meta,
        "data": layout.regions[1],
        "small": layout.regions[2],
    }[which]
    size = (pristine / name).stat().st_size
    with CimImage.open(pristine / "img.cim") as image:
        ends = [
            split_region_offset(offset)[1] + length
            for offset, length, _ in referenced_objects(image)
            if image.region_path(split_region_offset(offset)[0]).name == name
        ]
    last_byte = max(ends, default=size) - 1  # data regions end in padding: cut real data
    for cut in sorted({0, 7, 31, 39, 40, size // 2, last_byte}):
        if cut >= size:
            continue
        directory = tmp_path / f"cut{cut}"
        shutil.copytree(pristine, directory)
        os.truncate(directory / name, cut)
        with pytest.raises(CimFormatError):
            exercise(directory / "img.cim")


def test_missing_region_file(image_dir: Path) -> None:
    layout = Layout(image_dir)
    (image_dir / layout.regions[2]).unlink()
    with pytest.raises(CimFormatError, match="missing"):
        CimImage.open(image_dir / "img.cim")


def test_region_file_names_match_case_insensitively(image_dir: Path) -> None:
    layout = Layout(image_dir)
    for region in layout.regions:
        (image_dir / region).rename(image_dir / region.upper())
    exercise(image_dir / "img.cim")


def test_fuzz_single_field_corruptions(pristine: Path, tmp_path: Path) -> None:
    """Random single-field corruptions: every outcome is a clean result or a CimsnapError."""
    directory = tmp_path / "fuzz"
    shutil.copytree(pristine, directory)
    layout = Layout(directory)
    targets = [layout.cim, layout.meta]
    originals = {name: (directory / name).read_bytes() for name in targets}
    rng = random.Random(20240611)
    interesting = [0, 1, 0x7F, 0xFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 48, (1 << 64) - 1]
    outcomes = {"error": 0, "clean": 0}
    for _ in range(300):
        name = rng.choice(targets)
        data = originals[name]
        size = rng.choice([1, 2, 4, 8])
        start = RegionHeader.SIZE if name != layout.cim else 0
        # Mostly the interesting region: structures after the 128 KiB upcase table.
        offset = rng.randrange(start, len(data) - size + 1)
        if name == layout.meta and rng.random() < 0.8:
            offset = rng.randrange(max(start, len(data) - 2048), len(data) - size + 1)
        offset -= offset % size
        value = rng.choice([*interesting, rng.getrandbits(8 * size)]) & ((1 << (8 * size)) - 1)
        patched = bytearray(data)
        patched[offset : offset + size] = value.to_bytes(size, "little")
        (directory / name).write_bytes(patched)
        try:
            exercise(directory / "img.cim")
            fork_and_change(directory / "img.cim")
            outcomes["clean"] += 1
        except CimsnapError as err:
            assert "\n" not in str(err)
            outcomes["error"] += 1
        finally:
            (directory / name).write_bytes(data)
    assert outcomes["error"] > 50 and outcomes["clean"] > 0
    assert sorted(p.name for p in directory.iterdir()) == sorted(p.name for p in pristine.iterdir())


def test_entry_sizes_smaller_than_v2_are_zero_filled() -> None:
    entry = FileEntry(flags=1, creation_time=5, parent_file_id=9)
    v1 = entry.pack(FILE_ENTRY_V1.size)
    assert len(v1) == 88
    assert FileEntry.unpack(v1) == FileEntry(flags=1, creation_time=5)
