"""$LogFile: a valid, empty, clean NTFS journal that costs two pages of storage.

Layout (LFS 1.1, after ntfs-3g ``logfile.h`` and the Linux ntfs3 driver's ``fslog.c``): two
identical restart pages (``RSTR``) at offsets 0 and one system page, each a multi-sector record
holding a restart area with one log client record named "NTFS"; log record pages (``RCRD``)
follow.

The choice made here (documented, see docs/ntfs-vs-mkntfs.md):

* mkntfs fills the whole log with 0xFF, the "empty log" marker, which every NTFS implementation
  accepts but which stores the whole log (tens of MiB) in a sparse image.
* We write the two restart pages only, with the client in the *free* list and none in use
  (``client_in_use_list = 0xFFFF``), current LSN 0, flags "volume clean".  A log whose restart area
  lists no client in use is a freshly initialised log: ntfs-3g treats it as clean without looking
  at log record pages (``ntfs_is_logfile_clean``), and LFS implementations modelled on Windows
  (ntfs3's ``log_replay``: "client_idx[1] == LFS_NO_CLIENT" -> initialise a new log instance)
  start a new log without reading any record page either.  The record pages therefore stay
  unwritten (zero), so the log costs 8 KiB, as Windows' own freshly formatted scratch disks suggest
  (~27 MB stored for a 20 GiB disk).
* ``format_volume(fill_log=True)`` writes 0xFF into the record pages instead (the content
  Windows keeps in unused log pages), for who prefers that to sparseness.

The restart area itself follows Windows 10's layout (client array at 0x40, area length 0xE0),
checked against a Windows-formatted volume in the tests.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cimsnap.formats.ntfs.errors import NtfsError
from cimsnap.formats.ntfs.records import align8, apply_fixups, remove_fixups, usa_count_for

LOG_PAGE_SIZE = 4096
RSTR_MAGIC = b"RSTR"
# Restart page header: magic, USA offset, USA count, chkdsk LSN, system page size, log page
# size, restart area offset, minor version, major version; USA follows at 0x1E.
_RESTART_PAGE = struct.Struct("<4sHHQIIHhh")
RESTART_USA_OFFSET = 0x1E
# Restart area: current LSN, log clients, client free list, client in-use list, flags,
# sequence number bits, restart area length, client array offset, file size, last LSN data
# length, log record header length, log page data offset, restart log open count, reserved.
_RESTART_AREA = struct.Struct("<QHHHHIHHqIHHII")
# Log client record: oldest LSN, client restart LSN, previous, next, sequence number, reserved,
# client name length in bytes, name (64 UTF-16 units).
_CLIENT = struct.Struct("<QQHHH6xI128s")
NO_CLIENT = 0xFFFF
RESTART_VOLUME_IS_CLEAN = 0x0002
# Where the client array starts in the restart area: 0x40, as Windows 10 writes it (the restart
# area of Windows XP's LFS ended at 0x30; readers take the offset from the header).
RESTART_AREA_CLIENTS = 0x40
LOG_RECORD_HEADER_LENGTH = 0x30
# Log record pages: header 0x28 bytes + USA, rounded to 8 (0x40 for 4 KiB pages).
LOG_PAGE_DATA_OFFSET = align8(0x28 + 2 * usa_count_for(LOG_PAGE_SIZE))
MIN_LOG_SIZE = 2 * LOG_PAGE_SIZE + 48 * LOG_PAGE_SIZE  # ntfs-3g: two restart + 48 record pages


def sequence_number_bits(file_size: int) -> int:
    return 67 - file_size.bit_length()


def restart_page(file_size: int, *, open_count: int, usn: int = 1) -> bytes:
    """One restart page (both copies are identical) for a log of ``file_size`` bytes."""
    if file_size < MIN_LOG_SIZE or file_size % LOG_PAGE_SIZE:
        raise NtfsError(f"invalid $LogFile size {file_size}")
    usa_count = usa_count_for(LOG_PAGE_SIZE)
    ra_offset = align8(RESTART_USA_OFFSET + 2 * usa_count)  # 0x30
    client_offset = RESTART_AREA_CLIENTS
    ra_length = client_offset + _CLIENT.size
    page = bytearray(LOG_PAGE_SIZE)
    _RESTART_PAGE.pack_into(
        page, 0, RSTR_MAGIC, RESTART_USA_OFFSET, usa_count, 0, LOG_PAGE_SIZE, LOG_PAGE_SIZE,
        ra_offset, 1, 1,
    )  # fmt: skip
    _RESTART_AREA.pack_into(
        page,
        ra_offset,
        0,  # current LSN: nothing logged yet
        1,  # one client slot
        0,  # ... which is free
        NO_CLIENT,  # and none is in use: a freshly initialised log
        RESTART_VOLUME_IS_CLEAN,
        sequence_number_bits(file_size),
        ra_length,
        client_offset,
        file_size,
        0,
        LOG_RECORD_HEADER_LENGTH,
        LOG_PAGE_DATA_OFFSET,
        open_count,
        0,
    )
    _CLIENT.pack_into(
        page,
        ra_offset + client_offset,
        0,
        0,
        NO_CLIENT,
        NO_CLIENT,
        0,
        8,
        "NTFS".encode("utf-16-le"),
    )
    apply_fixups(page, RESTART_USA_OFFSET, usn)
    return bytes(page)


@dataclass(frozen=True)
class RestartArea:
    major: int
    minor: int
    current_lsn: int
    file_size: int
    clean: bool  # no client in use, or the clean flag set


def parse_restart_page(raw: bytes, *, offset: int | None = None) -> RestartArea:
    """Check one restart page the way ntfs-3g's ``ntfs_check_logfile`` does."""
    if raw[:4] != RSTR_MAGIC:
        raise NtfsError("$LogFile restart page has no RSTR signature", offset=offset)
    _m, usa_off, usa_count, chkdsk_lsn, sys_page, log_page, ra_off, minor, major = (
        _RESTART_PAGE.unpack_from(raw)
    )
    if sys_page != len(raw) or log_page < 512 or log_page & (log_page - 1):
        raise NtfsError("$LogFile restart page has invalid page sizes", offset=offset)
    if usa_count != usa_count_for(sys_page) or ra_off % 8 or ra_off < usa_off + 2 * usa_count:
        raise NtfsError("$LogFile restart page has an inconsistent header", offset=offset)
    if chkdsk_lsn:
        raise NtfsError("$LogFile restart page carries a chkdsk LSN", offset=offset)
    page = bytearray(raw)
    remove_fixups(page, what="$LogFile restart page", offset=offset)
    if ra_off + _RESTART_AREA.size > len(page):
        raise NtfsError("$LogFile restart area lies outside its page", offset=offset)
    (
        current_lsn,
        clients,
        free_list,
        in_use_list,
        flags,
        seq_bits,
        ra_len,
        client_off,
        file_size,
        _last_len,
        rec_hdr_len,
        data_off,
        _open_count,
        _reserved,
    ) = _RESTART_AREA.unpack_from(page, ra_off)
    if client_off % 8 or ra_off + client_off + clients * _CLIENT.size > sys_page:
        raise NtfsError("$LogFile client array lies outside its page", offset=offset)
    if ra_len < client_off + clients * _CLIENT.size:
        raise NtfsError("$LogFile restart area length is inconsistent", offset=offset)
    for lst in (free_list, in_use_list):
        if lst != NO_CLIENT and lst >= clients:
            raise NtfsError("$LogFile client list points outside the array", offset=offset)
    if seq_bits != sequence_number_bits(file_size):
        raise NtfsError("$LogFile sequence number bits do not match its size", offset=offset)
    if rec_hdr_len % 8 or data_off % 8:
        raise NtfsError("$LogFile restart area has misaligned lengths", offset=offset)
    clean = in_use_list == NO_CLIENT or bool(flags & RESTART_VOLUME_IS_CLEAN)
    return RestartArea(major, minor, current_lsn, file_size, clean)


def default_log_size(volume_bytes: int, cluster_size: int) -> int:
    """Our $LogFile size for a volume: 1/128 of it, between 2 MiB and 64 MiB (at most a third
    of a tiny volume).

    Windows' own sizing rule is not public: it gave a 7 MiB volume 2 MiB (Windows 10, in the test
    data) and uses 64 MiB on large volumes; unwritten pages cost nothing, so only the order of
    magnitude matters.
    """
    size = min(64 << 20, max(2 << 20, volume_bytes // 128), max(MIN_LOG_SIZE, volume_bytes // 3))
    unit = max(cluster_size, LOG_PAGE_SIZE)
    return size // unit * unit
