"""The object-ID checker finds each kind of rule violation, so its "no problems" means something."""

from __future__ import annotations

import io
import shutil
import struct
from pathlib import Path

import pytest

from cimsnap.formats.cim import CimImage, CimWriter, FileMetadata
from cimsnap.formats.cim.check import check_object_ids
from cimsnap.formats.cim.format import OBJECT_ID_ENTRY, ObjectIdHeader
from cimsnap.formats.cim.objectid import pack_objectid_file, read_objectid_file


@pytest.fixture
def image(tmp_path: Path) -> Path:
    with CimWriter.create(tmp_path / "t.cim") as writer:
        writer.add("d", FileMetadata.directory(security_descriptor=b"\x01" * 20))
        for i in range(6):
            writer.add(
                f"d\\f{i}",
                FileMetadata(security_descriptor=b"\x01" * 20),
                io.BytesIO(bytes([i + 1]) * (500 + 900 * i)),
            )
        writer.add("d\\same", FileMetadata(), io.BytesIO(bytes([6]) * 5000))
    return tmp_path / "t.cim"


def objectid_path(image: Path, index: int) -> Path:
    with CimImage.open(image) as cim:
        return image.parent / cim.region_set.objectid_name(index)


def problems(image: Path) -> list[str]:
    with CimImage.open(image) as cim:
        return check_object_ids(cim)


def test_clean_output(image: Path) -> None:
    assert problems(image) == []
    for index in range(3):
        header, entries = read_objectid_file(objectid_path(image, index))
        assert header.index == index and header.table_offset == ObjectIdHeader.SIZE
        assert entries == sorted(entries)


def test_wrong_digest_is_found(image: Path) -> None:
    path = objectid_path(image, 1)
    raw = bytearray(path.read_bytes())
    raw[ObjectIdHeader.SIZE + 8] ^= 0xFF  # first entry's digest
    path.write_bytes(raw)
    assert any("digest" in p for p in problems(image))


def test_unsorted_entries_are_found(image: Path) -> None:
    path = objectid_path(image, 1)
    _header, entries = read_objectid_file(path)
    raw = path.read_bytes()[: ObjectIdHeader.SIZE] + b"".join(e.pack() for e in reversed(entries))
    path.write_bytes(raw)
    assert any("not sorted" in p for p in problems(image))


def test_missing_entry_is_found(image: Path) -> None:
    path = objectid_path(image, 0)
    header, entries = read_objectid_file(path)
    path.write_bytes(pack_objectid_file(header.index, header.region_type, entries[1:], (2, 0)))
    assert any("is not listed" in p for p in problems(image))


def test_duplicate_object_is_found(image: Path, tmp_path: Path) -> None:
    path = objectid_path(image, 1)
    header, entries = read_objectid_file(path)
    doubled = [*entries, entries[0]]
    path.write_bytes(pack_objectid_file(header.index, header.region_type, doubled, (2, 0)))
    assert any("more than once" in p for p in problems(image))


def test_misaligned_and_out_of_range_entries_are_found(image: Path) -> None:
    path = objectid_path(image, 1)
    raw = bytearray(path.read_bytes())
    _length, _digest, offset = OBJECT_ID_ENTRY.unpack_from(raw, ObjectIdHeader.SIZE)
    struct.pack_into("<Q", raw, ObjectIdHeader.SIZE + 32, offset + 8)
    path.write_bytes(raw)
    assert any("aligned" in p for p in problems(image))
    struct.pack_into("<Q", raw, ObjectIdHeader.SIZE + 32, 1 << 40)
    path.write_bytes(raw)
    assert any("past the region" in p for p in problems(image))


def test_missing_objectid_file_is_reported(image: Path) -> None:
    objectid_path(image, 2).unlink()
    assert any("missing" in p for p in problems(image))


def test_sample_passes_and_a_damaged_copy_fails(testdata: Path, tmp_path: Path) -> None:
    for item in (testdata / "cim" / "pinball").iterdir():
        if item.name.startswith(("region_", "objectid_", "Pinball.cim")):
            shutil.copy(item, tmp_path / item.name)
    assert problems(tmp_path / "Pinball.cim") == []
    path = objectid_path(tmp_path / "Pinball.cim", 2)
    raw = bytearray(path.read_bytes())
    raw[ObjectIdHeader.SIZE + 10] ^= 1
    path.write_bytes(raw)
    assert problems(tmp_path / "Pinball.cim") != []
