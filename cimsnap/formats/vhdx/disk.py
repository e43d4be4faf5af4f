"""Opening, reading and writing VHDX disks ([MS-VHDX] v1.0): VhdxDisk and open_disk().

Opening validates, in this order: the file type identifier (2.2.1); both headers, using the
valid one with the higher sequence number (2.2.2); the log, replayed when the current header's
LogGuid is not zero (2.3.3; in memory for a read-only open, in place for a writable one); the
region tables, using table 1 unless it is damaged (2.2.3); the metadata table and the system
metadata items (2.6); the BAT region's size against the geometry (2.5); and for a differencing
disk the parent chain, resolved from the child's own directory + ``relative_path`` first, then
``absolute_win32_path``, with the parent's DataWriteGuid matched against ``parent_linkage``.

Reads follow the BAT: fully present blocks come from this file, partially present blocks (only
in differencing disks) through the sector bitmap, not-present blocks from the parent (zeros when
there is none, and beyond the parent's end), and zero/unmapped/undefined blocks read as zeros.

Crash safety of writes (why an interrupted write leaves every block old or new):

* A write session starts on the first modification: an empty log entry with a new LogGuid is
  written and fsynced, then the non-current header is rewritten with a higher sequence number,
  new FileWriteGuid and DataWriteGuid and that LogGuid, and fsynced (headers are the one
  structure that cannot go through the log; two copies with sequence numbers make the switch
  atomic).
* Data for a block that is not yet allocated is written into fresh space past the end of the
  file, which no BAT entry references; sectors of a partially present block are written before
  their bitmap bits are set.  Until the metadata commit, readers still see the old contents.
* A metadata commit (BAT entries, sector bitmap bits, region tables, virtual size) fsyncs the
  data, writes a log entry holding the new 4 KiB metadata pages and fsyncs it, then writes the
  same pages in place.  A crash before the log entry is durable loses the commit (old contents);
  after it, opening the file replays the entry (new contents).
* Closing fsyncs and rewrites the other header with LogGuid zero.

Writes to blocks already fully present go straight to their place in the file, with no
metadata: like any disk, such a sector is old or new after a crash, and ``flush()`` is the
durability barrier.  A disk opened with ``durable=False`` issues the same writes in the same
order but without the fsyncs between them (a killed process still leaves a consistent file, a
power loss before ``flush()``/``close()`` may not).  A disk object is safe to share between
threads (one lock per file).
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import itertools
import os
import stat
import struct
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cimsnap.errors import UsageError
from cimsnap.formats.vhdx.errors import ParentLinkageError, ParentNotFoundError, VhdxError
from cimsnap.formats.vhdx.fileio import FileIO
from cimsnap.formats.vhdx.geometry import Geometry, align_up
from cimsnap.formats.vhdx.log import MAX_SCANNED_LOG_LENGTH, LogWriter, ReplayPlan
from cimsnap.formats.vhdx.log import find_active_sequence as _find_active_sequence
from cimsnap.formats.vhdx.structs import (
    BAT_ENTRY_SIZE,
    BAT_REGION_GUID,
    FILE_PARAMETERS,
    FILE_PARAMETERS_GUID,
    FILE_SIGNATURE,
    FP_HAS_PARENT,
    FP_LEAVE_BLOCKS_ALLOCATED,
    HEADER_OFFSETS,
    HEADER_SECTION_SIZE,
    HEADER_SIZE,
    KEY_ABSOLUTE_WIN32_PATH,
    KEY_PARENT_LINKAGE,
    KEY_PARENT_LINKAGE2,
    KEY_RELATIVE_PATH,
    LOG_SECTOR_SIZE,
    LOGICAL_SECTOR_SIZE_GUID,
    MAX_BLOCK_SIZE,
    MAX_METADATA_ITEM_SIZE,
    MAX_VIRTUAL_DISK_SIZE,
    METADATA_REGION_GUID,
    METADATA_TABLE_SIZE,
    MIN_BLOCK_SIZE,
    PARENT_LOCATOR_GUID,
    PAYLOAD_BLOCK_FULLY_PRESENT,
    PAYLOAD_BLOCK_NOT_PRESENT,
    PAYLOAD_BLOCK_PARTIALLY_PRESENT,
    PAYLOAD_BLOCK_UNDEFINED,
    PAYLOAD_BLOCK_UNMAPPED,
    PAYLOAD_BLOCK_ZERO,
    PHYSICAL_SECTOR_SIZE_GUID,
    REGION_ALIGNMENT,
    REGION_TABLE_OFFSETS,
    REGION_TABLE_SIZE,
    SB_BLOCK_NOT_PRESENT,
    SB_BLOCK_PRESENT,
    SECTOR_BITMAP_BLOCK_SIZE,
    SECTOR_SIZE_ITEM,
    SECTOR_SIZES,
    SECTORS_PER_CHUNK,
    VHDX_PARENT_LOCATOR_TYPE,
    VIRTUAL_DISK_ID_GUID,
    VIRTUAL_DISK_ID_SIZE,
    VIRTUAL_DISK_SIZE,
    VIRTUAL_DISK_SIZE_GUID,
    ZERO_GUID,
    FileIdentifier,
    Header,
    MetadataTable,
    ParentLocator,
    RegionEntry,
    RegionTable,
    bat_entry,
    bat_offset,
    bat_state,
    guid_from,
    parse_linkage,
)

# Deepest parent chain followed; deeper chains (or loops) are refused.  Our choice.
MAX_CHAIN_DEPTH = 256
# BAT entries are read in chunks of this many bytes and at most this many chunks are cached,
# so memory stays bounded whatever the disk size (64 KiB = 8192 entries = 8 GiB at 1 MiB blocks).
BAT_CHUNK_BYTES = 64 * 1024
BAT_CACHE_CHUNKS = 256
_PAGE = LOG_SECTOR_SIZE
_SYSTEM_ITEM_SIZES = {
    FILE_PARAMETERS_GUID: FILE_PARAMETERS.size,
    VIRTUAL_DISK_SIZE_GUID: VIRTUAL_DISK_SIZE.size,
    VIRTUAL_DISK_ID_GUID: VIRTUAL_DISK_ID_SIZE,
    LOGICAL_SECTOR_SIZE_GUID: SECTOR_SIZE_ITEM.size,
    PHYSICAL_SECTOR_SIZE_GUID: SECTOR_SIZE_ITEM.size,
}
_ZERO_STATES = (PAYLOAD_BLOCK_UNDEFINED, PAYLOAD_BLOCK_ZERO, PAYLOAD_BLOCK_UNMAPPED)
_VALID_PAYLOAD_STATES = (
    PAYLOAD_BLOCK_NOT_PRESENT,
    *_ZERO_STATES,
    PAYLOAD_BLOCK_FULLY_PRESENT,
    PAYLOAD_BLOCK_PARTIALLY_PRESENT,
)
_U64 = struct.Struct("<Q")


@dataclass
class Metadata:
    """The system metadata items of one file (2.6.2)."""

    table: MetadataTable
    block_size: int
    leave_blocks_allocated: bool
    has_parent: bool
    virtual_size: int
    virtual_disk_id: uuid.UUID
    logical_sector_size: int
    physical_sector_size: int
    parent_locator: ParentLocator | None
    virtual_size_file_offset: int


@dataclass
class _Txn:
    """Metadata changes of one write, applied by :meth:`VhdxDisk._commit`."""

    bat: dict[int, int] = dataclasses.field(default_factory=dict)
    pages: dict[int, bytearray] = dataclasses.field(default_factory=dict)
    bat_pages: set[int] = dataclasses.field(default_factory=set)

    def set_bat(self, index: int, value: int) -> None:
        self.bat[index] = value
        self.bat_pages.add(index * BAT_ENTRY_SIZE // _PAGE)

    def page_count(self) -> int:
        return len(self.bat_pages) + len(self.pages)


def _full_mask(bits: int) -> int:
    return (1 << bits) - 1


def _range_mask(start: int, stop: int) -> int:
    return _full_mask(stop - start) << start


def _runs(bits: int, start: int, stop: int) -> Iterator[tuple[bool, int, int]]:
    """Maximal runs of equal bits of ``bits`` in [start, stop): (is_set, run_start, run_stop)."""
    pos = start
    while pos < stop:
        rest = bits >> pos
        present = bool(rest & 1)
        probe = ~rest if present else rest  # lowest set bit of probe ends the run
        if probe == 0:
            end = stop
        else:
            end = min(stop, pos + (probe & -probe).bit_length() - 1)
        yield present, pos, end
        pos = end


def _windows_relative_to_posix(text: str) -> str:
    return text.replace("\\", "/")


def parent_candidates(child_path: Path, locator: dict[str, str]) -> list[Path]:
    """Where a child's parent may be, in the order they are tried.

    ``relative_path`` is resolved against the child's own directory first, so a chain that was
    moved (or copied together) keeps working; ``absolute_win32_path`` comes second.  This engine
    writes the host's absolute path (a POSIX path on Linux) there; a Windows drive path
    (``C:\\...``) cannot name a file on this host and is skipped.  ``volume_path`` names a Windows
    volume GUID path and is never usable here.
    """
    candidates: list[Path] = []
    child_dir = Path(os.path.abspath(child_path)).parent
    rel = locator.get(KEY_RELATIVE_PATH)
    if rel:
        candidates.append(child_dir / _windows_relative_to_posix(rel))
    absolute = locator.get(KEY_ABSOLUTE_WIN32_PATH)
    if absolute:
        has_drive = len(absolute) >= 2 and absolute[1] == ":"
        if not has_drive and not absolute.startswith("\\\\"):
            path = Path(_windows_relative_to_posix(absolute))
            if path.is_absolute():
                candidates.append(path)
    return candidates


class VhdxDisk:
    """One VHDX file (and, for a differencing disk, its open parent chain) as a block device.

    Use :func:`open_disk` to get one.  ``size`` is the virtual size; ``read_at``/``write_at``
    take any byte range inside it.
    """

    def __init__(self, path: Path, *, writable: bool, durable: bool = True) -> None:
        # Everything is set up by _open(); attributes are declared here for readers and mypy.
        self.path = path
        self.writable = writable
        self.durable = durable
        self.parent: VhdxDisk | None = None
        self.parent_path: Path | None = None
        self._lock = threading.RLock()
        self._fd = -1
        self._io: FileIO
        self.creator = ""
        self._header: Header
        self._header_slot = 0
        self.header_valid: tuple[bool, bool] = (False, False)
        self.region_table_valid: tuple[bool, bool] = (False, False)
        self.region_table: RegionTable
        self.bat_region: RegionEntry
        self.metadata_region: RegionEntry
        self.metadata: Metadata
        self.geometry: Geometry
        self.replayed_log: ReplayPlan | None = None
        self._overlay: dict[int, bytes] = {}
        self._file_size = 0  # logical size (the log may extend it)
        self._alloc_end = 0
        self._bat_chunks: dict[int, bytes] = {}
        self._log: LogWriter | None = None
        self.reserved_spans: list[tuple[int, int, str]] = []  # regions and log: no blocks here
        self._closed = False

    # ----------------------------------------------------------------------------- opening
    def _open(self) -> None:
        self._fd = open_regular_file(self.path, self.writable)
        self._io = FileIO(self._fd, self.path)
        if self.writable:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise VhdxError("is open for writing elsewhere", path=self.path) from None
                raise
        self._file_size = self._io.size()
        head = self._io.pread(0, REGION_TABLE_OFFSETS[1] + REGION_TABLE_SIZE)
        if len(head) >= len(FILE_SIGNATURE) and not head.startswith(FILE_SIGNATURE):
            raise VhdxError(f"not a VHDX file (signature {head[:8]!r})", path=self.path, offset=0)
        if self._file_size < HEADER_SECTION_SIZE:
            raise VhdxError(
                f"file is truncated: {self._file_size} bytes, shorter than the 1 MiB header "
                "section",
                path=self.path,
            )
        self.creator = FileIdentifier.unpack(head).creator
        self._read_headers(head)
        self._handle_log()
        self._read_region_tables(head)
        self._read_metadata()
        self._alloc_end = self._compute_alloc_end()
        self.reserved_spans = self._compute_reserved_spans()

    def _err(self, message: str, offset: int | None = None) -> VhdxError:
        return VhdxError(message, path=self.path, offset=offset)

    def _read_headers(self, head: bytes) -> None:
        headers: list[Header | None] = []
        problems = []
        for slot, off in enumerate(HEADER_OFFSETS):
            try:
                headers.append(Header.unpack(head[off : off + HEADER_SIZE]))
            except VhdxError as err:
                headers.append(None)
                problems.append(f"header {slot + 1}: {err.message}")
        self.header_valid = (headers[0] is not None, headers[1] is not None)
        if headers[0] is None and headers[1] is None:
            raise self._err("no valid header (" + "; ".join(problems) + ")", HEADER_OFFSETS[0])
        if headers[1] is None or (
            headers[0] is not None and headers[0].sequence_number > headers[1].sequence_number
        ):
            slot = 0
        else:
            slot = 1
        header = headers[slot]
        assert header is not None
        where = HEADER_OFFSETS[slot]
        if header.version != 1:
            raise self._err(f"unsupported VHDX version {header.version}", where)
        if header.log_version != 0:
            raise self._err(f"unsupported log version {header.log_version}", where)
        if header.log_length % REGION_ALIGNMENT or header.log_offset % REGION_ALIGNMENT:
            raise self._err("log offset and length must be multiples of 1 MiB", where)
        if header.log_length and header.log_offset < HEADER_SECTION_SIZE:
            raise self._err("log overlaps the header section", where)
        if header.log_offset + header.log_length > self._file_size:
            raise self._err(
                f"log ({header.log_offset:#x}+{header.log_length:#x}) extends past the end of "
                f"the file ({self._file_size:#x}): file truncated",
                where,
            )
        self._header = header
        self._header_slot = slot

    # ----------------------------------------------------------------------------- the log
    def _handle_log(self) -> None:
        header = self._header
        if header.log_guid == ZERO_GUID:
            return
        if header.log_length == 0:
            raise self._err("header names a log (LogGuid set) but the log is empty")
        if header.log_length > MAX_SCANNED_LOG_LENGTH:
            raise self._err(
                f"log of {header.log_length} bytes is larger than this engine replays "
                f"({MAX_SCANNED_LOG_LENGTH})",
                header.log_offset,
            )
        log = self._io.pread(header.log_offset, header.log_length)
        plan = _find_active_sequence(log, header.log_guid)
        if plan is not None:
            self._validate_plan(plan)
        if self.writable:
            # [MS-VHDX] 2.2.2: FileWriteGuid changes before any modification, log replay included.
            self._write_header(dataclasses.replace(header, file_write_guid=uuid.uuid4()), sync=True)
            if plan is not None:
                self._apply_plan_in_place(plan)
            self._write_header(dataclasses.replace(self._header, log_guid=ZERO_GUID), sync=True)
        elif plan is not None:
            self._apply_plan_in_memory(plan)
        self.replayed_log = plan

    def _validate_plan(self, plan: ReplayPlan) -> None:
        header = self._header
        if plan.flushed_file_offset > self._file_size:
            raise self._err(
                f"file is truncated: its log needs at least {plan.flushed_file_offset} bytes, "
                f"the file has {self._file_size}"
            )
        if plan.last_file_offset > 2 * MAX_VIRTUAL_DISK_SIZE:
            raise self._err(f"log entry has an absurd LastFileOffset {plan.last_file_offset:#x}")
        limit = max(self._file_size, plan.last_file_offset)
        log_start, log_end = header.log_offset, header.log_offset + header.log_length
        for write in plan.writes:
            length = _PAGE if write.data is not None else write.zero_length
            start, end = write.file_offset, write.file_offset + length
            if start < REGION_TABLE_OFFSETS[0]:
                raise self._err("log entry writes into the file identifier or headers", start)
            if start < log_end and end > log_start:
                raise self._err("log entry writes into the log itself", start)
            if end > limit:
                raise self._err("log entry writes past its own LastFileOffset", start)

    def _apply_plan_in_place(self, plan: ReplayPlan) -> None:
        for write in plan.writes:
            if write.data is not None:
                self._io.pwrite(write.file_offset, write.data)
            else:
                self._write_zeros(write.file_offset, write.zero_length)
        if self._io.size() < plan.last_file_offset:
            self._io.truncate(align_up(plan.last_file_offset, REGION_ALIGNMENT))
        self._io.fsync()
        self._file_size = self._io.size()

    def _apply_plan_in_memory(self, plan: ReplayPlan) -> None:
        zero_page = bytes(_PAGE)
        for write in plan.writes:
            if write.data is not None:
                self._overlay[write.file_offset] = write.data
            else:
                for off in range(write.file_offset, write.file_offset + write.zero_length, _PAGE):
                    self._overlay[off] = zero_page
        self._file_size = max(self._file_size, plan.last_file_offset)

    def _write_zeros(self, offset: int, length: int) -> None:
        chunk = bytes(min(length, 1 << 20))
        while length > 0:
            n = min(length, len(chunk))
            self._io.pwrite(offset, chunk[:n])
            offset += n
            length -= n

    def read_file(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes of the file as the log leaves them; error past the end."""
        data = self._io.pread(offset, length)
        if len(data) < length:
            if offset + length > self._file_size:
                raise self._err(
                    f"file is truncated: {length} bytes at {offset:#x} lie past its end "
                    f"({self._file_size:#x})",
                    offset,
                )
            data += bytes(length - len(data))
        if self._overlay:
            first = offset - offset % _PAGE
            buf: bytearray | None = None
            for page in range(first, offset + length, _PAGE):
                patch = self._overlay.get(page)
                if patch is None:
                    continue
                if buf is None:
                    buf = bytearray(data)
                lo = max(page, offset)
                hi = min(page + _PAGE, offset + length)
                buf[lo - offset : hi - offset] = patch[lo - page : hi - page]
            if buf is not None:
                data = bytes(buf)
        return data

    # ----------------------------------------------------------------------------- regions
    def _read_region_tables(self, head: bytes) -> None:
        tables: list[RegionTable | None] = []
        problems = []
        for i, off in enumerate(REGION_TABLE_OFFSETS):
            raw = head[off : off + REGION_TABLE_SIZE]
            if self.replayed_log is not None:  # the log may have rewritten the tables
                raw = self.read_file(off, REGION_TABLE_SIZE)
            try:
                tables.append(RegionTable.unpack(raw))
            except VhdxError as err:
                tables.append(None)
                problems.append(f"region table {i + 1}: {err.message}")
        self.region_table_valid = (tables[0] is not None, tables[1] is not None)
        table = tables[0] if tables[0] is not None else tables[1]
        if table is None:
            raise self._err(
                "no valid region table (" + "; ".join(problems) + ")", REGION_TABLE_OFFSETS[0]
            )
        where = REGION_TABLE_OFFSETS[0] if tables[0] is not None else REGION_TABLE_OFFSETS[1]
        seen: set[uuid.UUID] = set()
        spans = []
        if self._header.log_length:
            spans.append((self._header.log_offset, self._header.log_length, "log"))
        for entry in table.entries:
            name = _region_name(entry.guid)
            if entry.guid in seen:
                raise self._err(f"region table lists the {name} region twice", where)
            seen.add(entry.guid)
            if entry.guid not in (BAT_REGION_GUID, METADATA_REGION_GUID):
                if entry.required:
                    raise self._err(f"unsupported required region {entry.guid}", where)
                continue
            if entry.file_offset % REGION_ALIGNMENT or entry.length % REGION_ALIGNMENT:
                raise self._err(f"{name} region is not aligned to 1 MiB", where)
            if entry.file_offset < HEADER_SECTION_SIZE or entry.length == 0:
                raise self._err(f"{name} region has an invalid offset or length", where)
            if entry.file_offset + entry.length > self._file_size:
                raise self._err(
                    f"{name} region ({entry.file_offset:#x}+{entry.length:#x}) extends past the "
                    f"end of the file ({self._file_size:#x}): file truncated",
                    where,
                )
            spans.append((entry.file_offset, entry.length, f"{name} region"))
        spans.sort()
        for (a_off, a_len, a_name), (b_off, _b_len, b_name) in itertools.pairwise(spans):
            if a_off + a_len > b_off:
                raise self._err(f"{a_name} overlaps the {b_name}", where)
        bat = table.find(BAT_REGION_GUID)
        meta = table.find(METADATA_REGION_GUID)
        if bat is None or meta is None:
            missing = "BAT" if bat is None else "metadata"
            raise self._err(f"region table has no {missing} region", where)
        self.region_table = table
        self.bat_region = bat
        self.metadata_region = meta

    # ----------------------------------------------------------------------------- metadata
    def _read_metadata(self) -> None:
        region = self.metadata_region
        if region.length < METADATA_TABLE_SIZE:
            raise self._err("metadata region is smaller than its table", region.file_offset)
        try:
            table = MetadataTable.unpack(self.read_file(region.file_offset, METADATA_TABLE_SIZE))
        except VhdxError as err:
            if err.path is not None:
                raise
            raise self._err(err.message, region.file_offset) from None
        items: dict[uuid.UUID, bytes] = {}
        keys: set[tuple[uuid.UUID, bool]] = set()
        spans = []
        for entry in table.entries:
            where = region.file_offset + entry.offset
            key = (entry.item_id, entry.is_user)
            if key in keys:
                raise self._err(f"metadata item {entry.item_id} is listed twice", where)
            keys.add(key)
            if entry.length > MAX_METADATA_ITEM_SIZE:
                raise self._err(f"metadata item {entry.item_id} is larger than 1 MiB", where)
            if entry.length and (
                entry.offset < METADATA_TABLE_SIZE or entry.offset + entry.length > region.length
            ):
                raise self._err(
                    f"metadata item {entry.item_id} lies outside the metadata region", where
                )
            if entry.length:
                spans.append((entry.offset, entry.length, entry.item_id))
            if entry.is_user:
                continue
            if entry.item_id in _SYSTEM_ITEM_SIZES or entry.item_id == PARENT_LOCATOR_GUID:
                items[entry.item_id] = self.read_file(where, entry.length) if entry.length else b""
            elif entry.is_required:
                raise self._err(f"unsupported required metadata item {entry.item_id}", where)
        spans.sort()
        for (a_off, a_len, a_id), (b_off, _bl, b_id) in itertools.pairwise(spans):
            if a_off + a_len > b_off:
                raise self._err(
                    f"metadata items {a_id} and {b_id} overlap", region.file_offset + b_off
                )
        for guid, size in _SYSTEM_ITEM_SIZES.items():
            if guid not in items:
                raise self._err(
                    f"required metadata item {_item_name(guid)} is missing", region.file_offset
                )
            if len(items[guid]) != size:
                raise self._err(
                    f"metadata item {_item_name(guid)} has length {len(items[guid])}, not {size}",
                    region.file_offset,
                )
        block_size, fp_flags = FILE_PARAMETERS.unpack(items[FILE_PARAMETERS_GUID])
        (virtual_size,) = VIRTUAL_DISK_SIZE.unpack(items[VIRTUAL_DISK_SIZE_GUID])
        (lss,) = SECTOR_SIZE_ITEM.unpack(items[LOGICAL_SECTOR_SIZE_GUID])
        (pss,) = SECTOR_SIZE_ITEM.unpack(items[PHYSICAL_SECTOR_SIZE_GUID])
        disk_id = guid_from(items[VIRTUAL_DISK_ID_GUID])
        if (
            block_size < MIN_BLOCK_SIZE
            or block_size > MAX_BLOCK_SIZE
            or block_size & (block_size - 1)
        ):
            raise self._err(f"invalid block size {block_size} (a power of two, 1-256 MiB)")
        if lss not in SECTOR_SIZES:
            raise self._err(f"invalid logical sector size {lss}")
        if pss not in SECTOR_SIZES:
            raise self._err(f"invalid physical sector size {pss}")
        if virtual_size == 0 or virtual_size > MAX_VIRTUAL_DISK_SIZE:
            raise self._err(f"invalid virtual disk size {virtual_size} (1 byte to 64 TiB)")
        if virtual_size % lss:
            raise self._err(
                f"virtual disk size {virtual_size} is not a multiple of the "
                f"logical sector size {lss}"
            )
        has_parent = bool(fp_flags & FP_HAS_PARENT)
        locator = None
        if has_parent:
            raw = items.get(PARENT_LOCATOR_GUID)
            if raw is None:
                raise self._err("differencing disk without a parent locator")
            try:
                locator = ParentLocator.unpack(raw)
            except VhdxError as err:
                raise self._err(err.message) from None
            if locator.locator_type != VHDX_PARENT_LOCATOR_TYPE:
                raise self._err(f"unsupported parent locator type {locator.locator_type}")
            if parse_linkage(locator.entries.get(KEY_PARENT_LINKAGE, "")) is None:
                raise self._err("parent locator has no valid parent_linkage")
        size_entry = next(
            e for e in table.entries if e.item_id == VIRTUAL_DISK_SIZE_GUID and not e.is_user
        )
        self.metadata = Metadata(
            table=table,
            block_size=block_size,
            leave_blocks_allocated=bool(fp_flags & FP_LEAVE_BLOCKS_ALLOCATED),
            has_parent=has_parent,
            virtual_size=virtual_size,
            virtual_disk_id=disk_id,
            logical_sector_size=lss,
            physical_sector_size=pss,
            parent_locator=locator,
            virtual_size_file_offset=region.file_offset + size_entry.offset,
        )
        self.geometry = Geometry(virtual_size, block_size, lss, has_parent)
        if self.geometry.bat_bytes > self.bat_region.length:
            raise self._err(
                f"BAT region ({self.bat_region.length} bytes) is too small for "
                f"{self.geometry.bat_entries} entries",
                self.bat_region.file_offset,
            )

    def _compute_alloc_end(self) -> int:
        end = max(self._file_size, HEADER_SECTION_SIZE)
        for entry in self.region_table.entries:
            end = max(end, entry.file_offset + entry.length)
        if self._header.log_length:
            end = max(end, self._header.log_offset + self._header.log_length)
        return align_up(end, REGION_ALIGNMENT)

    # ----------------------------------------------------------------------------- parent
    def _open_parent(self, chain: list[Path], check_linkage: bool) -> None:
        locator = self.metadata.parent_locator
        assert locator is not None
        candidates = parent_candidates(self.path, locator.entries)
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            tried = ", ".join(str(c) for c in candidates) or "no usable locator path"
            raise ParentNotFoundError(f"parent disk not found (tried {tried})", path=self.path)
        real = Path(os.path.realpath(found))
        if real in chain:
            loop = " -> ".join(str(p) for p in [*chain, real])
            raise VhdxError(f"parent chain loops: {loop}", path=self.path)
        if len(chain) >= MAX_CHAIN_DEPTH:
            raise VhdxError(f"parent chain is deeper than {MAX_CHAIN_DEPTH}", path=self.path)
        self.parent_path = found
        self.parent = _open_chain(
            found, writable=False, chain=[*chain, real], check_linkage=check_linkage
        )
        if check_linkage:
            status = self.linkage_status()
            if status != "ok":
                raise ParentLinkageError(
                    f"parent {found} does not match: {status} (the parent was modified or "
                    "replaced after this differencing disk was created)",
                    path=self.path,
                )
        if self.parent.logical_sector_size != self.logical_sector_size:
            raise VhdxError(
                f"parent {found} has logical sector size "
                f"{self.parent.logical_sector_size}, this disk "
                f"{self.logical_sector_size}",
                path=self.path,
            )

    def linkage_status(self, parent: VhdxDisk | None = None) -> str:
        """``ok`` when the parent's DataWriteGuid matches parent_linkage(2), else why not.

        ``parent`` defaults to the open parent; pass one to judge a candidate instead.
        """
        locator = self.metadata.parent_locator
        parent = parent if parent is not None else self.parent
        if locator is None or parent is None:
            return "no parent"
        actual = parent.data_write_guid
        expected = [
            g
            for g in (
                parse_linkage(locator.entries.get(k, ""))
                for k in (KEY_PARENT_LINKAGE, KEY_PARENT_LINKAGE2)
            )
            if g is not None
        ]
        if actual in expected:
            return "ok"
        return (
            f"linkage mismatch: expected DataWriteGuid {{{expected[0]}}}, parent has {{{actual}}}"
        )

    # ----------------------------------------------------------------------------- properties
    @property
    def size(self) -> int:
        return self.metadata.virtual_size

    @property
    def virtual_size(self) -> int:
        return self.metadata.virtual_size

    @property
    def block_size(self) -> int:
        return self.metadata.block_size

    @property
    def logical_sector_size(self) -> int:
        return self.metadata.logical_sector_size

    @property
    def physical_sector_size(self) -> int:
        return self.metadata.physical_sector_size

    @property
    def is_differencing(self) -> bool:
        return self.metadata.has_parent

    @property
    def is_fixed(self) -> bool:
        return not self.metadata.has_parent and self.metadata.leave_blocks_allocated

    @property
    def data_write_guid(self) -> uuid.UUID:
        return self._header.data_write_guid

    @property
    def file_write_guid(self) -> uuid.UUID:
        return self._header.file_write_guid

    @property
    def header(self) -> Header:
        return self._header

    @property
    def virtual_disk_id(self) -> uuid.UUID:
        return self.metadata.virtual_disk_id

    @property
    def file_size(self) -> int:
        """Size of the file, or what it will be once a pending log is replayed (if larger)."""
        return max(self._io.size(), self._file_size)

    # ----------------------------------------------------------------------------- BAT
    def bat_get(self, index: int) -> int:
        """BAT entry ``index`` as committed (read through a bounded chunk cache)."""
        if not 0 <= index < self.geometry.bat_entries:
            raise self._err(f"BAT entry {index} is outside the BAT ({self.geometry.bat_entries})")
        chunk = index * BAT_ENTRY_SIZE // BAT_CHUNK_BYTES
        data = self._bat_chunks.get(chunk)
        if data is None:
            start = chunk * BAT_CHUNK_BYTES
            length = min(BAT_CHUNK_BYTES, self.geometry.bat_bytes - start)
            data = self.read_file(self.bat_region.file_offset + start, length)
            if len(self._bat_chunks) >= BAT_CACHE_CHUNKS:
                self._bat_chunks.pop(next(iter(self._bat_chunks)))
            self._bat_chunks[chunk] = data
        at = index * BAT_ENTRY_SIZE - chunk * BAT_CHUNK_BYTES
        return int.from_bytes(data[at : at + BAT_ENTRY_SIZE], "little")

    def iter_bat(self) -> Iterator[tuple[int, int]]:
        """Every non-zero (index, entry) of the BAT, streamed without filling the cache.

        Zero entries (not present, no offset) are skipped, whole zero chunks at memcmp speed.
        """
        total = self.geometry.bat_bytes
        zero_chunk = bytes(BAT_CHUNK_BYTES)
        for start in range(0, total, BAT_CHUNK_BYTES):
            data = self.read_file(
                self.bat_region.file_offset + start, min(BAT_CHUNK_BYTES, total - start)
            )
            if data == zero_chunk[: len(data)]:
                continue
            base = start // BAT_ENTRY_SIZE
            for i, (value,) in enumerate(_U64.iter_unpack(data)):
                if value:
                    yield base + i, value

    def chunks_with_data(self) -> set[int]:
        """Sector-bitmap chunks (``2**23`` logical sectors each) where this disk or one of its
        parents stores a block; elsewhere the whole chain reads as zeros."""
        span = SECTORS_PER_CHUNK * self.logical_sector_size
        chunks: set[int] = set()
        disk: VhdxDisk | None = self
        while disk is not None:
            geom = disk.geometry
            for index, entry in disk.iter_bat():
                if not geom.is_bitmap_index(index) and bat_state(entry) in (
                    PAYLOAD_BLOCK_FULLY_PRESENT,
                    PAYLOAD_BLOCK_PARTIALLY_PRESENT,
                ):
                    chunks.add(geom.block_of_index(index) * geom.block_size // span)
            disk = disk.parent
        return chunks

    def check_block_location(self, index: int, offset: int, length: int) -> None:
        """A block referenced by BAT entry ``index`` must lie in the file, outside metadata."""
        where = self.bat_region.file_offset + index * BAT_ENTRY_SIZE
        if offset < HEADER_SECTION_SIZE:
            raise self._err(f"BAT entry {index} points into the header section", where)
        if offset + length > self._file_size:
            raise self._err(
                f"BAT entry {index} points past the end of the file ({offset:#x}+{length:#x} > "
                f"{self._file_size:#x})",
                where,
            )
        for start, size, name in self.reserved_spans:
            if offset < start + size and offset + length > start:
                raise self._err(f"BAT entry {index} points into the {name}", where)

    def _compute_reserved_spans(self) -> list[tuple[int, int, str]]:
        """File ranges no payload or bitmap block may use (regions and the log)."""
        spans = [
            (self.bat_region.file_offset, self.bat_region.length, "BAT region"),
            (self.metadata_region.file_offset, self.metadata_region.length, "metadata region"),
        ]
        if self._header.log_length:
            spans.append((self._header.log_offset, self._header.log_length, "log"))
        return spans

    def payload(self, block: int) -> tuple[int, int]:
        """(state, file offset) of payload block ``block``, validated."""
        index = self.geometry.payload_index(block)
        entry = self.bat_get(index)
        state = bat_state(entry)
        if state not in _VALID_PAYLOAD_STATES:
            raise self._err(
                f"BAT entry {index} has invalid payload state {state}",
                self.bat_region.file_offset + index * BAT_ENTRY_SIZE,
            )
        offset = bat_offset(entry)
        if state in (PAYLOAD_BLOCK_FULLY_PRESENT, PAYLOAD_BLOCK_PARTIALLY_PRESENT):
            if state == PAYLOAD_BLOCK_PARTIALLY_PRESENT and not self.is_differencing:
                raise self._err(
                    f"BAT entry {index} is partially present in a disk without a parent",
                    self.bat_region.file_offset + index * 8,
                )
            self.check_block_location(index, offset, self.block_size)
        return state, offset

    def _bitmap_location(self, block: int) -> tuple[int, int]:
        """(file offset, length) of block ``block``'s bits in its chunk's sector bitmap."""
        geom = self.geometry
        index = geom.bitmap_index(block // geom.chunk_ratio)
        entry = self.bat_get(index)
        if bat_state(entry) != SB_BLOCK_PRESENT:
            raise self._err(
                f"block {block} is partially present but its sector bitmap "
                f"(BAT entry {index}) is not",
                self.bat_region.file_offset + index * 8,
            )
        self.check_block_location(index, bat_offset(entry), SECTOR_BITMAP_BLOCK_SIZE)
        per_block = geom.bitmap_bytes_per_block()
        return bat_offset(entry) + (block % geom.chunk_ratio) * per_block, per_block

    def _block_bits(self, block: int) -> int:
        off, length = self._bitmap_location(block)
        return int.from_bytes(self.read_file(off, length), "little")

    # ----------------------------------------------------------------------------- reading
    def read_at(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise self._err(
                f"read of {length} bytes at {offset:#x} is outside the virtual "
                f"disk ({self.size} bytes)"
            )
        with self._lock:
            return self._read(offset, length)

    def _read(self, offset: int, length: int) -> bytes:
        if length == 0:
            return b""
        bs = self.block_size
        parts = []
        pos, end = offset, offset + length
        while pos < end:
            block, in_block = divmod(pos, bs)
            n = min(bs - in_block, end - pos)
            state, foff = self.payload(block)
            if state == PAYLOAD_BLOCK_FULLY_PRESENT:
                # Following blocks stored right after this one are read in the same pread.
                start, next_file = foff + in_block, foff + bs
                while pos + n < end:
                    next_state, next_off = self.payload(block + 1)
                    if next_state != PAYLOAD_BLOCK_FULLY_PRESENT or next_off != next_file:
                        break
                    block += 1
                    next_file += bs
                    n += min(bs, end - pos - n)
                parts.append(self.read_file(start, n))
            elif state == PAYLOAD_BLOCK_PARTIALLY_PRESENT:
                parts.append(self._read_partial(block, foff, in_block, n))
            elif state == PAYLOAD_BLOCK_NOT_PRESENT and self.parent is not None:
                parts.append(self._read_parent(pos, n))
            else:
                parts.append(bytes(n))
            pos += n
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _read_parent(self, offset: int, length: int) -> bytes:
        parent = self.parent
        if parent is None:
            raise UsageError("differencing disk opened without its parent", path=self.path)
        if offset >= parent.size:
            return bytes(length)
        n = min(length, parent.size - offset)
        data = parent.read_at(offset, n)
        return data if n == length else data + bytes(length - n)

    def _read_partial(self, block: int, foff: int, in_block: int, length: int) -> bytes:
        lss = self.logical_sector_size
        first = in_block // lss
        last = -(-(in_block + length) // lss)
        bits = self._block_bits(block)
        base = block * self.block_size
        parts = []
        for present, s0, s1 in _runs(bits, first, last):
            if present:
                parts.append(self.read_file(foff + s0 * lss, (s1 - s0) * lss))
            else:
                parts.append(self._read_parent(base + s0 * lss, (s1 - s0) * lss))
        data = b"".join(parts)
        skip = in_block - first * lss
        return data[skip : skip + length]

    # ----------------------------------------------------------------------------- writing
    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        if offset < 0 or offset + len(view) > self.size:
            raise self._err(
                f"write of {len(view)} bytes at {offset:#x} is outside the virtual "
                f"disk ({self.size} bytes)"
            )
        if not self.writable:
            raise UsageError("disk is open read-only", path=self.path)
        if not view:
            return
        with self._lock:
            self._check_open()
            self._begin_session()
            self._write(offset, view)

    def _write(self, offset: int, view: memoryview) -> None:
        bs = self.block_size
        txn = _Txn()
        # One block can dirty two BAT pages and its share of a sector bitmap.
        per_block = 2 + max(1, self.geometry.bitmap_bytes_per_block() // _PAGE)
        limit = self._log_max_pages() - per_block
        pos, end = offset, offset + len(view)
        while pos < end:
            block, in_block = divmod(pos, bs)
            n = min(bs - in_block, end - pos)
            self._write_block(txn, block, in_block, view[pos - offset : pos - offset + n])
            pos += n
            if txn.page_count() >= limit:
                self._commit(txn)
                txn = _Txn()
        self._commit(txn)

    def _write_block(self, txn: _Txn, block: int, in_block: int, chunk: memoryview) -> None:
        geom = self.geometry
        lss = self.logical_sector_size
        n = len(chunk)
        state, foff = self.payload(block)
        if state == PAYLOAD_BLOCK_FULLY_PRESENT:
            self._io.pwrite(foff + in_block, chunk)
            return
        block_start = block * self.block_size
        block_len = min(self.block_size, self.size - block_start)
        whole = in_block == 0 and n >= block_len
        payload_index = geom.payload_index(block)
        # A not-present block of a differencing disk shows the parent: a partial write keeps
        # that through the sector bitmap, unless the block lies wholly beyond the parent's end
        # (it reads as zeros there, so a plain fresh block is the same and needs no parent).
        shows_parent = self.parent is not None and block_start < self.parent.size
        if state == PAYLOAD_BLOCK_PARTIALLY_PRESENT or (
            state == PAYLOAD_BLOCK_NOT_PRESENT and shows_parent and not whole
        ):
            first = in_block // lss
            last = -(-(in_block + n) // lss)
            if in_block % lss or (in_block + n) % lss:
                merged = bytearray(self._read(block_start + first * lss, (last - first) * lss))
                skip = in_block - first * lss
                merged[skip : skip + n] = chunk
                payload: bytes | bytearray | memoryview = merged
            else:
                payload = chunk
            if state == PAYLOAD_BLOCK_NOT_PRESENT:
                foff = self._allocate(self.block_size)
                self._ensure_bitmap_block(txn, block)
                bits = 0
            else:
                bits = self._txn_block_bits(txn, block)
            self._io.pwrite(foff + first * lss, payload)
            new_bits = bits | _range_mask(first, last)
            if new_bits == _full_mask(geom.sectors_per_block):
                txn.set_bat(payload_index, bat_entry(PAYLOAD_BLOCK_FULLY_PRESENT, foff))
            elif state == PAYLOAD_BLOCK_NOT_PRESENT:
                txn.set_bat(payload_index, bat_entry(PAYLOAD_BLOCK_PARTIALLY_PRESENT, foff))
            if new_bits != bits or state == PAYLOAD_BLOCK_NOT_PRESENT:
                self._txn_set_block_bits(txn, block, new_bits)
            return
        # Not allocated, reading as zeros (or as the parent, but overwritten whole): a fresh
        # block, zero except for this write.
        foff = self._allocate(self.block_size)
        self._io.pwrite(foff + in_block, chunk)
        txn.set_bat(payload_index, bat_entry(PAYLOAD_BLOCK_FULLY_PRESENT, foff))

    def _allocate(self, length: int) -> int:
        offset = self._alloc_end
        self._alloc_end += align_up(length, REGION_ALIGNMENT)
        return offset

    def _ensure_bitmap_block(self, txn: _Txn, block: int) -> None:
        index = self.geometry.bitmap_index(block // self.geometry.chunk_ratio)
        current = txn.bat.get(index, None)
        if current is None:
            current = self.bat_get(index)
        if bat_state(current) == SB_BLOCK_PRESENT:
            return
        if bat_state(current) != SB_BLOCK_NOT_PRESENT:
            raise self._err(
                f"BAT entry {index} has invalid sector bitmap state {bat_state(current)}"
            )
        txn.set_bat(index, bat_entry(SB_BLOCK_PRESENT, self._allocate(SECTOR_BITMAP_BLOCK_SIZE)))

    def _bitmap_span_in_txn(self, txn: _Txn, block: int) -> tuple[int, int]:
        geom = self.geometry
        index = geom.bitmap_index(block // geom.chunk_ratio)
        entry = txn.bat.get(index)
        if entry is None:
            return self._bitmap_location(block)
        per_block = geom.bitmap_bytes_per_block()
        return bat_offset(entry) + (block % geom.chunk_ratio) * per_block, per_block

    def _txn_page(self, txn: _Txn, page: int) -> bytearray:
        buf = txn.pages.get(page)
        if buf is None:
            raw = self._io.pread(page, _PAGE)  # fresh space past the end reads as zeros
            buf = bytearray(raw) + bytearray(_PAGE - len(raw))
            txn.pages[page] = buf
        return buf

    def _txn_block_bits(self, txn: _Txn, block: int) -> int:
        off, length = self._bitmap_span_in_txn(txn, block)
        out = bytearray()
        for page in range(off - off % _PAGE, off + length, _PAGE):
            lo, hi = max(page, off), min(page + _PAGE, off + length)
            if page in txn.pages:
                out += txn.pages[page][lo - page : hi - page]
            else:
                out += self.read_file(lo, hi - lo)
        return int.from_bytes(out, "little")

    def _txn_set_block_bits(self, txn: _Txn, block: int, bits: int) -> None:
        off, length = self._bitmap_span_in_txn(txn, block)
        raw = bits.to_bytes(length, "little")
        for page in range(off - off % _PAGE, off + length, _PAGE):
            lo, hi = max(page, off), min(page + _PAGE, off + length)
            self._txn_page(txn, page)[lo - page : hi - page] = raw[lo - off : hi - off]

    def _log_max_pages(self) -> int:
        assert self._log is not None
        return self._log.max_pages

    def _commit(self, txn: _Txn, extra_pages: dict[int, bytes] | None = None) -> None:
        """Make ``txn`` durable through the log, then apply it in place (see module docstring)."""
        if not txn.bat and not txn.pages and not extra_pages:
            return
        assert self._log is not None
        if self._io.size() < self._alloc_end:
            self._io.truncate(self._alloc_end)
        self._barrier()
        pages: dict[int, bytes | bytearray] = dict(txn.pages)
        bat_pages: dict[int, bytearray] = {}
        for index, value in txn.bat.items():
            at = self.bat_region.file_offset + index * BAT_ENTRY_SIZE
            page = at - at % _PAGE
            buf = bat_pages.get(page)
            if buf is None:
                buf = bat_pages[page] = bytearray(self.read_file(page, _PAGE))
            buf[at - page : at - page + BAT_ENTRY_SIZE] = value.to_bytes(8, "little")
        pages.update(bat_pages)
        if extra_pages:
            pages.update(extra_pages)
        ordered = sorted((off, bytes(data)) for off, data in pages.items())
        file_size = self._io.size()
        self._file_size = file_size
        entry_at, entry = self._log.next_entry(ordered, file_size)
        self._io.pwrite(entry_at, entry)
        self._barrier()
        for off, data in ordered:
            self._io.pwrite(off, data)
        for index, value in txn.bat.items():
            chunk = index * BAT_ENTRY_SIZE // BAT_CHUNK_BYTES
            cached = self._bat_chunks.get(chunk)
            if cached is not None:
                at = index * BAT_ENTRY_SIZE - chunk * BAT_CHUNK_BYTES
                self._bat_chunks[chunk] = (
                    cached[:at] + value.to_bytes(8, "little") + cached[at + BAT_ENTRY_SIZE :]
                )

    def _begin_session(self) -> None:
        """First modification of this open: new LogGuid, FileWriteGuid and DataWriteGuid."""
        if self._log is not None:
            return
        header = self._header
        if header.log_length < 3 * 2 * LOG_SECTOR_SIZE:
            raise self._err("file has no usable log region, so it cannot be written safely")
        log = LogWriter(header.log_offset, header.log_length, uuid.uuid4())
        at, entry = log.next_entry([], self._io.size())
        self._io.pwrite(at, entry)
        self._barrier()
        self._write_header(
            dataclasses.replace(
                header,
                sequence_number=0,
                file_write_guid=uuid.uuid4(),
                data_write_guid=uuid.uuid4(),
                log_guid=log.log_guid,
            )
        )
        self._log = log

    def _barrier(self) -> None:
        """Order what was written before against what comes after, across power loss too."""
        if self.durable:
            self._io.fsync()

    def _write_header(self, header: Header, *, sync: bool = False) -> None:
        """Write ``header`` (sequence number set here) over the non-current copy, and fsync."""
        header = dataclasses.replace(header, sequence_number=self._header.sequence_number + 1)
        slot = 1 - self._header_slot
        self._io.pwrite(HEADER_OFFSETS[slot], header.pack())
        if sync:
            self._io.fsync()
        else:
            self._barrier()
        self._header = header
        self._header_slot = slot
        valid = list(self.header_valid)
        valid[slot] = True
        self.header_valid = (valid[0], valid[1])

    # ----------------------------------------------------------------------------- resize
    def resize(self, new_size: int) -> None:
        """Grow the virtual disk to ``new_size`` bytes; the new space reads as zeros."""
        if not self.writable:
            raise UsageError("disk is open read-only", path=self.path)
        lss = self.logical_sector_size
        if new_size < self.size:
            raise UsageError(
                f"cannot shrink a VHDX disk from {self.size} to {new_size} bytes: only growing "
                "is supported",
                path=self.path,
            )
        if new_size % lss:
            raise UsageError(
                f"new size {new_size} is not a multiple of the logical sector size {lss}",
                path=self.path,
            )
        if new_size > MAX_VIRTUAL_DISK_SIZE:
            raise UsageError(
                f"new size {new_size} exceeds the VHDX maximum of 64 TiB", path=self.path
            )
        if new_size == self.size:
            return
        with self._lock:
            self._check_open()
            self._begin_session()
            self._resize(new_size)

    def _resize(self, new_size: int) -> None:
        old = self.geometry
        bs = self.block_size
        # 1. The old last block may extend past the old end: that tail must read as zeros.
        tail_end = min(new_size, old.data_blocks * bs)
        if tail_end > old.virtual_size:
            pos = old.virtual_size
            while pos < tail_end:
                n = min(1 << 20, tail_end - pos)
                if any(self._read(pos, n)):
                    self._write(pos, memoryview(bytes(n)))
                pos += n
        new = Geometry(new_size, bs, old.logical_sector_size, old.has_parent)

        # 2. What the new BAT entries hold: fixed disks get their blocks now; a differencing
        # disk whose parent is larger than it must not show the parent through the new space.
        parent_chunks = self.parent.chunks_with_data() if self.parent is not None else set()

        def new_entry(index: int) -> int:
            if new.is_bitmap_index(index):
                # New chunks of a child over parent data get their bitmap block now, as
                # create_differencing gives them (libvhdi needs it; see
                # create._preallocate_sector_bitmaps).
                if not new.has_parent or (index // (new.chunk_ratio + 1)) not in parent_chunks:
                    return 0
                return bat_entry(SB_BLOCK_PRESENT, self._allocate(SECTOR_BITMAP_BLOCK_SIZE))
            block = new.block_of_index(index)
            if block < old.data_blocks or block >= new.data_blocks:
                return 0
            if self.metadata.leave_blocks_allocated and not new.has_parent:
                return bat_entry(PAYLOAD_BLOCK_FULLY_PRESENT, self._allocate(bs))
            if self.parent is not None and block * bs < self.parent.size:
                return bat_entry(PAYLOAD_BLOCK_ZERO, 0)
            return 0

        size_page = self.metadata.virtual_size_file_offset
        size_page -= size_page % _PAGE
        size_buf = bytearray(self.read_file(size_page, _PAGE))
        at = self.metadata.virtual_size_file_offset - size_page
        size_buf[at : at + VIRTUAL_DISK_SIZE.size] = VIRTUAL_DISK_SIZE.pack(new_size)
        extra: dict[int, bytes] = {size_page: bytes(size_buf)}

        if new.bat_bytes > self.bat_region.length:
            # 3a. Relocate the BAT to fresh space at the end of the file; the region tables
            # switch to it in the same log entry as the size.
            region_len = new.bat_region_length
            region_off = self._allocate(region_len)
            copied = 0
            while copied < old.bat_bytes:
                n = min(1 << 20, old.bat_bytes - copied)
                self._io.pwrite(
                    region_off + copied, self.read_file(self.bat_region.file_offset + copied, n)
                )
                copied += n
            self._write_new_entries(old, new, new_entry, region_off)
            new_region = RegionEntry(BAT_REGION_GUID, region_off, region_len, True)
            table = RegionTable(
                [new_region if e.guid == BAT_REGION_GUID else e for e in self.region_table.entries]
            )
            packed = table.pack()
            for table_off in REGION_TABLE_OFFSETS:
                current = self.read_file(table_off, REGION_TABLE_SIZE)
                for p in range(0, REGION_TABLE_SIZE, _PAGE):
                    if current[p : p + _PAGE] != packed[p : p + _PAGE]:
                        extra[table_off + p] = packed[p : p + _PAGE]
            self._commit(_Txn(), extra)
            self.region_table = table
            self.bat_region = new_region
            self.region_table_valid = (True, True)
            self.reserved_spans = self._compute_reserved_spans()
        else:
            # 3b. The BAT region has room: new entries go through the log, a page set at a time,
            # before the size that makes them part of the disk.
            txn = _Txn()
            limit = self._log_max_pages() - 2
            first = old.bat_entries
            current = self.read_file(
                self.bat_region.file_offset + first * BAT_ENTRY_SIZE,
                (new.bat_entries - first) * BAT_ENTRY_SIZE,
            )
            for i, (value,) in enumerate(_U64.iter_unpack(current)):
                wanted = new_entry(first + i)
                if wanted != value:
                    txn.set_bat(first + i, wanted)
                    if txn.page_count() >= limit:
                        self._commit(txn)
                        txn = _Txn()
            self._commit(txn, extra)
        self._bat_chunks.clear()
        self.metadata = dataclasses.replace(self.metadata, virtual_size=new_size)
        self.geometry = new

    def _write_new_entries(
        self, old: Geometry, new: Geometry, new_entry: Callable[[int], int], region_off: int
    ) -> None:
        """Fill a relocated BAT's new entries directly (the space is not referenced yet)."""
        buf = bytearray()
        start = old.bat_entries
        for index in range(old.bat_entries, new.bat_entries):
            buf += new_entry(index).to_bytes(8, "little")
            if len(buf) >= 1 << 20:
                self._io.pwrite(region_off + start * BAT_ENTRY_SIZE, buf)
                start = index + 1
                buf = bytearray()
        if buf and any(buf):
            self._io.pwrite(region_off + start * BAT_ENTRY_SIZE, buf)

    # ----------------------------------------------------------------------------- lifetime
    def _check_open(self) -> None:
        if self._closed:
            raise UsageError("disk is closed", path=self.path)

    def flush(self) -> None:
        """Make every write so far durable."""
        with self._lock:
            if self.writable and not self._closed:
                self._io.fsync()

    def close(self) -> None:
        """Finish the write session (LogGuid back to zero) and release the file and parents."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._log is not None:
                    self._io.fsync()
                    self._write_header(
                        dataclasses.replace(self._header, log_guid=ZERO_GUID), sync=True
                    )
                    self._log = None
            finally:
                if self._fd >= 0:
                    os.close(self._fd)
                    self._fd = -1
                if self.parent is not None:
                    self.parent.close()

    def __enter__(self) -> VhdxDisk:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = "differencing" if self.is_differencing else "fixed" if self.is_fixed else "dynamic"
        return f"<VhdxDisk {self.path} {kind} {self.size} bytes>"


def open_regular_file(path: Path, writable: bool) -> int:
    """A descriptor of ``path`` if it is a regular file or block device, else VhdxError.

    Opened non-blocking first, so a FIFO named like a disk cannot hang the open.
    """
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise VhdxError("no such file", path=path) from None
    except IsADirectoryError:
        raise VhdxError("is a directory, not a VHDX file", path=path) from None
    except OSError as err:
        raise VhdxError(f"cannot open: {err.strerror}", path=path) from err
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        os.close(fd)
        raise VhdxError("not a regular file", path=path)
    os.set_blocking(fd, True)
    return fd


def _region_name(guid: uuid.UUID) -> str:
    return {BAT_REGION_GUID: "BAT", METADATA_REGION_GUID: "metadata"}.get(guid, str(guid))


def _item_name(guid: uuid.UUID) -> str:
    return {
        FILE_PARAMETERS_GUID: "file parameters",
        VIRTUAL_DISK_SIZE_GUID: "virtual disk size",
        VIRTUAL_DISK_ID_GUID: "virtual disk ID",
        LOGICAL_SECTOR_SIZE_GUID: "logical sector size",
        PHYSICAL_SECTOR_SIZE_GUID: "physical sector size",
        PARENT_LOCATOR_GUID: "parent locator",
    }.get(guid, str(guid))


def _open_chain(
    path: Path,
    *,
    writable: bool,
    chain: list[Path],
    check_linkage: bool,
    open_parent: bool = True,
    durable: bool = True,
) -> VhdxDisk:
    disk = VhdxDisk(Path(path), writable=writable, durable=durable)
    try:
        disk._open()
        if disk.is_differencing and open_parent:
            disk._open_parent(chain, check_linkage)
    except BaseException:
        disk.close()
        raise
    return disk


def open_disk(
    path: str | os.PathLike[str], *, writable: bool = False, durable: bool = True
) -> VhdxDisk:
    """Open a VHDX file (and its parent chain, read-only) with full validation.

    A writable open replays a pending log in place and takes an exclusive lock on the file; the
    first write then starts a write session (new DataWriteGuid, which by design breaks the
    linkage of any differencing disk made from this one).

    ``durable=False`` keeps every write ordered exactly as with ``durable=True`` (so a killed
    process still leaves a consistent disk) but skips the fsyncs between the steps of a
    metadata commit: for filling a new disk that is thrown away if the machine crashes before
    ``flush()``/``close()``, which do fsync.  Like ``qemu-img convert``'s default cache mode.
    """
    p = Path(path)
    return _open_chain(
        p,
        writable=writable,
        chain=[Path(os.path.realpath(p))],
        check_linkage=True,
        durable=durable,
    )


def open_layer(path: str | os.PathLike[str], *, writable: bool = False) -> VhdxDisk:
    """Open one VHDX file without its parent (for inspection: info, check, linkage status)."""
    return _open_chain(
        Path(path), writable=writable, chain=[], check_linkage=False, open_parent=False
    )
