"""NTFS indexes: entries, $INDEX_ROOT values and INDX blocks ($INDEX_ALLOCATION).

Implements (after ntfs-3g ``layout.h``: INDEX_ROOT, INDEX_HEADER, INDEX_ENTRY, INDEX_BLOCK):

* directory ($I30) entries keyed by a $FILE_NAME value and pointing at a file reference;
* view-index entries ($Secure:$SII/$SDH, $Quota:$O/$Q) carrying a key and a data part;
* the end entry, optionally pointing at a child block (VCN);
* a small index (all entries in the $INDEX_ROOT) or a one-level large index (the root holds
  only an end entry pointing at INDX block 0, which holds the entries) — enough for every index
  a freshly formatted volume has;
* parsing of the same, for the reader.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cimsnap.formats.ntfs.constants import (
    INDEX_ENTRY_END,
    INDEX_ENTRY_NODE,
    INDEX_HEADER_LARGE,
)
from cimsnap.formats.ntfs.errors import NtfsError
from cimsnap.formats.ntfs.records import align8, apply_fixups, remove_fixups, usa_count_for

# Entry header: file reference (or view: data offset u16, data length u16, reserved u32),
# entry length, key length, flags, reserved.
_ENTRY = struct.Struct("<QHHHH")
_VIEW_ENTRY = struct.Struct("<HHIHHHH")
ENTRY_HEADER = _ENTRY.size  # 16
# Index header: entries offset (from the header), index length, allocated size, flags.
_INDEX_HEADER = struct.Struct("<IIIB3x")
# Index root: indexed attribute type (0 for view indexes), collation rule, index block size,
# clusters (or 512-byte units) per index block.
_INDEX_ROOT = struct.Struct("<IIIB3x")
ROOT_HEADERS = _INDEX_ROOT.size + _INDEX_HEADER.size  # 32
# INDX block: magic, USA offset, USA count, LSN, VCN of this block; index header at 0x18.
INDX_MAGIC = b"INDX"
_INDX = struct.Struct("<4sHHQq")
INDX_USA_OFFSET = 0x28
INDX_HEADER_OFFSET = 0x18


def file_name_entry(file_reference: int, file_name_value: bytes) -> bytes:
    length = align8(ENTRY_HEADER + len(file_name_value))
    out = bytearray(length)
    _ENTRY.pack_into(out, 0, file_reference, length, len(file_name_value), 0, 0)
    out[ENTRY_HEADER : ENTRY_HEADER + len(file_name_value)] = file_name_value
    return bytes(out)


def view_entry(key: bytes, data: bytes, *, padding: bytes = b"") -> bytes:
    data_offset = ENTRY_HEADER + len(key)
    length = align8(data_offset + len(data))
    out = bytearray(length)
    _VIEW_ENTRY.pack_into(out, 0, data_offset, len(data), 0, length, len(key), 0, 0)
    out[ENTRY_HEADER:data_offset] = key
    out[data_offset : data_offset + len(data)] = data
    tail = data_offset + len(data)
    out[tail : tail + len(padding)] = padding[: length - tail]
    return bytes(out)


def end_entry(subnode_vcn: int | None = None) -> bytes:
    if subnode_vcn is None:
        return _ENTRY.pack(0, ENTRY_HEADER, 0, INDEX_ENTRY_END, 0)
    return _ENTRY.pack(0, ENTRY_HEADER + 8, 0, INDEX_ENTRY_END | INDEX_ENTRY_NODE, 0) + (
        struct.pack("<q", subnode_vcn)
    )


def _index_header(entries_offset: int, body: bytes, allocated: int, flags: int) -> bytes:
    return _INDEX_HEADER.pack(entries_offset, entries_offset + len(body), allocated, flags)


@dataclass(frozen=True)
class IndexPlan:
    """How an index is stored: the $INDEX_ROOT value and the INDX blocks (none when small)."""

    root_value: bytes
    blocks: list[bytes]  # unprotected INDX blocks (VCN order); fix up with ``protect_block``

    @property
    def large(self) -> bool:
        return bool(self.blocks)


def plan_index(
    entries: list[bytes],
    *,
    indexed_type: int,
    collation: int,
    block_size: int,
    cluster_size: int,
    root_space: int,
) -> IndexPlan:
    """Entries (already sorted) as a small index if they fit in ``root_space`` bytes of the
    $INDEX_ROOT value, else as a root pointing at one INDX block."""
    clusters_per_block = (
        block_size // cluster_size if block_size >= cluster_size else block_size // 512
    )
    root_head = _INDEX_ROOT.pack(indexed_type, collation, block_size, clusters_per_block)
    small_body = b"".join(entries) + end_entry()
    if ROOT_HEADERS + len(small_body) <= root_space:
        header = _index_header(_INDEX_HEADER.size, small_body, len(small_body) + 16, 0)
        return IndexPlan(root_head + header + small_body, [])
    root_body = end_entry(subnode_vcn=0)
    header = _index_header(_INDEX_HEADER.size, root_body, len(root_body) + 16, INDEX_HEADER_LARGE)
    block = _index_block(0, small_body, block_size)
    return IndexPlan(root_head + header + root_body, [block])


def _index_block(vcn: int, body: bytes, block_size: int) -> bytes:
    usa_count = usa_count_for(block_size)
    entries_at = align8(INDX_USA_OFFSET + 2 * usa_count)
    if entries_at + len(body) > block_size:
        raise NtfsError(
            f"{len(body)} bytes of index entries do not fit one {block_size}-byte index block"
        )
    out = bytearray(block_size)
    _INDX.pack_into(out, 0, INDX_MAGIC, INDX_USA_OFFSET, usa_count, 0, vcn)
    rel = entries_at - INDX_HEADER_OFFSET
    out[INDX_HEADER_OFFSET : INDX_HEADER_OFFSET + _INDEX_HEADER.size] = _index_header(
        rel, body, block_size - INDX_HEADER_OFFSET, 0
    )
    out[entries_at : entries_at + len(body)] = body
    return bytes(out)


def protect_block(block: bytes, usn: int = 1) -> bytes:
    out = bytearray(block)
    apply_fixups(out, INDX_USA_OFFSET, usn)
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# Parsing


@dataclass(frozen=True)
class IndexEntry:
    file_reference: int  # directory entries (0 in view indexes)
    key: bytes
    data: bytes  # view indexes
    subnode_vcn: int | None


@dataclass(frozen=True)
class IndexRoot:
    indexed_type: int
    collation: int
    block_size: int
    large: bool
    entries: list[IndexEntry]


def parse_entries(
    buf: bytes | bytearray, start: int, end: int, *, view: bool, what: str
) -> list[IndexEntry]:
    """The entries between ``start`` and ``end`` (the end entry included, with its subnode)."""
    out: list[IndexEntry] = []
    pos = start
    while True:
        if pos + ENTRY_HEADER > end:
            raise NtfsError(f"{what}: index entries run past the index")
        ref, length, key_len, flags, _r = _ENTRY.unpack_from(buf, pos)
        if length < ENTRY_HEADER or length % 8 or pos + length > end:
            raise NtfsError(f"{what}: index entry at {pos:#x} has invalid length {length}")
        subnode = None
        if flags & INDEX_ENTRY_NODE:
            if length < ENTRY_HEADER + 8:
                raise NtfsError(f"{what}: index node entry too short")
            (subnode,) = struct.unpack_from("<q", buf, pos + length - 8)
        if flags & INDEX_ENTRY_END:
            out.append(IndexEntry(0, b"", b"", subnode))
            return out
        if ENTRY_HEADER + key_len > length:
            raise NtfsError(f"{what}: index key runs past its entry")
        key = bytes(buf[pos + ENTRY_HEADER : pos + ENTRY_HEADER + key_len])
        data = b""
        if view:
            data_off, data_len = struct.unpack_from("<HH", buf, pos)
            if data_off + data_len > length:
                raise NtfsError(f"{what}: index data runs past its entry")
            data = bytes(buf[pos + data_off : pos + data_off + data_len])
            ref = 0
        out.append(IndexEntry(ref, key, data, subnode))
        pos += length


def parse_index_root(value: bytes, *, view: bool, what: str) -> IndexRoot:
    if len(value) < ROOT_HEADERS:
        raise NtfsError(f"{what}: $INDEX_ROOT is truncated")
    indexed_type, collation, block_size, _cpb = _INDEX_ROOT.unpack_from(value)
    entries_off, index_len, _alloc, flags = _INDEX_HEADER.unpack_from(value, _INDEX_ROOT.size)
    start = _INDEX_ROOT.size + entries_off
    end = _INDEX_ROOT.size + index_len
    if not start <= end <= len(value):
        raise NtfsError(f"{what}: $INDEX_ROOT header is inconsistent")
    entries = parse_entries(value, start, end, view=view, what=what)
    return IndexRoot(indexed_type, collation, block_size, bool(flags & 1), entries)


def parse_index_block(
    raw: bytes, *, vcn: int, view: bool, what: str, offset: int | None = None
) -> list[IndexEntry]:
    if raw[:4] != INDX_MAGIC:
        raise NtfsError(f"{what}: index block {vcn} has no INDX signature", offset=offset)
    block = bytearray(raw)
    remove_fixups(block, what=f"{what} index block {vcn}", offset=offset)
    _m, _uo, _uc, _lsn, block_vcn = _INDX.unpack_from(block)
    if block_vcn != vcn:
        raise NtfsError(f"{what}: index block says VCN {block_vcn}, expected {vcn}", offset=offset)
    entries_off, index_len, _alloc, _flags = _INDEX_HEADER.unpack_from(block, INDX_HEADER_OFFSET)
    start = INDX_HEADER_OFFSET + entries_off
    end = INDX_HEADER_OFFSET + index_len
    if not start <= end <= len(block):
        raise NtfsError(f"{what}: index block {vcn} header is inconsistent", offset=offset)
    return parse_entries(block, start, end, view=view, what=what)
