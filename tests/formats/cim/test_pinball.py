"""The Windows-made Pinball image (format 1.0) read through the reader, checked against its .msix.

The image holds the package under ``\\msix\\pinball_1.0.2.0_x64__ynj0a7qyfqv8c\\``; every member
of the zip except ``[Content_Types].xml`` must read byte-identical, and the directory listings
must be exactly the package's.  ``pinball.exe`` is stored as an expanded PE image.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from cimsnap.errors import NotFoundError
from cimsnap.formats.cim import CimImage
from cimsnap.formats.cim.check import check_object_ids
from cimsnap.formats.cim.format import FILE_ATTRIBUTE_ARCHIVE, FILE_ATTRIBUTE_DIRECTORY, StreamType
from cimsnap.formats.upcase import upcase_table

PACKAGE_ROOT = "\\msix\\pinball_1.0.2.0_x64__ynj0a7qyfqv8c"
ZIP_ONLY = {"[Content_Types].xml"}


@pytest.fixture(scope="module")
def pinball(testdata: Path) -> Path:
    return testdata / "cim" / "pinball"


@pytest.fixture(scope="module")
def package(pinball: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(pinball / "pinball_1.0.2.0_x64__ynj0a7qyfqv8c.msix") as archive:
        return {
            info.filename: archive.read(info)
            for info in archive.infolist()
            if not info.is_dir() and info.filename not in ZIP_ONLY
        }


def expected_listing(package: dict[str, bytes]) -> dict[str, set[str]]:
    """Directory (relative, '/'-separated, '' = package root) -> names it contains."""
    listing: dict[str, set[str]] = {"": set()}
    for member in package:
        parts = member.split("/")
        for depth in range(len(parts)):
            parent = "/".join(parts[:depth])
            listing.setdefault(parent, set()).add(parts[depth])
    return listing


def test_every_file_reads_identical(pinball: Path, package: dict[str, bytes]) -> None:
    assert len(package) == 74
    with CimImage.open(pinball / "Pinball.cim") as image:
        assert image.version == (1, 0)
        for member, content in package.items():
            path = PACKAGE_ROOT + "\\" + member.replace("/", "\\")
            assert image.read(path) == content, member
            assert image.stat(path).size == len(content)


def test_listings_match_the_package(pinball: Path, package: dict[str, bytes]) -> None:
    with CimImage.open(pinball / "Pinball.cim") as image:
        assert image.listdir("\\") == ["msix"]
        assert image.listdir("\\msix") == ["pinball_1.0.2.0_x64__ynj0a7qyfqv8c"]
        seen = {}
        for top, dirs, files in image.walk(PACKAGE_ROOT):
            relative = top[len(PACKAGE_ROOT) :].strip("\\").replace("\\", "/")
            seen[relative] = {e.name for e in dirs + files}
        assert seen == expected_listing(package)


def test_pe_image_stream_reads_at_any_offset(pinball: Path, package: dict[str, bytes]) -> None:
    exe = package["pinball.exe"]
    with CimImage.open(pinball / "Pinball.cim") as image:
        path = PACKAGE_ROOT + "\\pinball.exe"
        assert image.stat(path).stream_type == StreamType.PE_IMAGE
        with image.open(path) as handle:
            # reads that straddle the section mappings (0x400, 0x21800, 0x23200) and the end
            for offset, length in [
                (0, 0x400),
                (0x3F0, 0x20),
                (0x217F0, 0x30),
                (0x23100, 0x300),
                (len(exe) - 10, 100),
                (len(exe), 5),
                (7, 200000),
            ]:
                handle.seek(offset)
                assert handle.read(length) == exe[offset : offset + length]


def test_case_insensitive_lookup_and_metadata(pinball: Path, package: dict[str, bytes]) -> None:
    with CimImage.open(pinball / "Pinball.cim") as image:
        upper = image.stat(PACKAGE_ROOT.upper() + "\\PINBALL.EXE")
        lower = image.stat(PACKAGE_ROOT + "\\pinball.exe")
        assert upper == lower
        assert lower.attributes == FILE_ATTRIBUTE_ARCHIVE
        assert [ea.name for ea in lower.eas] == [
            b"$KERNEL.PURGE.IMAGEHASH.SHA1",
            b"$KERNEL.PURGE.IMAGEHASH.SHA256",
        ]
        assert lower.security_descriptor is not None
        assert lower.security_descriptor[:4] == b"\x01\x00\x14\x8c"  # revision 1, self-relative
        assert image.stat("\\msix").attributes == FILE_ATTRIBUTE_DIRECTORY
        # Windows stores the package's creation/write times; the root has none.
        assert image.stat("\\").creation_time == 0 and lower.creation_time > 0
        # Two files with identical content share one data object (deduplication).
        a = image.entry(PACKAGE_ROOT + "\\configuration.txt")
        b = image.entry(PACKAGE_ROOT + "\\dlllist.txt")
        assert a.default_stream == b.default_stream
        with pytest.raises(NotFoundError):
            image.lookup(PACKAGE_ROOT + "\\nope.txt")
        with pytest.raises(NotFoundError):
            image.lookup(PACKAGE_ROOT + "\\pinball.exe\\below")


def test_image_upcase_table_is_the_generated_one(pinball: Path) -> None:
    with CimImage.open(pinball / "Pinball.cim") as image:
        assert tuple(image.collation.table) == tuple(upcase_table())


def test_sample_objectid_tables_follow_the_rules(pinball: Path) -> None:
    with CimImage.open(pinball / "Pinball.cim") as image:
        assert check_object_ids(image) == []


def test_usage_is_regions_plus_objectids(pinball: Path) -> None:
    with CimImage.open(pinball / "Pinball.cim") as image:
        usage = image.usage()
    regions = sorted(pinball.glob("region_*"))
    objectids = sorted(pinball.glob("objectid_*"))
    assert usage.total == sum(p.stat().st_size for p in regions + objectids)
    assert len(usage.region_files) == len(usage.objectid_files) == 3
