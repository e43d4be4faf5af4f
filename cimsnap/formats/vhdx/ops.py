"""Whole-file VHDX operations: resize, check, info, export to raw, import from raw.

``check`` goes beyond what opening validates ([MS-VHDX] 2.2-2.6): both region tables valid and
equal, every BAT entry's state valid for its position, every allocated block inside the file,
outside the header section, log and regions, and not overlapping any other block; partially
present blocks backed by a present sector bitmap; then the parent: found, linkage (the parent's
DataWriteGuid) matching, same logical sector size, no loop, and the parent itself checked.
A single damaged header copy is not a problem: a crash while a header is rewritten leaves
exactly that, and the other copy is current (2.2.2).
"""

from __future__ import annotations

import array
import os
import secrets
from pathlib import Path
from typing import Any

from cimsnap.errors import AlreadyExistsError, UsageError
from cimsnap.formats.vhdx.create import BAT_OFFSET, check_parameters, layout, write_new_file
from cimsnap.formats.vhdx.disk import (
    MAX_CHAIN_DEPTH,
    VhdxDisk,
    open_disk,
    open_layer,
    open_regular_file,
    parent_candidates,
)
from cimsnap.formats.vhdx.errors import ParentLinkageError, ParentNotFoundError, VhdxError
from cimsnap.formats.vhdx.geometry import Geometry, align_up
from cimsnap.formats.vhdx.structs import (
    BAT_ENTRY_SIZE,
    BAT_RESERVED_MASK,
    HEADER_SECTION_SIZE,
    KEY_ABSOLUTE_WIN32_PATH,
    KEY_PARENT_LINKAGE,
    KEY_RELATIVE_PATH,
    PAYLOAD_BLOCK_FULLY_PRESENT,
    PAYLOAD_BLOCK_NOT_PRESENT,
    PAYLOAD_BLOCK_PARTIALLY_PRESENT,
    PAYLOAD_STATES,
    REGION_ALIGNMENT,
    SB_BLOCK_NOT_PRESENT,
    SB_BLOCK_PRESENT,
    SECTOR_BITMAP_BLOCK_SIZE,
    ZERO_GUID,
    MiB,
    bat_entry,
    bat_offset,
    bat_state,
)

_IO_CHUNK = 4 * MiB  # export/import stream in pieces of this size at most
_ZEROS = bytes(_IO_CHUNK)


def resize(path: str | os.PathLike[str], new_size: int) -> None:
    """Grow the disk at ``path`` (differencing disks too); shrinking raises UsageError."""
    with open_disk(path, writable=True) as disk:
        disk.resize(new_size)


# ----------------------------------------------------------------------------------- check
def check(path: str | os.PathLike[str]) -> None:
    """Raise :class:`VhdxError` naming the first problem in the file or its parent chain."""
    p = Path(path)
    _check_no_loop(p)
    _check_chain(p, [Path(os.path.realpath(p))])


def _check_no_loop(path: Path) -> None:
    """Follow the locators alone first: a loop is reported before any linkage problem."""
    chain = [Path(os.path.realpath(path))]
    current = path
    while True:
        with open_layer(current) as disk:
            if not disk.is_differencing:
                return
            parent = _find_parent(disk)
        real = Path(os.path.realpath(parent))
        if real in chain:
            loop = " -> ".join(str(c) for c in [*chain, real])
            raise VhdxError(f"parent chain loops: {loop}", path=path)
        if len(chain) >= MAX_CHAIN_DEPTH:
            raise VhdxError(f"parent chain is deeper than {MAX_CHAIN_DEPTH}", path=path)
        chain.append(real)
        current = parent


def _check_chain(path: Path, chain: list[Path]) -> None:
    with open_layer(path) as disk:
        _check_file(disk)
        if not disk.is_differencing:
            return
        parent_path = _find_parent(disk)
        real = Path(os.path.realpath(parent_path))
        if real in chain:
            loop = " -> ".join(str(c) for c in [*chain, real])
            raise VhdxError(f"parent chain loops: {loop}", path=path)
        if len(chain) >= MAX_CHAIN_DEPTH:
            raise VhdxError(f"parent chain is deeper than {MAX_CHAIN_DEPTH}", path=path)
        with open_layer(parent_path) as parent:
            status = disk.linkage_status(parent)
            if status != "ok":
                raise ParentLinkageError(f"parent {parent_path}: {status}", path=path)
            if parent.logical_sector_size != disk.logical_sector_size:
                raise VhdxError(
                    f"parent {parent_path} has a different logical sector size", path=path
                )
    _check_chain(parent_path, [*chain, real])


def _find_parent(disk: VhdxDisk) -> Path:
    locator = disk.metadata.parent_locator
    assert locator is not None
    candidates = parent_candidates(disk.path, locator.entries)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates) or "no usable locator path"
    raise ParentNotFoundError(f"parent disk not found (tried {tried})", path=disk.path)


def _check_file(disk: VhdxDisk) -> None:
    if not all(disk.region_table_valid):
        bad = 1 if not disk.region_table_valid[0] else 2
        raise VhdxError(f"region table {bad} is damaged (the other copy is intact)", path=disk.path)
    tables = [disk.read_file(off, 64 * 1024) for off in (192 * 1024, 256 * 1024)]
    if tables[0] != tables[1]:
        raise VhdxError("the two region tables differ", path=disk.path)
    geom = disk.geometry
    file_size = disk.file_size
    units = -(-file_size // REGION_ALIGNMENT)
    # Owner of every MiB of the file: -1 free, -2 header section or a region, else a BAT index.
    owner = array.array("i", [-1]) * units
    reserved = [(0, HEADER_SECTION_SIZE), *((s, n) for s, n, _ in disk.reserved_spans)]
    for start, length in reserved:
        for unit in range(start // MiB, min(units, (start + length) // MiB)):
            owner[unit] = -2
    bat_base = disk.bat_region.file_offset
    per_chunk = geom.chunk_ratio + 1
    chunk_has_bitmap: set[int] = set()
    partial: list[int] = []
    for index, entry in disk.iter_bat():  # zero entries (not present) need no check
        where = bat_base + index * BAT_ENTRY_SIZE
        state = entry & 7
        if entry & BAT_RESERVED_MASK:
            raise VhdxError(
                f"BAT entry {index} has reserved bits set", path=disk.path, offset=where
            )
        if index % per_chunk == per_chunk - 1:
            if state not in (SB_BLOCK_NOT_PRESENT, SB_BLOCK_PRESENT):
                raise VhdxError(
                    f"BAT entry {index} has invalid sector bitmap state {state}",
                    path=disk.path,
                    offset=where,
                )
            if state == SB_BLOCK_PRESENT:
                chunk_has_bitmap.add(index // per_chunk)
                _claim(disk, owner, index, bat_offset(entry), SECTOR_BITMAP_BLOCK_SIZE)
            continue
        if state not in PAYLOAD_STATES:
            raise VhdxError(
                f"BAT entry {index} has invalid payload state {state}", path=disk.path, offset=where
            )
        if state in (PAYLOAD_BLOCK_FULLY_PRESENT, PAYLOAD_BLOCK_PARTIALLY_PRESENT):
            if state == PAYLOAD_BLOCK_PARTIALLY_PRESENT:
                if not disk.is_differencing:
                    raise VhdxError(
                        f"BAT entry {index} is partially present in a disk without a parent",
                        path=disk.path,
                        offset=where,
                    )
                partial.append(index)
            _claim(disk, owner, index, bat_offset(entry), disk.block_size)
    for index in partial:
        if index // per_chunk not in chunk_has_bitmap:
            raise VhdxError(
                f"BAT entry {index} is partially present but its chunk has no sector bitmap",
                path=disk.path,
                offset=bat_base + index * BAT_ENTRY_SIZE,
            )


def _claim(disk: VhdxDisk, owner: array.array[int], index: int, offset: int, length: int) -> None:
    disk.check_block_location(index, offset, length)
    for unit in range(offset // MiB, (offset + length) // MiB):
        other = owner[unit]
        if other != -1:
            what = "a region" if other == -2 else f"the block of BAT entry {other}"
            raise VhdxError(
                f"BAT entry {index} overlaps {what}",
                path=disk.path,
                offset=disk.bat_region.file_offset + index * BAT_ENTRY_SIZE,
            )
        owner[unit] = index


# ----------------------------------------------------------------------------------- info
def info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON-serialisable description of the disk and its parent chain."""
    p = Path(path)
    with open_layer(p) as disk:
        result = _describe(disk)
        chain: list[dict[str, Any]] = [
            _chain_item(disk, "base" if not disk.is_differencing else None)
        ]
        result["parent"] = None
        if disk.is_differencing:
            locator = disk.metadata.parent_locator
            assert locator is not None
            result["parent"] = {
                "linkage": locator.entries.get(KEY_PARENT_LINKAGE),
                "relative_path": locator.entries.get(KEY_RELATIVE_PATH),
                "absolute_path": locator.entries.get(KEY_ABSOLUTE_WIN32_PATH),
                "locator": dict(locator.entries),
            }
            _walk_chain(disk, chain, [Path(os.path.realpath(p))])
            result["parent"]["resolved_path"] = chain[1]["path"] if len(chain) > 1 else None
            result["parent"]["linkage_status"] = chain[0]["linkage_status"]
    result["chain"] = chain
    return result


def _describe(disk: VhdxDisk) -> dict[str, Any]:
    kind = "differencing" if disk.is_differencing else "fixed" if disk.is_fixed else "dynamic"
    counts = {name.replace(" ", "_"): 0 for name in PAYLOAD_STATES.values()}
    bitmaps = 0
    geom = disk.geometry
    for index, entry in disk.iter_bat():
        if geom.is_bitmap_index(index):
            bitmaps += bat_state(entry) == SB_BLOCK_PRESENT
            continue
        if geom.block_of_index(index) >= geom.data_blocks:
            continue  # padding entries of the last chunk of a differencing disk
        name = PAYLOAD_STATES.get(bat_state(entry))
        if name is not None:
            counts[name.replace(" ", "_")] += 1
    # iter_bat skips zero entries: every payload block not counted is "not present".
    counts["not_present"] += geom.data_blocks - sum(counts.values())
    st = os.stat(disk.path)
    header = disk.header
    return {
        "path": str(disk.path),
        "format": "vhdx",
        "type": kind,
        "virtual_size": disk.virtual_size,
        "block_size": disk.block_size,
        "logical_sector_size": disk.logical_sector_size,
        "physical_sector_size": disk.physical_sector_size,
        "leave_blocks_allocated": disk.metadata.leave_blocks_allocated,
        "file_size": st.st_size,
        "allocated_bytes": st.st_blocks * 512,
        "creator": disk.creator,
        "virtual_disk_id": str(disk.virtual_disk_id),
        "data_write_guid": str(disk.data_write_guid),
        "file_write_guid": str(disk.file_write_guid),
        "header_sequence_number": header.sequence_number,
        "headers_valid": list(disk.header_valid),
        "region_tables_valid": list(disk.region_table_valid),
        "log_replay_pending": header.log_guid != ZERO_GUID,
        "log_entries_replayed": disk.replayed_log.entry_count if disk.replayed_log else 0,
        "blocks": {"total": geom.data_blocks, **counts, "sector_bitmaps": bitmaps},
    }


def _chain_item(disk: VhdxDisk, status: str | None) -> dict[str, Any]:
    kind = "differencing" if disk.is_differencing else "fixed" if disk.is_fixed else "dynamic"
    return {
        "path": str(disk.path),
        "type": kind,
        "virtual_size": disk.virtual_size,
        "data_write_guid": str(disk.data_write_guid),
        "linkage_status": status,
    }


def _walk_chain(child: VhdxDisk, chain: list[dict[str, Any]], seen: list[Path]) -> None:
    """Append each ancestor of ``child`` to ``chain``; set each item's linkage_status."""
    item = chain[-1]
    try:
        parent_path = _find_parent(child)
    except ParentNotFoundError as err:
        item["linkage_status"] = f"missing: {err.message}"
        return
    real = Path(os.path.realpath(parent_path))
    if real in seen or len(seen) >= MAX_CHAIN_DEPTH:
        item["linkage_status"] = f"loop: {parent_path} is already in the chain"
        return
    try:
        with open_layer(parent_path) as parent:
            status = child.linkage_status(parent)
            item["linkage_status"] = "ok" if status == "ok" else "mismatch: " + status
            chain.append(_chain_item(parent, None if parent.is_differencing else "base"))
            if parent.is_differencing:
                _walk_chain(parent, chain, [*seen, real])
    except VhdxError as err:
        item["linkage_status"] = f"unreadable parent {parent_path}: {err}"


# ----------------------------------------------------------------------------------- raw I/O
def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def export_raw(path: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> None:
    """Write the virtual disk to a sparse raw file (replacing ``out_path`` if it exists)."""
    out = Path(out_path)
    directory = out.parent if str(out.parent) else Path(".")
    with open_disk(path) as disk:
        tmp = directory / f".{out.name}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        try:
            try:
                os.ftruncate(fd, disk.size)
                _export_blocks(disk, fd)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, out)
        finally:
            if tmp.exists():
                tmp.unlink()
    _fsync_dir(directory)


def _export_blocks(disk: VhdxDisk, fd: int) -> None:
    bs = disk.block_size
    for block in range(disk.geometry.data_blocks):
        state, _ = disk.payload(block)
        from_parent = state == PAYLOAD_BLOCK_NOT_PRESENT and disk.parent is not None
        if state not in (PAYLOAD_BLOCK_FULLY_PRESENT, PAYLOAD_BLOCK_PARTIALLY_PRESENT) and not (
            from_parent
        ):
            continue  # reads as zeros: leave a hole
        start = block * bs
        end = min(start + bs, disk.size)
        for pos in range(start, end, _IO_CHUNK):
            n = min(_IO_CHUNK, end - pos)
            data = disk.read_at(pos, n)
            if data != _ZEROS[:n]:
                os.pwrite(fd, data, pos)


def import_raw(
    raw_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    block_size: int = 1 << 20,
) -> None:
    """Make a dynamic VHDX holding the raw file's bytes, allocating only non-zero blocks.

    The virtual size is the raw size rounded up to 512 bytes (the logical sector size).
    """
    raw = Path(raw_path)
    src = open_regular_file(raw, False)
    try:
        raw_size = os.fstat(src).st_size
        if raw_size == 0:
            raise UsageError("raw image is empty", path=raw)
        virtual_size = align_up(raw_size, 512)
        check_parameters(virtual_size, block_size, 512, 4096)
        if Path(out_path).exists():
            raise AlreadyExistsError("file already exists", path=out_path)
        geometry = Geometry(virtual_size, block_size, 512, False)

        def fill(fd: int) -> Any:
            data_offset = BAT_OFFSET + geometry.bat_region_length
            bat = bytearray(geometry.bat_bytes)
            end = _import_blocks(src, raw_size, fd, geometry, bat, data_offset)
            new = layout(geometry, bat=bytes(bat))
            new.file_size = max(end, new.file_size)
            return new

        write_new_file(out_path, fill)
    finally:
        os.close(src)


def _next_data(fd: int, offset: int, size: int) -> int:
    """Offset of the next non-hole byte at or after ``offset`` (``size`` if none)."""
    try:
        return os.lseek(fd, offset, os.SEEK_DATA)
    except OSError:  # ENXIO: only a hole remains; EINVAL: no SEEK_DATA support
        return size if offset < size else offset


def _import_blocks(
    src: int, raw_size: int, fd: int, geometry: Geometry, bat: bytearray, data_offset: int
) -> int:
    bs = geometry.block_size
    next_free = data_offset
    for block in range(geometry.data_blocks):
        start = block * bs
        end = min(start + bs, raw_size)
        if _next_data(src, start, raw_size) >= end:
            continue
        placed = -1
        for pos in range(start, end, _IO_CHUNK):
            n = min(_IO_CHUNK, end - pos)
            data = os.pread(src, n, pos)
            if data == _ZEROS[: len(data)]:
                continue
            if placed < 0:
                placed = next_free
                next_free += bs
                at = geometry.payload_index(block) * BAT_ENTRY_SIZE
                entry = bat_entry(PAYLOAD_BLOCK_FULLY_PRESENT, placed)
                bat[at : at + BAT_ENTRY_SIZE] = entry.to_bytes(BAT_ENTRY_SIZE, "little")
            os.pwrite(fd, data, placed + pos - start)
    return next_free
