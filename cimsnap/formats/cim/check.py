"""Consistency checker for an image's object-ID tables against the objects the image uses.

Checks the rules of reference "Object-ID files" for each of the image's own regions: entries
sorted by (length, digest); each digest is the rule's digest of the bytes at its offset; no
object stored twice (same length and digest); objects aligned as their region type requires
(4 KiB data, 8 bytes otherwise); and every object the image references in that region (file
tables, link tables, SDs, EAs, reparse buffers, stream data, PE descriptors and their data, the
upcase table, the file table directory, the filesystem object) is listed at its offset with its
length.  Applied to both cimsnap's output and the Windows-made sample by the tests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from cimsnap.formats.cim.errors import CimFormatError
from cimsnap.formats.cim.format import (
    COUNTED_LENGTH,
    FILE_TABLE_DIRECTORY_ENTRY,
    FILESYSTEM_OBJECT,
    LINK_TABLE_HEADER,
    METADATA_ALIGNMENT,
    PAGE_SIZE,
    PE_IMAGE,
    PE_IMAGE_MAPPING,
    UPCASE_TABLE_BYTES,
    RegionType,
    Stream,
    StreamType,
    split_region_offset,
)
from cimsnap.formats.cim.objectid import digest_from_hash, read_objectid_file
from cimsnap.formats.cim.reader import CimImage, find_image_file

CHUNK = 1 << 20


def referenced_objects(image: CimImage) -> Iterator[tuple[int, int, str]]:
    """(RegionOffset, length, description) of every object the image's metadata points to."""
    header = image.header
    yield header.filesystem_offset, FILESYSTEM_OBJECT.size, "filesystem object"
    upcase, ftd, ftd_length, _ = FILESYSTEM_OBJECT.unpack(
        image._pread(header.filesystem_offset, 0, FILESYSTEM_OBJECT.size, "filesystem object")
    )
    yield upcase, UPCASE_TABLE_BYTES, "upcase table"
    yield ftd, ftd_length * FILE_TABLE_DIRECTORY_ENTRY.size, "file table directory"
    for table, (offset, count, entry_size) in enumerate(image._tables):
        yield offset, count * entry_size, f"file table {table}"
    for file_id in image.file_ids():
        entry = image.entry(file_id)
        what = f"FileID {file_id}"
        if entry.sd_offset:
            yield entry.sd_offset, _counted_length(image, entry.sd_offset), f"SD of {what}"
        if entry.ea_offset and entry.ea_length:
            yield entry.ea_offset, entry.ea_length, f"EAs of {what}"
        if entry.reparse_offset:
            yield (
                entry.reparse_offset,
                _counted_length(image, entry.reparse_offset),
                (f"reparse buffer of {what}"),
            )
        yield from _stream_objects(image, entry.default_stream, what)
        if entry.stream_table_offset:
            (length, _) = LINK_TABLE_HEADER.unpack(
                image._pread(entry.stream_table_offset, 0, LINK_TABLE_HEADER.size, what)
            )
            yield entry.stream_table_offset, length, f"stream table of {what}"
            for name, stream in image._stream_table(entry, what):
                yield from _stream_objects(image, stream, f"{what}:{name}")


def _counted_length(image: CimImage, offset: int) -> int:
    (length,) = COUNTED_LENGTH.unpack(image._pread(offset, 0, COUNTED_LENGTH.size, "object"))
    return COUNTED_LENGTH.size + length


def _stream_objects(image: CimImage, stream: Stream, what: str) -> Iterator[tuple[int, int, str]]:
    if stream.sparse or stream.length == 0:
        return
    if stream.stream_type == StreamType.PE_IMAGE:
        pe = image._pe_image(stream.data_offset)
        size = PE_IMAGE.size + len(pe.mappings) * PE_IMAGE_MAPPING.size
        yield stream.data_offset, size, f"PE descriptor of {what}"
        yield pe.data_offset, pe.data_length, f"PE image data of {what}"
    else:
        yield stream.data_offset, stream.length, f"data of {what}"


def check_object_ids(image: CimImage) -> list[str]:
    """Violations of the object-ID rules in the image's own regions (empty when all hold)."""
    problems: list[str] = []
    own_start = image.region_count - image.region_set.count
    referenced: dict[int, dict[int, tuple[int, str]]] = {}
    try:
        for offset_value, length, what in referenced_objects(image):
            index, offset = split_region_offset(offset_value)
            if index >= own_start:
                referenced.setdefault(index, {})[offset] = (length, what)
    except CimFormatError as err:
        return [f"cannot enumerate objects: {err}"]
    for i in range(image.region_set.count):
        index = own_start + i
        name = image.region_set.objectid_name(i)
        path = find_image_file(image.path.parent, name)
        if path is None:
            problems.append(f"{name} is missing")
            continue
        try:
            header, entries = read_objectid_file(path)
        except CimFormatError as err:
            problems.append(str(err))
            continue
        region_type = image.region_type(index)
        if header.region_type != region_type:
            problems.append(f"{name}: region type {header.region_type}, region has {region_type}")
        keys = [(e.length, e.digest) for e in entries]
        if keys != sorted(keys):
            problems.append(f"{name}: entries are not sorted by (length, digest)")
        if len(set(keys)) != len(keys):
            problems.append(f"{name}: an object is stored more than once")
        alignment = PAGE_SIZE if region_type == RegionType.DATA else METADATA_ALIGNMENT
        listed: dict[int, int] = {}
        for entry in entries:
            listed[entry.offset] = entry.length
            if entry.offset % alignment:
                problems.append(f"{name}: object at {entry.offset:#x} is not {alignment}-aligned")
            actual = _digest_at(image, index, entry.offset, entry.length)
            if actual is None:
                problems.append(f"{name}: object at {entry.offset:#x} runs past the region's end")
            elif actual != entry.digest:
                problems.append(f"{name}: digest of the object at {entry.offset:#x} is wrong")
        for offset, (length, what) in sorted(referenced.get(index, {}).items()):
            if listed.get(offset) != length:
                problems.append(f"{name}: {what} ({length} bytes at {offset:#x}) is not listed")
    return problems


def _digest_at(image: CimImage, index: int, offset: int, length: int) -> bytes | None:
    hasher = hashlib.sha512()
    head = b""
    done = 0
    base = (index << 48) | offset
    try:
        while done < length:
            chunk = image._pread(base, done, min(CHUNK, length - done), "object")
            if not done:
                head = chunk[:32]
            hasher.update(chunk)
            done += len(chunk)
    except CimFormatError:
        return None
    return digest_from_hash(length, hasher.digest(), head)
