"""The VHDX metadata log ([MS-VHDX] 2.3): finding the active sequence, replaying it, writing it.

Reading (2.3.2, 2.3.3): the log is a circular buffer of 4 KiB sectors.  A log entry is valid when
its signature, length, LogGuid (equal to the header's), checksum (CRC-32C over the whole entry),
descriptors and data sectors (signature and split sequence number) all check.  A *sequence* is a
run of valid entries, each starting where the previous one ends (circularly) with a sequence
number one higher; it is complete when its last entry's ``Tail`` names the log offset of one of
its entries.  The active sequence is the complete sequence with the highest sequence number; its
entries from the tail through the head are replayed in order.  A file shorter than the head's
``FlushedFileOffset`` was truncated after the log was written: corrupt.  After replay the file is
at least ``LastFileOffset`` bytes long.

Writing: :class:`LogWriter` appends one entry per metadata commit, made of data descriptors for
whole 4 KiB pages.  Each entry's ``Tail`` is its own offset: the engine fsyncs before writing an
entry, which makes every earlier entry's in-place writes durable, so no earlier entry is ever
needed again.  Entries are at most a third of the log long; that way an entry that wraps to the
start of the log can never overwrite the previous entry, so a torn newest entry always leaves the
newest complete entry (whose pages are the current state) as the one that gets replayed.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from cimsnap.formats.vhdx.structs import (
    DATA_DESCRIPTOR,
    DATA_DESCRIPTOR_SIGNATURE,
    DATA_SECTOR_HEAD,
    DATA_SECTOR_PAYLOAD,
    DATA_SECTOR_SIGNATURE,
    DATA_SECTOR_TAIL,
    DESCRIPTOR_SIZE,
    LOG_SECTOR_SIZE,
    ZERO_DESCRIPTOR,
    ZERO_DESCRIPTOR_SIGNATURE,
    LogEntryHeader,
    checksum_with_field_zeroed,
    crc32c,
    descriptor_sectors,
)

# Largest log this engine will scan; Windows and qemu write 1 MiB logs.  A bigger (but valid)
# log is refused rather than read into memory whole.  Our choice, not the specification's.
MAX_SCANNED_LOG_LENGTH = 64 * 1024 * 1024
# A zero descriptor larger than this is treated as corrupt: replaying it would write that many
# zero bytes.  Our choice; real logs describe metadata pages, not gigabytes.
MAX_ZERO_DESCRIPTOR_LENGTH = 256 * 1024 * 1024


@dataclass
class LogWrite:
    """One replay action: ``data`` (4 KiB) at ``file_offset``, or ``zero_length`` zero bytes."""

    file_offset: int
    data: bytes | None = None
    zero_length: int = 0


@dataclass
class LogEntry:
    position: int
    header: LogEntryHeader
    writes: list[LogWrite]


@dataclass
class ReplayPlan:
    """What replaying the active sequence does to the file."""

    writes: list[LogWrite] = field(default_factory=list)
    flushed_file_offset: int = 0
    last_file_offset: int = 0
    head_sequence: int = 0
    entry_count: int = 0


def _circular(log: bytes, start: int, length: int) -> bytes:
    size = len(log)
    start %= size
    if start + length <= size:
        return log[start : start + length]
    return log[start:] + log[: start + length - size]


def parse_entry(log: bytes, position: int, log_guid: uuid.UUID) -> LogEntry | None:
    """The valid log entry at ``position`` (a multiple of 4 KiB), or None."""
    size = len(log)
    head = log[position : position + LogEntryHeader.FMT.size]
    if len(head) < LogEntryHeader.FMT.size:
        return None
    header = LogEntryHeader.unpack(head)
    if header is None:
        return None
    length = header.entry_length
    if length < LOG_SECTOR_SIZE or length % LOG_SECTOR_SIZE or length > size:
        return None
    if header.sequence_number == 0 or header.log_guid != log_guid:
        return None
    desc_sectors = descriptor_sectors(header.descriptor_count)
    total_sectors = length // LOG_SECTOR_SIZE
    if desc_sectors > total_sectors:
        return None
    entry = _circular(log, position, length)
    if checksum_with_field_zeroed(entry, LogEntryHeader.CHECKSUM_OFFSET) != header.checksum:
        return None
    seq = header.sequence_number
    writes: list[LogWrite] = []
    data_sector = desc_sectors
    for i in range(header.descriptor_count):
        off = LogEntryHeader.FMT.size + i * DESCRIPTOR_SIZE
        signature = entry[off : off + 4]
        if signature == DATA_DESCRIPTOR_SIGNATURE:
            _sig, trailing, leading, file_offset, dseq = DATA_DESCRIPTOR.unpack_from(entry, off)
            if dseq != seq or file_offset % LOG_SECTOR_SIZE or data_sector >= total_sectors:
                return None
            sector_at = data_sector * LOG_SECTOR_SIZE
            sector = entry[sector_at : sector_at + LOG_SECTOR_SIZE]
            dsig, seq_high = DATA_SECTOR_HEAD.unpack_from(sector)
            (seq_low,) = DATA_SECTOR_TAIL.unpack_from(sector, LOG_SECTOR_SIZE - 4)
            if dsig != DATA_SECTOR_SIGNATURE or (seq_high << 32 | seq_low) != seq:
                return None
            payload = sector[DATA_SECTOR_HEAD.size : DATA_SECTOR_HEAD.size + DATA_SECTOR_PAYLOAD]
            writes.append(LogWrite(file_offset, leading + payload + trailing))
            data_sector += 1
        elif signature == ZERO_DESCRIPTOR_SIGNATURE:
            _sig, _r, zero_length, file_offset, dseq = ZERO_DESCRIPTOR.unpack_from(entry, off)
            if dseq != seq or file_offset % LOG_SECTOR_SIZE or zero_length % LOG_SECTOR_SIZE:
                return None
            if zero_length > MAX_ZERO_DESCRIPTOR_LENGTH:
                return None
            writes.append(LogWrite(file_offset, None, zero_length))
        else:
            return None
    return LogEntry(position, header, writes)


def find_active_sequence(log: bytes, log_guid: uuid.UUID) -> ReplayPlan | None:
    """The replay plan of the active sequence in ``log`` (the whole log region), or None."""
    size = len(log)
    if size == 0 or size % LOG_SECTOR_SIZE:
        return None
    entries: dict[int, LogEntry] = {}
    for pos in range(0, size, LOG_SECTOR_SIZE):
        if log[pos : pos + 4] == b"loge":
            entry = parse_entry(log, pos, log_guid)
            if entry is not None:
                entries[pos] = entry

    def successor(entry: LogEntry) -> LogEntry | None:
        nxt = entries.get((entry.position + entry.header.entry_length) % size)
        if nxt is not None and nxt.header.sequence_number == entry.header.sequence_number + 1:
            return nxt
        return None

    has_predecessor = set()
    for entry in entries.values():
        nxt = successor(entry)
        if nxt is not None:
            has_predecessor.add(nxt.position)

    best: list[LogEntry] | None = None
    for start in entries.values():
        if start.position in has_predecessor:
            continue
        chain = [start]
        while len(chain) <= len(entries):
            nxt = successor(chain[-1])
            if nxt is None:
                break
            chain.append(nxt)
        # Every prefix of the chain ending at an entry whose tail lies in the prefix is a
        # complete sequence; the best one is the complete prefix with the highest head.
        positions: dict[int, int] = {}
        for i, entry in enumerate(chain):
            positions[entry.position] = i
            tail_index = positions.get(entry.header.tail)
            if tail_index is None:
                continue
            if best is None or entry.header.sequence_number > best[-1].header.sequence_number:
                best = chain[tail_index : i + 1]
    if best is None:
        return None
    head = best[-1].header
    plan = ReplayPlan(
        flushed_file_offset=head.flushed_file_offset,
        last_file_offset=head.last_file_offset,
        head_sequence=head.sequence_number,
        entry_count=len(best),
    )
    for entry in best:
        plan.writes.extend(entry.writes)
    return plan


def build_entry(
    pages: Sequence[tuple[int, bytes]],
    *,
    sequence_number: int,
    tail: int,
    log_guid: uuid.UUID,
    flushed_file_offset: int,
    last_file_offset: int,
) -> bytes:
    """One log entry holding ``pages`` (file offset, 4 KiB of data) as data descriptors."""
    count = len(pages)
    desc_sectors = descriptor_sectors(count)
    length = (desc_sectors + count) * LOG_SECTOR_SIZE
    buf = bytearray(length)
    header = LogEntryHeader(
        0, length, tail, sequence_number, count, log_guid, flushed_file_offset, last_file_offset
    )
    buf[: LogEntryHeader.FMT.size] = header.pack()
    seq_high, seq_low = sequence_number >> 32, sequence_number & 0xFFFFFFFF
    for i, (file_offset, data) in enumerate(pages):
        if len(data) != LOG_SECTOR_SIZE or file_offset % LOG_SECTOR_SIZE:
            raise ValueError("log pages are 4 KiB at 4 KiB-aligned offsets")
        DATA_DESCRIPTOR.pack_into(
            buf,
            LogEntryHeader.FMT.size + i * DESCRIPTOR_SIZE,
            DATA_DESCRIPTOR_SIGNATURE,
            bytes(data[-4:]),
            bytes(data[:8]),
            file_offset,
            sequence_number,
        )
        at = (desc_sectors + i) * LOG_SECTOR_SIZE
        DATA_SECTOR_HEAD.pack_into(buf, at, DATA_SECTOR_SIGNATURE, seq_high)
        buf[at + 8 : at + 8 + DATA_SECTOR_PAYLOAD] = data[8:-4]
        DATA_SECTOR_TAIL.pack_into(buf, at + LOG_SECTOR_SIZE - 4, seq_low)
    struct.pack_into("<I", buf, LogEntryHeader.CHECKSUM_OFFSET, crc32c(buf))
    return bytes(buf)


class LogWriter:
    """Appends entries to a log region for one write session (one LogGuid)."""

    def __init__(self, log_offset: int, log_length: int, log_guid: uuid.UUID) -> None:
        self.log_offset = log_offset
        self.log_length = log_length
        self.log_guid = log_guid
        self.sequence_number = 1
        self.head = 0
        self.max_entry_sectors = log_length // LOG_SECTOR_SIZE // 3
        pages = self.max_entry_sectors - 1
        while pages > 0 and descriptor_sectors(pages) + pages > self.max_entry_sectors:
            pages -= 1
        self.max_pages = pages

    def next_entry(self, pages: Sequence[tuple[int, bytes]], file_size: int) -> tuple[int, bytes]:
        """(file offset, bytes) of the next entry; the caller writes it, then fsyncs."""
        if len(pages) > self.max_pages:
            raise ValueError(f"at most {self.max_pages} pages fit in one log entry")
        sectors = descriptor_sectors(len(pages)) + len(pages)
        length = sectors * LOG_SECTOR_SIZE
        position = self.head if self.head + length <= self.log_length else 0
        data = build_entry(
            pages,
            sequence_number=self.sequence_number,
            tail=position,
            log_guid=self.log_guid,
            flushed_file_offset=file_size,
            last_file_offset=file_size,
        )
        self.head = position + length
        self.sequence_number += 1
        return self.log_offset + position, data
