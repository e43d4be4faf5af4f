"""Hive bins and cells of an in-memory hive image: validation, lookup, allocation and freeing.

Implements the spec sections "Hive bin" and "Cell": the hive bins data is a sequence of hive
bins (``hbin`` header, size a multiple of 4096, offset field equal to the bin's position) and
every bin is filled by cells without gaps, each cell 8-byte aligned with a negative size when
allocated and a positive size when free.

Opening scans every bin once and records which 8-byte units start a cell, so any cell offset
taken from a record can be checked exactly (in range, aligned, the start of an allocated cell).
Free cells are indexed by size class for allocation; freeing coalesces with free neighbours, and
a new hive bin is appended when nothing fits (the way Windows and hivex grow a hive).
"""

from __future__ import annotations

import os
from pathlib import Path

from cimsnap.errors import FormatError

from .structures import (
    BASE_BLOCK_SIZE,
    CELL_ALIGNMENT,
    CELL_SIZE,
    HBIN_ALIGNMENT,
    HBIN_HEADER,
    HBIN_HEADER_SIZE,
    HBIN_SIGNATURE,
    MIN_CELL_SIZE,
    NIL,
    align,
)

NOT_A_CELL = 0
ALLOCATED = 1
FREE = 2

_SMALL_CLASS_SCAN = 32  # cells examined in the requested size class before going bigger


class RegfError(FormatError):
    """A registry hive (or one of its transaction logs) is malformed."""


class CellStore:
    """The hive bins of ``image`` (a whole primary file: base block + hive bins data)."""

    def __init__(self, image: bytearray, hbins_size: int, source: str | os.PathLike[str]):
        self.buf = image
        self.hbins_size = hbins_size
        self.source = source
        self.bin_starts: list[int] = []
        self.kind = bytearray(hbins_size // CELL_ALIGNMENT)  # NOT_A_CELL / ALLOCATED / FREE
        self._free: dict[int, int] = {}  # free cell offset -> size
        self._free_end: dict[int, int] = {}  # end offset of a free cell -> its offset
        self._classes: list[set[int]] = [set() for _ in range(33)]
        self._scan()

    # --- errors ------------------------------------------------------------------------------
    def error(self, message: str, cell_offset: int | None = None) -> RegfError:
        where = None
        if cell_offset is not None and cell_offset != NIL:
            where = BASE_BLOCK_SIZE + cell_offset
        return RegfError(message, path=Path(self.source), offset=where)

    # --- scanning ----------------------------------------------------------------------------
    def _scan(self) -> None:
        buf = self.buf
        unpack_cell = CELL_SIZE.unpack_from
        kind = self.kind
        pos = 0
        end = self.hbins_size
        while pos < end:
            if pos + HBIN_HEADER_SIZE > end:
                raise self.error(f"hive bin header at {pos:#x} runs past the hive bins data", pos)
            sig, bin_offset, bin_size, _r, _ts, _spare = HBIN_HEADER.unpack_from(
                buf, BASE_BLOCK_SIZE + pos
            )
            if sig != HBIN_SIGNATURE:
                raise self.error(f"bad hive bin signature {sig!r} at hive bin {pos:#x}", pos)
            if bin_offset != pos:
                raise self.error(
                    f"hive bin at {pos:#x} says it is at {bin_offset:#x} (bins out of place)", pos
                )
            if bin_size < HBIN_ALIGNMENT or bin_size % HBIN_ALIGNMENT or pos + bin_size > end:
                raise self.error(f"hive bin at {pos:#x} has an invalid size {bin_size:#x}", pos)
            self.bin_starts.append(pos)
            cell = pos + HBIN_HEADER_SIZE
            bin_end = pos + bin_size
            while cell < bin_end:
                (size,) = unpack_cell(buf, BASE_BLOCK_SIZE + cell)
                length = -size if size < 0 else size
                if length < MIN_CELL_SIZE or length % CELL_ALIGNMENT or cell + length > bin_end:
                    raise self.error(
                        f"broken cell chain in hive bin {pos:#x}: cell at {cell:#x} has size "
                        f"{size}",
                        cell,
                    )
                if size < 0:
                    kind[cell >> 3] = ALLOCATED
                else:
                    kind[cell >> 3] = FREE
                    self._index_free(cell, length)
                cell += length
            pos = bin_end

    # --- lookup ------------------------------------------------------------------------------
    def cell(self, offset: int, what: str) -> tuple[int, int]:
        """(position of the cell data in ``buf``, length of the cell data) of an allocated cell."""
        if offset >= self.hbins_size or offset & 7:
            if offset == NIL:
                raise self.error(f"{what}: missing (offset 0xffffffff)")
            raise self.error(f"{what}: cell offset {offset:#x} is out of range or misaligned")
        if self.kind[offset >> 3] != ALLOCATED:
            raise self.error(
                f"{what}: offset {offset:#x} is not the start of an allocated cell", offset
            )
        pos = BASE_BLOCK_SIZE + offset
        (size,) = CELL_SIZE.unpack_from(self.buf, pos)
        return pos + 4, -size - 4

    def is_allocated(self, offset: int) -> bool:
        return offset < self.hbins_size and not offset & 7 and self.kind[offset >> 3] == ALLOCATED

    # --- allocation --------------------------------------------------------------------------
    def _index_free(self, offset: int, size: int) -> None:
        self._free[offset] = size
        self._free_end[offset + size] = offset
        self._classes[size.bit_length()].add(offset)

    def _unindex_free(self, offset: int) -> int:
        size = self._free.pop(offset)
        del self._free_end[offset + size]
        self._classes[size.bit_length()].discard(offset)
        return size

    def alloc(self, data_size: int) -> int:
        """Allocate a cell holding ``data_size`` bytes; returns its offset (data zeroed)."""
        size = max(MIN_CELL_SIZE, align(data_size + 4, CELL_ALIGNMENT))
        wanted = size.bit_length()
        found = -1
        for cls in range(wanted, len(self._classes)):
            bucket = self._classes[cls]
            if not bucket:
                continue
            if cls > wanted:
                found = next(iter(bucket))  # every cell in a bigger class is big enough
                break
            for n, candidate in enumerate(bucket):
                if self._free[candidate] >= size:
                    found = candidate
                    break
                if n >= _SMALL_CLASS_SCAN:
                    break
            if found >= 0:
                break
        if found < 0:
            found = self._append_bin(size)
        have = self._unindex_free(found)
        rest = have - size
        if rest >= MIN_CELL_SIZE:
            self._write_size(found + size, rest)
            self.kind[(found + size) >> 3] = FREE
            self._index_free(found + size, rest)
        else:
            size = have
        pos = BASE_BLOCK_SIZE + found
        self.buf[pos + 4 : pos + size] = bytes(size - 4)
        self._write_size(found, -size)
        self.kind[found >> 3] = ALLOCATED
        return found

    def free(self, offset: int) -> None:
        """Mark an allocated cell free and merge it with free neighbours in the same bin."""
        if not self.is_allocated(offset):
            raise self.error(f"cannot free {offset:#x}: not an allocated cell", offset)
        pos = BASE_BLOCK_SIZE + offset
        (size,) = CELL_SIZE.unpack_from(self.buf, pos)
        size = -size
        self.buf[pos + 4 : pos + size] = bytes(size - 4)  # no remnants of deleted data
        start = offset
        following = offset + size
        if following in self._free:
            size += self._unindex_free(following)
            self.kind[following >> 3] = NOT_A_CELL
        if start in self._free_end:
            previous = self._free_end[start]
            size += self._unindex_free(previous)
            self.kind[start >> 3] = NOT_A_CELL
            start = previous
        self._write_size(start, size)
        self.kind[start >> 3] = FREE
        self._index_free(start, size)

    def _write_size(self, offset: int, size: int) -> None:
        CELL_SIZE.pack_into(self.buf, BASE_BLOCK_SIZE + offset, size)

    def _append_bin(self, cell_size: int) -> int:
        bin_size = align(cell_size + HBIN_HEADER_SIZE, HBIN_ALIGNMENT)
        offset = self.hbins_size
        header = HBIN_HEADER.pack(HBIN_SIGNATURE, offset, bin_size, 0, 0, 0)
        self.buf += header + bytes(bin_size - HBIN_HEADER_SIZE)
        self.kind += bytes(bin_size // CELL_ALIGNMENT)
        self.hbins_size += bin_size
        self.bin_starts.append(offset)
        first = offset + HBIN_HEADER_SIZE
        self._write_size(first, bin_size - HBIN_HEADER_SIZE)
        self.kind[first >> 3] = FREE
        self._index_free(first, bin_size - HBIN_HEADER_SIZE)
        return first

    # --- statistics --------------------------------------------------------------------------
    def free_bytes(self) -> int:
        return sum(self._free.values())
