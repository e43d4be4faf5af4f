"""Creating VHDX files: dynamic, fixed and differencing ([MS-VHDX] 2.1, 2.2, 2.5, 2.6).

The layout follows the disks Windows 10 creates: header section (1 MiB), log at 1 MiB (1 MiB),
metadata region at 2 MiB (1 MiB: table, then the items from 64 KiB), BAT region at 3 MiB (a
multiple of 1 MiB), payload blocks after it.  Only non-zero structures are written; the file is
extended with ftruncate, so it stays sparse (a fixed disk's blocks are holes too: allocated in
the BAT, not on the host).

A new file is written under a temporary name in the target directory, fsynced, then linked to
its name (never replacing an existing file) and the directory fsynced.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import cimsnap
from cimsnap.errors import AlreadyExistsError, UsageError
from cimsnap.formats.vhdx.disk import open_disk
from cimsnap.formats.vhdx.geometry import Geometry, align_up
from cimsnap.formats.vhdx.structs import (
    BAT_ENTRY_SIZE,
    BAT_REGION_GUID,
    FILE_PARAMETERS,
    FILE_PARAMETERS_GUID,
    FP_HAS_PARENT,
    FP_LEAVE_BLOCKS_ALLOCATED,
    HEADER_OFFSETS,
    KEY_ABSOLUTE_WIN32_PATH,
    KEY_PARENT_LINKAGE,
    KEY_RELATIVE_PATH,
    LOGICAL_SECTOR_SIZE_GUID,
    MAX_BLOCK_SIZE,
    MAX_VIRTUAL_DISK_SIZE,
    META_IS_REQUIRED,
    META_IS_VIRTUAL_DISK,
    METADATA_REGION_GUID,
    METADATA_TABLE_SIZE,
    MIN_BLOCK_SIZE,
    PARENT_LOCATOR_GUID,
    PAYLOAD_BLOCK_FULLY_PRESENT,
    PHYSICAL_SECTOR_SIZE_GUID,
    REGION_TABLE_OFFSETS,
    SB_BLOCK_PRESENT,
    SECTOR_BITMAP_BLOCK_SIZE,
    SECTOR_SIZE_ITEM,
    SECTOR_SIZES,
    VIRTUAL_DISK_ID_GUID,
    VIRTUAL_DISK_SIZE,
    VIRTUAL_DISK_SIZE_GUID,
    ZERO_GUID,
    FileIdentifier,
    Header,
    MetadataEntry,
    MetadataTable,
    MiB,
    ParentLocator,
    RegionEntry,
    RegionTable,
    bat_entry,
    format_linkage,
)

LOG_OFFSET = 1 * MiB
LOG_LENGTH = 1 * MiB
METADATA_OFFSET = 2 * MiB
METADATA_LENGTH = 1 * MiB
BAT_OFFSET = 3 * MiB
CREATOR = f"cimsnap {cimsnap.__version__}"


@dataclass
class NewFile:
    """The bytes of a new VHDX file: (offset, data) pieces, and its size."""

    pieces: list[tuple[int, bytes]]
    file_size: int
    data_offset: int  # first payload block
    geometry: Geometry


def layout(
    geometry: Geometry,
    *,
    fixed: bool = False,
    physical_sector_size: int = 4096,
    locator: ParentLocator | None = None,
    disk_id: uuid.UUID | None = None,
    bat: bytes | None = None,
    bitmap_chunks: Iterable[int] = (),
) -> NewFile:
    """Every structure of a new file; ``bat`` (if given) replaces the computed BAT."""
    bat_length = geometry.bat_region_length
    data_offset = BAT_OFFSET + bat_length
    pieces: list[tuple[int, bytes]] = [(0, FileIdentifier(CREATOR).pack())]
    file_guid, data_guid = uuid.uuid4(), uuid.uuid4()
    for seq, off in enumerate(HEADER_OFFSETS, start=1):
        header = Header(seq, file_guid, data_guid, ZERO_GUID, LOG_LENGTH, LOG_OFFSET)
        pieces.append((off, header.pack()))
    table = RegionTable(
        [
            RegionEntry(BAT_REGION_GUID, BAT_OFFSET, bat_length, True),
            RegionEntry(METADATA_REGION_GUID, METADATA_OFFSET, METADATA_LENGTH, True),
        ]
    ).pack()
    used = 16 + 32 * 2  # the table header and its two entries; the rest is zero
    for off in REGION_TABLE_OFFSETS:
        pieces.append((off, table[:used]))

    flags = 0
    if fixed:
        flags |= FP_LEAVE_BLOCKS_ALLOCATED
    if locator is not None:
        flags |= FP_HAS_PARENT
    items: list[tuple[uuid.UUID, int, bytes]] = [
        (FILE_PARAMETERS_GUID, META_IS_REQUIRED, FILE_PARAMETERS.pack(geometry.block_size, flags)),
        (
            VIRTUAL_DISK_SIZE_GUID,
            META_IS_REQUIRED | META_IS_VIRTUAL_DISK,
            VIRTUAL_DISK_SIZE.pack(geometry.virtual_size),
        ),
        (
            LOGICAL_SECTOR_SIZE_GUID,
            META_IS_REQUIRED | META_IS_VIRTUAL_DISK,
            SECTOR_SIZE_ITEM.pack(geometry.logical_sector_size),
        ),
        (
            PHYSICAL_SECTOR_SIZE_GUID,
            META_IS_REQUIRED | META_IS_VIRTUAL_DISK,
            SECTOR_SIZE_ITEM.pack(physical_sector_size),
        ),
        (
            VIRTUAL_DISK_ID_GUID,
            META_IS_REQUIRED | META_IS_VIRTUAL_DISK,
            (disk_id or uuid.uuid4()).bytes_le,
        ),
    ]
    if locator is not None:
        items.append((PARENT_LOCATOR_GUID, META_IS_REQUIRED, locator.pack()))
    entries = []
    blob = bytearray()
    for guid, item_flags, data in items:
        entries.append(MetadataEntry(guid, METADATA_TABLE_SIZE + len(blob), len(data), item_flags))
        blob += data
        blob += bytes(align_up(len(blob), 8) - len(blob))
    pieces.append((METADATA_OFFSET, MetadataTable(entries).pack()))
    pieces.append((METADATA_OFFSET + METADATA_TABLE_SIZE, bytes(blob)))

    file_size = data_offset
    if bat is None and fixed:
        bat_buf = bytearray(geometry.bat_bytes)
        for block in range(geometry.data_blocks):
            entry = bat_entry(
                PAYLOAD_BLOCK_FULLY_PRESENT, data_offset + block * geometry.block_size
            )
            at = geometry.payload_index(block) * BAT_ENTRY_SIZE
            bat_buf[at : at + BAT_ENTRY_SIZE] = entry.to_bytes(BAT_ENTRY_SIZE, "little")
        bat = bytes(bat_buf)
        file_size = data_offset + geometry.data_blocks * geometry.block_size
    if bat is not None and any(bat):
        pieces.append((BAT_OFFSET, bat))
    elif bat is None and bitmap_chunks:
        file_size = _preallocate_sector_bitmaps(geometry, data_offset, pieces, bitmap_chunks)
    return NewFile(pieces, file_size, data_offset, geometry)


def _preallocate_sector_bitmaps(
    geometry: Geometry,
    data_offset: int,
    pieces: list[tuple[int, bytes]],
    chunks: Iterable[int],
) -> int:
    """Give ``chunks`` of a new differencing disk their (all-zero, so sparse) sector bitmaps.

    An all-zero bitmap means "every sector comes from the parent", exactly what an absent bitmap
    means, so this changes no content.  It exists for interoperability: libvhdi
    (libvhdi_block_allocation_table.c) reads a chunk's bitmap at file offset 0 when the chunk has
    no bitmap block, and so misreads untouched blocks of a fresh child whose parent has data
    there.  Only chunks over parent data need one (elsewhere libvhdi's zeros are right), which
    keeps a child of a 1 TiB blank template as small as one of 10 GiB.  The blocks are never
    written, so they cost file length but no stored bytes.  Returns the new file size.
    """
    offset = data_offset
    for chunk in sorted(chunks):
        entry = bat_entry(SB_BLOCK_PRESENT, offset)
        at = BAT_OFFSET + geometry.bitmap_index(chunk) * BAT_ENTRY_SIZE
        pieces.append((at, entry.to_bytes(BAT_ENTRY_SIZE, "little")))
        offset += SECTOR_BITMAP_BLOCK_SIZE
    return offset


def check_parameters(
    size: int, block_size: int, logical_sector_size: int, physical_sector_size: int
) -> None:
    """UsageError unless the parameters make a valid VHDX disk."""
    if logical_sector_size not in SECTOR_SIZES:
        raise UsageError(f"logical sector size must be 512 or 4096, not {logical_sector_size}")
    if physical_sector_size not in SECTOR_SIZES:
        raise UsageError(f"physical sector size must be 512 or 4096, not {physical_sector_size}")
    if block_size < MIN_BLOCK_SIZE or block_size > MAX_BLOCK_SIZE or block_size & (block_size - 1):
        raise UsageError(
            f"block size must be a power of two from 1 MiB to 256 MiB, not {block_size}"
        )
    if size <= 0 or size > MAX_VIRTUAL_DISK_SIZE:
        raise UsageError(f"size must be between 1 byte and 64 TiB, not {size}")
    if size % logical_sector_size:
        raise UsageError(
            f"size {size} is not a multiple of the logical sector size {logical_sector_size}"
        )


def write_new_file(
    path: str | os.PathLike[str], fill: Callable[[int], NewFile], *, durable: bool = True
) -> None:
    """Create ``path`` crash-safely: ``fill(fd)`` writes any payload and returns the layout.

    The file appears under its name complete or not at all.  ``durable=False`` skips the two
    fsyncs (file, then directory): a power loss may then lose the new file, never tear it.
    """
    target = Path(path)
    if target.exists():
        raise AlreadyExistsError("file already exists", path=target)
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise UsageError(f"directory {directory} does not exist", path=target)
    tmp = directory / f".{target.name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        try:
            new = fill(fd)
            for off, data in new.pieces:
                os.pwrite(fd, data, off)
            if os.fstat(fd).st_size < new.file_size:
                os.ftruncate(fd, new.file_size)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, target)
        except FileExistsError:
            raise AlreadyExistsError("file already exists", path=target) from None
        except OSError:
            # A filesystem without hard links: rename, having checked above that nothing is there.
            os.rename(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    if not durable:
        return
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def create(
    path: str | os.PathLike[str],
    size: int,
    *,
    block_size: int = 1 << 20,
    logical_sector_size: int = 512,
    physical_sector_size: int = 4096,
    fixed: bool = False,
    durable: bool = True,
) -> None:
    """Create a dynamic (or ``fixed``) VHDX of ``size`` bytes; refuses to replace a file.

    ``durable=False`` skips the fsyncs (see :func:`write_new_file`).
    """
    check_parameters(size, block_size, logical_sector_size, physical_sector_size)
    geometry = Geometry(size, block_size, logical_sector_size, False)
    new = layout(geometry, fixed=fixed, physical_sector_size=physical_sector_size)
    write_new_file(path, lambda fd: new, durable=durable)


def windows_relative_path(child: Path, parent: Path) -> str:
    """Parent path relative to the child's directory, Windows style (``.\\p.vhdx``)."""
    rel = os.path.relpath(os.path.abspath(parent), os.path.dirname(os.path.abspath(child)))
    text = rel.replace("/", "\\")
    return text if text.startswith("..") else ".\\" + text


def create_differencing(
    path: str | os.PathLike[str],
    parent_path: str | os.PathLike[str],
    *,
    block_size: int | None = None,
    durable: bool = True,
) -> None:
    """Create a differencing VHDX whose parent is ``parent_path`` (linked by DataWriteGuid).

    ``durable=False`` skips the two fsyncs (file and directory) that dominate its cost: the new
    file still appears complete or not at all, but a power loss may lose it.

    The locator holds ``parent_linkage`` (the parent's current DataWriteGuid, ``{GUID}``),
    ``relative_path`` (from the child's directory, Windows style) and ``absolute_win32_path``.
    On Linux there is no Win32 path for a host file, so ``absolute_win32_path`` holds the host's
    absolute POSIX path; readers that resolve it as a path (this engine, dissect.hypervisor)
    find the parent by it when the relative path does not resolve (a child copied elsewhere).
    """
    child = Path(path)
    parent = Path(parent_path)
    with open_disk(parent) as p:
        bs = p.block_size if block_size is None else block_size
        check_parameters(p.virtual_size, bs, p.logical_sector_size, p.physical_sector_size)
        geometry = Geometry(p.virtual_size, bs, p.logical_sector_size, True)
        locator = ParentLocator(
            {
                KEY_PARENT_LINKAGE: format_linkage(p.data_write_guid),
                KEY_RELATIVE_PATH: windows_relative_path(child, parent),
                KEY_ABSOLUTE_WIN32_PATH: os.path.abspath(parent),
            }
        )
        new = layout(
            geometry,
            physical_sector_size=p.physical_sector_size,
            locator=locator,
            bitmap_chunks=[c for c in p.chunks_with_data() if c < geometry.bitmap_blocks],
        )
    write_new_file(child, lambda fd: new, durable=durable)
