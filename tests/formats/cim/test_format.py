"""Structures, codecs and collation on in-memory bytes; version handling of the reader."""

from __future__ import annotations

import io
import os
import shutil
import struct
import uuid
from pathlib import Path

import pytest

from cimsnap.errors import UsageError
from cimsnap.formats.cim import CimFormatError, CimImage, CimWriter, FileMetadata
from cimsnap.formats.cim.format import (
    MAGIC,
    CommonHeader,
    FilesystemHeader,
    FileType,
    RegionSet,
    Stream,
    StreamType,
    pack_link_table,
    region_offset,
    split_region_offset,
    unpack_link_table,
)
from cimsnap.formats.cim.metadata import (
    ExtendedAttribute,
    decode_eas,
    encode_eas,
    reparse_tag,
    symlink_reparse_buffer,
    symlink_target,
)
from cimsnap.formats.cim.names import Collation, split_stream
from cimsnap.formats.cim.objectid import object_digest
from cimsnap.formats.upcase import upcase_table

COLLATION = Collation(upcase_table())


def test_region_offsets() -> None:
    value = region_offset(3, 0x1234_5678_9ABC)
    assert value == (3 << 48) | 0x1234_5678_9ABC
    assert split_region_offset(value) == (3, 0x1234_5678_9ABC)
    with pytest.raises(ValueError):
        region_offset(0x10000, 0)
    with pytest.raises(ValueError):
        region_offset(0, 1 << 48)


def test_stream_word() -> None:
    stream = Stream(region_offset(1, 4096), (1 << 48) - 1, StreamType.PE_IMAGE, sparse=True)
    raw = stream.pack()
    assert len(raw) == 16
    assert struct.unpack("<QQ", raw)[1] == ((1 << 48) - 1) | (2 << 48) | (1 << 56)
    assert Stream.unpack_from(raw) == stream


def test_image_header_round_trip() -> None:
    parents = (RegionSet(uuid.uuid4(), 3), RegionSet(uuid.uuid4(), 3))
    header = FilesystemHeader(
        CommonHeader(72, FileType.IMAGE, 2, 0, reserved=1, reserved3=7),
        RegionSet(uuid.UUID("18ad71df-1d14-4f0e-ad03-eeff6224538b"), 3),
        region_offset(0, 0x22BC8),
        parents,
        reserved=7,
    )
    raw = header.pack()
    assert raw[:8] == MAGIC and len(raw) == 72 + 2 * 24
    assert FilesystemHeader.unpack(raw) == header
    assert header.regions.region_name(1) == "region_18ad71df-1d14-4f0e-ad03-eeff6224538b_1"


def test_sample_header_decodes(testdata: Path) -> None:
    raw = (testdata / "cim" / "pinball" / "Pinball.cim").read_bytes()
    header = FilesystemHeader.unpack(raw)
    assert header.regions == RegionSet(uuid.UUID("18ad71df-1d14-4f0e-ad03-eeff6224538b"), 3)
    assert (header.common.major, header.common.minor, header.parents) == (1, 0, ())
    assert header.pack() == raw  # reserved values included


def test_link_table_round_trip_and_checks() -> None:
    names = sorted(["b", "A", "\U0001f600", "\uff21x"], key=COLLATION.key)
    entries = [
        (n.encode("utf-16-le", "surrogatepass"), struct.pack("<I", i + 1))
        for i, n in enumerate(names)
    ]
    table = pack_link_table(entries)
    assert struct.unpack_from("<I", table)[0] == len(table)
    assert unpack_link_table(table, 4) == entries
    with pytest.raises(CimFormatError, match="length field"):
        unpack_link_table(table + b"\0", 4)
    huge = table[:4] + struct.pack("<I", 10**9) + table[8:]
    with pytest.raises(CimFormatError, match="does not fit"):
        unpack_link_table(huge, 4)


def test_collation_compares_utf16_units_through_the_table() -> None:
    key = COLLATION.key
    assert key("readme.TXT") == key("README.txt")
    assert key("a") < key("B") < key("c")  # case-insensitive order
    # U+10000 is the surrogate pair D800 DC00: below U+FF21 unit by unit (code points differ).
    assert key("\U00010000") < key("\uff21")
    assert key("ß") != key("SS")  # the NTFS table has no multi-character mappings
    assert key("µ") != key("Μ")  # U+00B5 maps to itself in the Windows table
    assert key("ä") == key("Ä")


def test_split_stream_names() -> None:
    assert split_stream("dir\\file:Zone.Identifier") == ("\\dir\\file", "Zone.Identifier")
    assert split_stream("dir/file:s:$DATA") == ("\\dir\\file", "s")
    assert split_stream("dir\\file") == ("dir\\file", None)


def test_ea_codec() -> None:
    eas = [ExtendedAttribute(b"$KERNEL.X", b"value", 0), ExtendedAttribute(b"B", b"", 0x80)]
    raw = encode_eas(eas)
    assert struct.unpack_from("<I", raw)[0] == 24  # header 8 + name 9 + NUL + value 5, 4-aligned
    assert decode_eas(raw) == eas
    with pytest.raises(ValueError):
        decode_eas(raw[:-1])
    with pytest.raises(UsageError):
        encode_eas([ExtendedAttribute(b"", b"x")])
    with pytest.raises(UsageError):
        encode_eas([ExtendedAttribute(b"N" * 255, b"x")])


def test_reparse_buffers() -> None:
    buffer = symlink_reparse_buffer("..\\target", relative=True)
    assert reparse_tag(buffer) == 0xA000000C
    assert symlink_target(buffer) == ("..\\target", True)
    third_party = struct.pack("<IHH", 0x00000042, 3, 0) + bytes(16) + b"abc"  # with a GUID
    assert reparse_tag(third_party) == 0x42
    with pytest.raises(UsageError):
        reparse_tag(buffer + b"x")


def test_object_digest_rule() -> None:
    assert object_digest(b"abc") == b"abc" + bytes(21)
    assert object_digest(bytes(24)) == bytes(24)
    import hashlib

    assert object_digest(b"x" * 25) == hashlib.sha512(b"x" * 25).digest()[:24]


@pytest.mark.parametrize("major", [1, 2, 3])
def test_reader_accepts_versions_1_to_3(tmp_path: Path, major: int) -> None:
    with CimWriter.create(tmp_path / "t.cim") as writer:
        writer.add("f", FileMetadata(), io.BytesIO(b"data" * 400))
    raw = bytearray((tmp_path / "t.cim").read_bytes())
    struct.pack_into("<I", raw, 16, major)
    (tmp_path / "t.cim").write_bytes(raw)
    with CimImage.open(tmp_path / "t.cim") as image:
        assert image.version == (major, 0)
        assert image.read("f") == b"data" * 400


def test_reader_rejects_unknown_versions(tmp_path: Path) -> None:
    with CimWriter.create(tmp_path / "t.cim"):
        pass
    raw = bytearray((tmp_path / "t.cim").read_bytes())
    struct.pack_into("<I", raw, 16, 4)
    (tmp_path / "t.cim").write_bytes(raw)
    with pytest.raises(CimFormatError, match=r"unsupported CimFS version 4\.0"):
        CimImage.open(tmp_path / "t.cim")


def test_writer_output_layout(tmp_path: Path) -> None:
    """What the writer emits, byte for byte where the format fixes it."""
    with CimWriter.create(tmp_path / "t.cim") as writer:
        writer.add("big", FileMetadata(), io.BytesIO(os.urandom(3 << 20)))  # several chunks
        writer.add("empty-dir", FileMetadata.directory())
    raw = (tmp_path / "t.cim").read_bytes()
    header = FilesystemHeader.unpack(raw)
    assert (header.common.major, header.common.minor) == (2, 0)
    assert (header.common.header_length, header.common.reserved, header.common.reserved3) == (
        72,
        1,
        7,
    )
    assert header.reserved == 7 and header.regions.count == 3
    for index, expected_type in enumerate((0, 1, 2)):
        region = (tmp_path / header.regions.region_name(index)).read_bytes()[:40]
        assert region[:8] == MAGIC and region[12] == FileType.REGION
        assert struct.unpack_from("<HB", region, 32) == (0, expected_type)
    data_region = tmp_path / header.regions.region_name(1)
    assert data_region.stat().st_size % 4096 == 0
    with CimImage.open(tmp_path / "t.cim") as image:
        assert image.entry("empty-dir").default_stream.length == 8  # an empty link table
        assert image.listdir("empty-dir") == []
        with image.open("big") as handle:
            assert len(handle.read()) == 3 << 20
    copy = tmp_path / "copy"
    copy.mkdir()
    for item in tmp_path.iterdir():
        if item.is_file():
            shutil.copy(item, copy / item.name)
    with CimImage.open(copy / "t.cim") as image:
        assert image.stat("big").size == 3 << 20
