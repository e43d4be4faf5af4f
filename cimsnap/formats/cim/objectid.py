"""Object-ID files: the per-region deduplication index of a CimFS image.

Reference "Object-ID files": a 48-byte header, then ``count`` entries of 40 bytes (object length,
24-byte digest, byte offset in the matching region file).  The digest of an object is its bytes
zero-padded to 24 when it is at most 24 bytes long, else the first 24 bytes of its SHA-512.
Entries are sorted by (length, digest bytes); identical objects are stored once.  These rules
hold for every entry of the Windows-made samples; Windows does not read the files at mount time.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import NamedTuple

from cimsnap.formats.cim.errors import CimFormatError
from cimsnap.formats.cim.format import (
    DIGEST_LENGTH,
    OBJECT_ID_ENTRY,
    CommonHeader,
    FileType,
    ObjectIdHeader,
)


def object_digest(data: bytes) -> bytes:
    """The 24-byte object ID digest of an object's bytes."""
    if len(data) <= DIGEST_LENGTH:
        return data.ljust(DIGEST_LENGTH, b"\0")
    return hashlib.sha512(data).digest()[:DIGEST_LENGTH]


def digest_from_hash(length: int, sha512: bytes, head: bytes) -> bytes:
    """Digest of a streamed object: ``head`` is its first bytes (all of them when short)."""
    if length <= DIGEST_LENGTH:
        return head[:length].ljust(DIGEST_LENGTH, b"\0")
    return sha512[:DIGEST_LENGTH]


class ObjectId(NamedTuple):
    """One entry; the tuple order (length, digest, offset) is the on-disk sort order.

    A NamedTuple: writers make one per object and sort thousands of them."""

    length: int
    digest: bytes
    offset: int

    def pack(self) -> bytes:
        return OBJECT_ID_ENTRY.pack(self.length, self.digest, self.offset)


def pack_objectid_file(
    index: int, region_type: int, entries: list[ObjectId], version: tuple[int, int]
) -> bytes:
    """An object-ID file for region ``index`` of a set, entries sorted by (length, digest)."""
    ordered = sorted(entries)
    common = CommonHeader(ObjectIdHeader.SIZE, FileType.OBJECT_ID, *version)
    header = ObjectIdHeader(common, index, region_type, ObjectIdHeader.SIZE, len(ordered))
    pack = OBJECT_ID_ENTRY.pack
    return header.pack() + b"".join([pack(*entry) for entry in ordered])


def read_objectid_file(path: str | os.PathLike[str]) -> tuple[ObjectIdHeader, list[ObjectId]]:
    """Header and entries of an object-ID file, every count and offset checked."""
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(ObjectIdHeader.SIZE)
        size = os.fstat(handle.fileno()).st_size
        try:
            header = ObjectIdHeader.unpack(head)
        except CimFormatError as err:
            err.path = path
            raise
        end = header.table_offset + header.count * OBJECT_ID_ENTRY.size
        if header.table_offset < ObjectIdHeader.SIZE or end > size:
            raise CimFormatError(
                f"object-ID table ({header.count} entries at {header.table_offset}) does not fit "
                f"in the file ({size} bytes)",
                path=path,
                offset=ObjectIdHeader.SIZE - 8,
            )
        handle.seek(header.table_offset)
        raw = handle.read(header.count * OBJECT_ID_ENTRY.size)
    entries = [ObjectId._make(fields) for fields in OBJECT_ID_ENTRY.iter_unpack(raw)]
    return header, entries
