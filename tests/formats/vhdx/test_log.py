"""The metadata log: images left dirty the way [MS-VHDX] 2.3 describes read with the log applied.

The dirty images are built here with an encoder written from the specification (independent of
the engine's own log writer), and qemu-img's log replay (``check -r all``) is the oracle.
"""

from __future__ import annotations

import shutil
import struct
import uuid
from pathlib import Path

import crc32c
import pytest

from cimsnap.formats.vhdx import VhdxError, check, create, open_disk
from cimsnap.formats.vhdx.log import LogWriter, find_active_sequence
from tests.conftest import require_tool
from tests.formats.vhdx.helpers import pattern, qemu_raw, run

MiB = 1 << 20
LOG_OFFSET = MiB  # where create() puts the 1 MiB log
BAT_OFFSET = 3 * MiB


def spec_entry(
    seq: int,
    tail: int,
    log_guid: uuid.UUID,
    pages: list[tuple[int, bytes]],
    zeros: list[tuple[int, int]] = (),  # type: ignore[assignment]
    *,
    flushed: int,
    last: int,
) -> bytes:
    """A log entry per [MS-VHDX] 2.3.1: header, descriptors, data sectors, CRC-32C."""
    count = len(pages) + len(zeros)
    desc_sectors = -(-(64 + 32 * count) // 4096)
    length = (desc_sectors + len(pages)) * 4096
    head = struct.pack(
        "<4sIIIQII16sQQ", b"loge", 0, length, tail, seq, count, 0, log_guid.bytes_le, flushed, last
    )
    descs = b""
    sectors = b""
    for offset, data in pages:
        descs += struct.pack("<4s4s8sQQ", b"desc", data[4092:], data[:8], offset, seq)
        sectors += b"data" + struct.pack("<I", seq >> 32) + data[8:4092]
        sectors += struct.pack("<I", seq & 0xFFFFFFFF)
    for offset, n in zeros:
        descs += struct.pack("<4sIQQQ", b"zero", 0, n, offset, seq)
    first = (head + descs).ljust(desc_sectors * 4096, b"\0")
    entry = bytearray(first + sectors)
    struct.pack_into("<I", entry, 4, crc32c.crc32c(bytes(entry)))
    return bytes(entry)


def set_log_guid(path: Path, log_guid: uuid.UUID) -> None:
    """Rewrite the non-current header with ``log_guid`` and a higher sequence number."""
    with path.open("r+b") as f:
        headers = []
        for off in (64 * 1024, 128 * 1024):
            f.seek(off)
            headers.append(bytearray(f.read(4096)))
        seqs = [struct.unpack_from("<Q", h, 8)[0] for h in headers]
        cur = 0 if seqs[0] > seqs[1] else 1
        new = bytearray(headers[cur])
        struct.pack_into("<Q", new, 8, seqs[cur] + 1)
        new[48:64] = log_guid.bytes_le
        struct.pack_into("<I", new, 4, 0)
        struct.pack_into("<I", new, 4, crc32c.crc32c(bytes(new)))
        f.seek((64 if cur == 1 else 128) * 1024)
        f.write(new)


def _dirty_image(tmp_path: Path) -> tuple[Path, bytes, uuid.UUID]:
    """A disk whose pending log maps block 5 to data past the old end of file."""
    path = tmp_path / "dirty.vhdx"
    create(path, 16 * MiB)
    size = path.stat().st_size
    data = pattern(1, MiB)
    with path.open("r+b") as f:
        f.seek(size)  # the payload block, written before the log entry, like Windows does
        f.write(data)
        f.seek(BAT_OFFSET)
        bat_page = bytearray(f.read(4096))
    struct.pack_into("<Q", bat_page, 5 * 8, (size >> 20) << 20 | 6)  # block 5 fully present
    guid = uuid.uuid4()
    entry = spec_entry(
        1, 0, guid, [(BAT_OFFSET, bytes(bat_page))], flushed=size + MiB, last=size + MiB
    )
    with path.open("r+b") as f:
        f.seek(LOG_OFFSET)
        f.write(entry)
    set_log_guid(path, guid)
    return path, data, guid


def test_read_only_open_applies_pending_log_in_memory(tmp_path: Path) -> None:
    path, data, _ = _dirty_image(tmp_path)
    before = path.read_bytes()
    with open_disk(path) as disk:
        assert disk.replayed_log is not None and disk.replayed_log.entry_count == 1
        assert disk.read_at(5 * MiB, MiB) == data
        assert disk.read_at(4 * MiB, MiB) == bytes(MiB)
    check(path)
    assert path.read_bytes() == before  # nothing written by a read-only open


def test_qemu_log_replay_agrees_with_engine(tmp_path: Path) -> None:
    require_tool("qemu-img")
    path, data, _ = _dirty_image(tmp_path)
    with open_disk(path) as disk:
        ours = disk.read_at(0, disk.size)
    theirs = tmp_path / "qemu.vhdx"
    shutil.copyfile(path, theirs)
    proc = run("qemu-img", "check", "-r", "all", theirs)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert qemu_raw(theirs, tmp_path / "q.raw") == ours
    assert ours[5 * MiB : 6 * MiB] == data


def test_writable_open_replays_in_place_and_clears_log_guid(tmp_path: Path) -> None:
    path, data, _ = _dirty_image(tmp_path)
    with open_disk(path) as disk:
        data_write_guid = disk.data_write_guid
    with open_disk(path, writable=True) as disk:
        assert disk.header.log_guid.int == 0
        assert disk.data_write_guid == data_write_guid  # replay is not a data modification
    with open_disk(path) as disk:
        assert disk.replayed_log is None
        assert disk.read_at(5 * MiB, MiB) == data
    require_tool("qemu-img")
    assert run("qemu-img", "check", path).returncode == 0  # qemu opens it without replaying
    assert qemu_raw(path, tmp_path / "q.raw")[5 * MiB : 6 * MiB] == data


def _log_region(path: Path) -> tuple[bytes, uuid.UUID]:
    with open_disk(path) as disk:
        guid = disk.header.log_guid
    with path.open("rb") as f:
        f.seek(LOG_OFFSET)
        return f.read(MiB), guid


def test_active_sequence_rules(tmp_path: Path) -> None:
    guid, other = uuid.uuid4(), uuid.uuid4()
    page = lambda n: (BAT_OFFSET + n * 4096, pattern(n, 4096))  # noqa: E731
    log = bytearray(MiB)
    e1 = spec_entry(7, 0, guid, [page(1)], flushed=0, last=0)
    e2 = spec_entry(8, 0, guid, [page(2)], flushed=0, last=0)  # tail -> e1: both replayed
    log[0 : len(e1)] = e1
    log[len(e1) : len(e1) + len(e2)] = e2
    plan = find_active_sequence(bytes(log), guid)
    assert plan is not None and plan.entry_count == 2 and plan.head_sequence == 8
    assert [w.file_offset for w in plan.writes] == [BAT_OFFSET + 4096, BAT_OFFSET + 8192]
    # Another LogGuid's entries are not part of this file's log.
    assert find_active_sequence(bytes(log), other) is None
    # A torn newer entry (bad checksum) is ignored; the complete sequence before it stands.
    e3 = bytearray(spec_entry(9, len(e1) + len(e2), guid, [page(3)], flushed=0, last=0))
    e3[-1] ^= 1
    log[len(e1) + len(e2) : len(e1) + len(e2) + len(e3)] = e3
    plan = find_active_sequence(bytes(log), guid)
    assert plan is not None and plan.head_sequence == 8
    # A sequence whose head's tail lies outside it is incomplete.
    lone = spec_entry(20, 4096 * 100, guid, [page(4)], flushed=0, last=0)
    log2 = bytearray(MiB)
    log2[8192 * 10 : 8192 * 10 + len(lone)] = lone
    assert find_active_sequence(bytes(log2), guid) is None
    # An entry wrapping around the end of the circular log is read across the seam.
    wrap = spec_entry(
        30, MiB - 4096, guid, [page(5)], zeros=[(BAT_OFFSET, 8192)], flushed=0, last=0
    )
    log3 = bytearray(MiB)
    log3[MiB - 4096 :] = wrap[:4096]
    log3[: len(wrap) - 4096] = wrap[4096:]
    plan = find_active_sequence(bytes(log3), guid)
    assert plan is not None and plan.head_sequence == 30
    assert plan.writes[0].data == pattern(5, 4096)
    assert plan.writes[1].zero_length == 8192


def test_entries_from_the_engine_writer_parse_as_spec_entries() -> None:
    guid = uuid.uuid4()
    writer = LogWriter(LOG_OFFSET, MiB, guid)
    log = bytearray(MiB)
    pages = [(BAT_OFFSET + i * 4096, pattern(i, 4096)) for i in range(3)]
    for _ in range(40):  # enough to wrap around the log several times
        at, entry = writer.next_entry(pages, 50 * MiB)
        log[at - LOG_OFFSET : at - LOG_OFFSET + len(entry)] = entry
        plan = find_active_sequence(bytes(log), guid)
        assert plan is not None and plan.writes and plan.entry_count == 1
        assert plan.head_sequence == writer.sequence_number - 1
        assert [w.data for w in plan.writes] == [p[1] for p in pages]
    assert spec_entry(5, 0, guid, pages, flushed=1, last=2)[8:] != b""  # encoder sanity


def test_truncated_file_with_pending_log_is_refused(tmp_path: Path) -> None:
    path, _, _ = _dirty_image(tmp_path)
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size - MiB)  # lose the block the log entry needs
    with pytest.raises(VhdxError, match="truncated"):
        open_disk(path)


def test_log_entry_aimed_at_the_headers_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.vhdx"
    create(path, 16 * MiB)
    guid = uuid.uuid4()
    entry = spec_entry(1, 0, guid, [(64 * 1024, bytes(4096))], flushed=0, last=0)
    with path.open("r+b") as f:
        f.seek(LOG_OFFSET)
        f.write(entry)
    set_log_guid(path, guid)
    with pytest.raises(VhdxError, match="headers"):
        open_disk(path)


def test_log_guid_without_entries_opens_as_clean(tmp_path: Path) -> None:
    """A crash right after the header switch and before any entry: nothing to replay."""
    path = tmp_path / "d.vhdx"
    create(path, 16 * MiB)
    set_log_guid(path, uuid.uuid4())
    with open_disk(path) as disk:
        assert disk.replayed_log is None
        assert disk.read_at(0, 4096) == bytes(4096)
    with open_disk(path, writable=True) as disk:
        disk.write_at(0, b"ok")
    with open_disk(path) as disk:
        assert disk.read_at(0, 2) == b"ok" and disk.header.log_guid.int == 0
