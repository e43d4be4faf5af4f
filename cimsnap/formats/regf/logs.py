"""Transaction logs: recovering a dirty hive from ``.LOG1``/``.LOG2`` (or ``.LOG``); writing logs.

Implements the spec sections "Format of transaction log files" (old format: partial base block,
``DIRT`` dirty vector, 512-byte dirty pages; new format: partial base block and ``HvLE`` log
entries protected by Marvin32 hashes), "Dirty state of a hive" and "Multiple transaction log
files":

* A hive is dirty when its base block checksum is wrong or its sequence numbers differ.
* New format, valid primary base block: entries of both logs are applied in sequence-number
  order, starting at the log's base block sequence number (not below the primary's secondary
  sequence number), continuing with the other log at N + 1; a bad hash, a bad hive bins size or
  a gap ends recovery.  Invalid primary base block: only the log with the latest entries is used
  and the base block comes from it.
* Old format: a log applies when its base block is valid (checksum, equal sequence numbers) and
  its last-written timestamp equals the primary's (or the first hive bin's, when the primary's
  base block is invalid); among applicable logs the one with the highest sequence number wins
  (our reading of the Windows 8 rules, which use the second log when it is more recent).

After recovery the base block is marked clean: both sequence numbers become one more than the
last applied entry's (what Windows 10 wrote for the yarp NewDirtyHive1 sample), the file type is
primary and the checksum is recomputed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from .cells import RegfError
from .marvin import marvin32
from .structures import (
    BASE_BLOCK_HEADER,
    BASE_BLOCK_SIZE,
    BASE_FLAGS_OFFSET,
    CHECKSUM_OFFSET,
    FILE_TYPE_LOG_NEW,
    FILE_TYPE_LOG_OLD,
    FILE_TYPE_LOG_OLD_W2K,
    FILE_TYPE_PRIMARY,
    HBIN_ALIGNMENT,
    REGF_SIGNATURE,
    U32,
    U64,
    checksum,
)

SECTOR = 512
LOG_ENTRY_SIGNATURE = b"HvLE"
# signature, size, flags, sequence number, hive bins data size, dirty pages count, hash-1, hash-2
LOG_ENTRY_HEADER = struct.Struct("<4sIIIIIQQ")
LOG_ENTRY_HEADER_SIZE = 40
PAGE_REFERENCE = struct.Struct("<II")  # offset relative to the hive bins data, size
DIRTY_VECTOR_SIGNATURE = b"DIRT"
LOG_SUFFIXES = (".LOG1", ".LOG2", ".LOG")


@dataclass
class LogBaseBlock:
    seq1: int
    seq2: int
    timestamp: int
    file_type: int
    hbins_size: int
    valid: bool
    raw: bytes  # the first 512 bytes


@dataclass
class LogEntry:
    sequence: int
    flags: int
    hbins_size: int
    pages: list[tuple[int, bytes]]


@dataclass
class RecoveryResult:
    image: bytearray
    applied: list[Path] = field(default_factory=list)
    entries: int = 0


def find_logs(primary: Path) -> list[Path]:
    """Transaction logs beside ``primary`` (name + .LOG1/.LOG2/.LOG, any case, not empty)."""
    try:
        entries = {p.name.lower(): p for p in primary.parent.iterdir()}
    except OSError:
        return []
    found = []
    for suffix in LOG_SUFFIXES:
        candidate = entries.get((primary.name + suffix).lower())
        if candidate is not None and candidate.is_file() and candidate.stat().st_size > 0:
            found.append(candidate)
    return found


def needs_recovery(image: bytes | bytearray) -> bool:
    """The hive is dirty: wrong base block checksum or different sequence numbers."""
    if len(image) < SECTOR or image[:4] != REGF_SIGNATURE:
        return False
    seq1, seq2 = struct.unpack_from("<II", image, 4)
    (stored,) = U32.unpack_from(image, CHECKSUM_OFFSET)
    return bool(stored != checksum(image) or seq1 != seq2)


def parse_log_base(data: bytes) -> LogBaseBlock | None:
    if len(data) < SECTOR or data[:4] != REGF_SIGNATURE:
        return None
    _sig, seq1, seq2, ts, _maj, _min, file_type, _fmt, _root, hbins, _cl = (
        BASE_BLOCK_HEADER.unpack_from(data, 0)
    )
    (stored,) = U32.unpack_from(data, CHECKSUM_OFFSET)
    valid = stored == checksum(data)
    return LogBaseBlock(seq1, seq2, ts, file_type, hbins, valid, bytes(data[:SECTOR]))


def new_format_entries(data: bytes) -> list[LogEntry]:
    """The valid ``HvLE`` entries of a new-format log, stopping at the first bad one."""
    entries: list[LogEntry] = []
    pos = SECTOR
    while pos + LOG_ENTRY_HEADER_SIZE <= len(data):
        sig, size, flags, seq, hbins, count, hash1, hash2 = LOG_ENTRY_HEADER.unpack_from(data, pos)
        if sig != LOG_ENTRY_SIGNATURE:
            break
        if size < LOG_ENTRY_HEADER_SIZE or size % SECTOR or pos + size > len(data):
            break
        if hbins == 0 or hbins % HBIN_ALIGNMENT:
            break
        if marvin32(data[pos : pos + 32]) != hash2:
            break
        if marvin32(data[pos + LOG_ENTRY_HEADER_SIZE : pos + size]) != hash1:
            break
        refs_end = pos + LOG_ENTRY_HEADER_SIZE + PAGE_REFERENCE.size * count
        if refs_end > pos + size:
            break
        pages = []
        page_pos = refs_end
        ok = True
        for i in range(count):
            offset, page_size = PAGE_REFERENCE.unpack_from(
                data, pos + LOG_ENTRY_HEADER_SIZE + PAGE_REFERENCE.size * i
            )
            if page_pos + page_size > pos + size or offset + page_size > hbins:
                ok = False
                break
            pages.append((offset, bytes(data[page_pos : page_pos + page_size])))
            page_pos += page_size
        if not ok:
            break
        entries.append(LogEntry(seq, flags, hbins, pages))
        pos += size
    return entries


def recover(image: bytearray, logs: list[tuple[Path, bytes]], *, source: Path) -> RecoveryResult:
    """Apply transaction logs to a dirty primary image; returns the recovered image."""
    primary_valid = len(image) >= BASE_BLOCK_SIZE and U32.unpack_from(image, CHECKSUM_OFFSET)[
        0
    ] == checksum(image)
    parsed = [(path, data, parse_log_base(data)) for path, data in logs]
    new = [(p, d, b) for p, d, b in parsed if b is not None and b.file_type == FILE_TYPE_LOG_NEW]
    old = [
        (p, d, b)
        for p, d, b in parsed
        if b is not None and b.file_type in (FILE_TYPE_LOG_OLD, FILE_TYPE_LOG_OLD_W2K)
    ]
    if new:
        result = _recover_new(image, new, primary_valid, source)
        if result is not None:
            return result
    if old:
        result = _recover_old(image, old, primary_valid, source)
        if result is not None:
            return result
    raise RegfError(
        "hive is dirty and none of its transaction logs applies "
        f"({', '.join(p.name for p, _d in logs)})",
        path=source,
    )


def _recover_new(
    image: bytearray,
    logs: list[tuple[Path, bytes, LogBaseBlock]],
    primary_valid: bool,
    source: Path,
) -> RecoveryResult | None:
    candidates = [(path, base, new_format_entries(data)) for path, data, base in logs if base.valid]
    candidates = [c for c in candidates if c[2]]
    if not candidates:
        return None
    if primary_valid:
        (primary_seq2,) = U32.unpack_from(image, 8)
        ordered = sorted(candidates, key=lambda c: c[1].seq1)
    else:
        # only the log with the latest entries; its base block replaces the primary's
        latest = max(candidates, key=lambda c: max(e.sequence for e in c[2]))
        ordered = [latest]
        primary_seq2 = latest[1].seq1
        if len(image) < BASE_BLOCK_SIZE:
            image.extend(bytes(BASE_BLOCK_SIZE - len(image)))
        image[:BASE_BLOCK_SIZE] = latest[1].raw.ljust(BASE_BLOCK_SIZE, b"\0")
    result = RecoveryResult(image)
    expected: int | None = None
    last: LogEntry | None = None
    for path, base, entries in ordered:
        used = False
        for entry in entries:
            if expected is None:
                if entry.sequence < base.seq1 or entry.sequence < primary_seq2:
                    continue  # already in the primary file
                if entry.sequence != base.seq1:
                    break
            elif entry.sequence < expected and not used:
                continue
            elif entry.sequence != expected:
                break
            _apply_entry(image, entry)
            used = True
            last = entry
            expected = entry.sequence + 1
            result.entries += 1
        if used:
            result.applied.append(path)
    if last is None:
        return None
    _finish(image, last.sequence + 1, last.hbins_size, flags_bit0=last.flags & 1)
    return result


def _apply_entry(image: bytearray, entry: LogEntry) -> None:
    needed = BASE_BLOCK_SIZE + entry.hbins_size
    if len(image) < needed:
        image.extend(bytes(needed - len(image)))
    for offset, page in entry.pages:
        start = BASE_BLOCK_SIZE + offset
        image[start : start + len(page)] = page


def _recover_old(
    image: bytearray,
    logs: list[tuple[Path, bytes, LogBaseBlock]],
    primary_valid: bool,
    source: Path,
) -> RecoveryResult | None:
    if primary_valid:
        (reference,) = U64.unpack_from(image, 12)
    elif len(image) >= BASE_BLOCK_SIZE + 28:
        (reference,) = U64.unpack_from(image, BASE_BLOCK_SIZE + 20)  # first hive bin timestamp
    else:
        return None
    applicable = [
        (path, data, base)
        for path, data, base in logs
        if base.valid and base.seq1 == base.seq2 and base.timestamp == reference
    ]
    if not applicable:
        return None
    path, data, base = max(applicable, key=lambda c: c[2].seq1)
    pages = old_format_pages(data, base.hbins_size)
    if pages is None:
        return None
    if not primary_valid:
        image[:BASE_BLOCK_SIZE] = base.raw.ljust(BASE_BLOCK_SIZE, b"\0")
    needed = BASE_BLOCK_SIZE + base.hbins_size
    if len(image) < needed:
        image.extend(bytes(needed - len(image)))
    for index, page in pages:
        start = BASE_BLOCK_SIZE + SECTOR * index
        image[start : start + SECTOR] = page
    (seq1,) = U32.unpack_from(image, 4)
    _finish(image, max(seq1, base.seq1) + 1, base.hbins_size, flags_bit0=None)
    return RecoveryResult(image, [path], len(pages))


def old_format_pages(data: bytes, hbins_size: int) -> list[tuple[int, bytes]] | None:
    """(page index, 512 bytes) for every dirty page of an old-format log, or None if invalid."""
    if hbins_size == 0 or hbins_size % HBIN_ALIGNMENT:
        return None
    vector_at = SECTOR
    if data[vector_at : vector_at + 4] != DIRTY_VECTOR_SIGNATURE:
        return None
    bits = hbins_size // SECTOR
    bitmap = data[vector_at + 4 : vector_at + 4 + bits // 8]
    if len(bitmap) < bits // 8:
        return None
    page_at = -(-(vector_at + 4 + bits // 8) // SECTOR) * SECTOR
    pages = []
    for index in range(bits):
        if bitmap[index >> 3] >> (index & 7) & 1:
            if page_at + SECTOR > len(data):
                return None
            pages.append((index, bytes(data[page_at : page_at + SECTOR])))
            page_at += SECTOR
    return pages


def _finish(image: bytearray, sequence: int, hbins_size: int, *, flags_bit0: int | None) -> None:
    sequence &= 0xFFFFFFFF
    struct.pack_into("<II", image, 4, sequence, sequence)
    U32.pack_into(image, 28, FILE_TYPE_PRIMARY)
    U32.pack_into(image, 40, hbins_size)
    if flags_bit0 is not None:
        (flags,) = U32.unpack_from(image, BASE_FLAGS_OFFSET)
        U32.pack_into(image, BASE_FLAGS_OFFSET, (flags & ~1) | flags_bit0)
    del image[BASE_BLOCK_SIZE + hbins_size :]
    U32.pack_into(image, CHECKSUM_OFFSET, checksum(image))


# --- writing logs (used to build recovery test cases from the specification) --------------------
def log_base_block(primary_base: bytes | bytearray, *, sequence: int, file_type: int) -> bytes:
    """The 512-byte partial base block of a log: file type changed, both sequence numbers set."""
    block = bytearray(primary_base[:SECTOR])
    struct.pack_into("<II", block, 4, sequence, sequence)
    U32.pack_into(block, 28, file_type)
    U32.pack_into(block, CHECKSUM_OFFSET, checksum(block))
    return bytes(block)


def build_log_entry(
    sequence: int, hbins_size: int, pages: list[tuple[int, bytes]], flags: int = 0
) -> bytes:
    """One ``HvLE`` entry with correct Marvin32 hashes, padded to a multiple of 512 bytes."""
    refs = b"".join(PAGE_REFERENCE.pack(offset, len(page)) for offset, page in pages)
    body = refs + b"".join(page for _offset, page in pages)
    size = -(-(LOG_ENTRY_HEADER_SIZE + len(body)) // SECTOR) * SECTOR
    body = body.ljust(size - LOG_ENTRY_HEADER_SIZE, b"\0")
    hash1 = marvin32(body)
    head = struct.pack(
        "<4sIIIIIQ", LOG_ENTRY_SIGNATURE, size, flags, sequence, hbins_size, len(pages), hash1
    )
    return head + struct.pack("<Q", marvin32(head)) + body


def build_new_format_log(primary_base: bytes, entries: list[bytes], first_sequence: int) -> bytes:
    """A new-format log file: partial base block (type 6) followed by the given entries."""
    return log_base_block(primary_base, sequence=first_sequence, file_type=FILE_TYPE_LOG_NEW) + (
        b"".join(entries)
    )


def build_old_format_log(
    primary_base: bytes, hbins_size: int, dirty: dict[int, bytes], *, sequence: int
) -> bytes:
    """An old-format log: partial base block (type 1), ``DIRT`` bitmap, the 512-byte pages."""
    bits = hbins_size // SECTOR
    bitmap = bytearray(bits // 8)
    for index in dirty:
        bitmap[index >> 3] |= 1 << (index & 7)
    base = bytearray(primary_base[:SECTOR])
    U32.pack_into(base, 40, hbins_size)
    head = log_base_block(base, sequence=sequence, file_type=FILE_TYPE_LOG_OLD)
    vector = DIRTY_VECTOR_SIGNATURE + bytes(bitmap)
    vector = vector.ljust(-(-len(vector) // SECTOR) * SECTOR, b"\0")
    pages = b"".join(dirty[index].ljust(SECTOR, b"\0")[:SECTOR] for index in sorted(dirty))
    return head + vector + pages
