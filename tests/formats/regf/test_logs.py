"""Transaction logs: Marvin32, recovery of Windows' NewDirtyHive1, logs built from the spec."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from cimsnap.formats.regf import Hive, RegfError, RegType
from cimsnap.formats.regf.logs import (
    build_log_entry,
    build_new_format_log,
    build_old_format_log,
    needs_recovery,
    new_format_entries,
)
from cimsnap.formats.regf.marvin import marvin32
from cimsnap.formats.regf.structures import checksum

PAGE = 4096


@pytest.fixture(scope="module")
def dirty_dir(testdata: Path) -> Path:
    return testdata / "registry" / "yarp" / "NewDirtyHive1"


def test_marvin32_matches_windows_log_entries(dirty_dir: Path) -> None:
    checked = 0
    for name in ("NewDirtyHive.LOG1", "NewDirtyHive.LOG2"):
        data = (dirty_dir / name).read_bytes()
        pos = 512
        while data[pos : pos + 4] == b"HvLE":
            size = struct.unpack_from("<I", data, pos + 4)[0]
            hash1, hash2 = struct.unpack_from("<QQ", data, pos + 24)
            assert marvin32(data[pos + 40 : pos + size]) == hash1
            assert marvin32(data[pos : pos + 32]) == hash2
            checked += 1
            pos += size
    assert checked == 4


def test_marvin32_tail_lengths_differ() -> None:
    hashes = {marvin32(b"abcdefg"[:n]) for n in range(8)}
    assert len(hashes) == 8


def test_windows_dirty_hive_before_recovery(dirty_dir: Path) -> None:
    hive = Hive.open(dirty_dir / "NewDirtyHive", recover=False)
    assert hive.dirty
    assert {k.path for k in hive.walk()} == {"", "Key1", "Key2", "Key2\\Key2_1", "Key2\\Key2_2"}
    assert hive.key("Key1").value("").data == ("1" * 6000 + "\0").encode("utf-16-le")  # type: ignore[union-attr]
    assert hive.key("Key2").value("v").data == "testTEST\0".encode("utf-16-le")  # type: ignore[union-attr]


@pytest.mark.parametrize("order", [("LOG1", "LOG2"), ("LOG2", "LOG1")])
def test_windows_dirty_hive_recovery(dirty_dir: Path, order: tuple[str, str]) -> None:
    primary = (dirty_dir / "NewDirtyHive").read_bytes()
    logs = [(f"NewDirtyHive.{n}", (dirty_dir / f"NewDirtyHive.{n}").read_bytes()) for n in order]
    hive = Hive.from_bytes(primary, source="NewDirtyHive", logs=logs)
    assert len(hive.recovered_from) == 2
    windows = (dirty_dir / "RecoveredHive_Windows10").read_bytes()
    mine = hive.to_bytes()
    assert mine[PAGE:] == windows[PAGE : PAGE + hive.hbins_size]
    assert not any(windows[PAGE + hive.hbins_size :])  # the rest of Windows' file is padding
    assert {k.path for k in hive.walk()} == {
        "",
        "Key3",
        "Key3\\Key3_1",
        "Key3\\Key3_2",
        "Key3\\Key3_3",
    }
    assert hive.key("Key3").value("").data == ("1" * 1440 + "\0").encode("utf-16-le")  # type: ignore[union-attr]


def test_windows_dirty_hive_opened_from_disk(dirty_dir: Path, tmp_path: Path) -> None:
    for name in ("NewDirtyHive", "NewDirtyHive.LOG1", "NewDirtyHive.LOG2"):
        (tmp_path / name.replace("LOG", "log")).write_bytes((dirty_dir / name).read_bytes())
    hive = Hive.open(tmp_path / "NewDirtyHive")  # log names are matched case-insensitively
    assert [p.name for p in hive.recovered_from] == ["NewDirtyHive.log1", "NewDirtyHive.log2"]
    assert hive.find_key("Key3\\Key3_3") is not None


# --- logs built from the specification ----------------------------------------------------------
FILETIME = 0x01D2_0000_0000_0000


def _versions() -> tuple[bytes, bytes, bytes]:
    """A saved hive (v1), the same after some edits (va) and after more edits (v2)."""
    hive = Hive.create(root_name="LOGTEST")
    hive.set_clock(lambda: FILETIME)
    for i in range(40):
        hive.set_value(f"Old\\K{i}", "v", RegType.REG_SZ, f"old value {i}")
    v1 = hive.to_bytes()
    hive.delete_key("Old\\K3")
    for i in range(60):
        hive.set_value(f"New\\K{i}", "v", RegType.REG_DWORD, i)
    va = hive.to_bytes()
    hive.set_value("New", "big", RegType.REG_BINARY, bytes(range(256)) * 200)
    hive.set_value("Old\\K7", "v", RegType.REG_SZ, "changed")
    v2 = hive.to_bytes()
    return v1, va, v2


def _make_dirty(v1: bytes) -> bytes:
    """v1 as Windows leaves it mid-write: primary sequence number bumped, checksum valid."""
    image = bytearray(v1)
    seq1, _seq2 = struct.unpack_from("<II", image, 4)
    struct.pack_into("<I", image, 4, seq1 + 1)
    struct.pack_into("<I", image, 508, checksum(image))
    return bytes(image)


def _dirty_pages(v1: bytes, v2: bytes, size: int) -> list[tuple[int, bytes]]:
    old = v1[PAGE:].ljust(len(v2) - PAGE, b"\0")
    new = v2[PAGE:]
    return [
        (off, new[off : off + size])
        for off in range(0, len(new), size)
        if old[off : off + size] != new[off : off + size]
    ]


def _tree(hive: Hive) -> dict[str, dict[str, bytes]]:
    return {k.path: {v.name: v.data for v in k.values()} for k in hive.walk()}


Versions = tuple[bytes, bytes, bytes]


@pytest.fixture(scope="module")
def versions() -> Versions:
    return _versions()


def _hbins(image: bytes) -> int:
    return int(struct.unpack_from("<I", image, 40)[0])


def _new_format_logs(versions: Versions) -> tuple[bytes, bytes, int]:
    """LOG1 holds the entry v1 -> va, LOG2 the entry va -> v2 (Windows alternates logs)."""
    v1, va, v2 = versions
    seq = struct.unpack_from("<I", v1, 8)[0]
    first = build_log_entry(seq, _hbins(va), _dirty_pages(v1, va, PAGE))
    second = build_log_entry(seq + 1, _hbins(v2), _dirty_pages(va, v2, PAGE))
    log1 = build_new_format_log(v1[:512], [first], seq)
    log2 = build_new_format_log(v1[:512], [second], seq + 1)
    return log1, log2, seq


def test_spec_new_format_recovery_across_two_logs(versions: Versions) -> None:
    v1, _va, v2 = versions
    primary = _make_dirty(v1)
    assert needs_recovery(primary)
    log1, log2, seq = _new_format_logs(versions)
    for logs in ([("H.LOG1", log1), ("H.LOG2", log2)], [("H.LOG1", log2), ("H.LOG2", log1)]):
        hive = Hive.from_bytes(primary, logs=logs)
        assert hive.sequence_numbers == (seq + 2, seq + 2)
        assert bytes(hive._buf[PAGE:]) == v2[PAGE:]
        assert _tree(hive) == _tree(Hive.from_bytes(v2))
        assert hive.check() == []


def test_spec_new_format_stops_at_bad_hash(versions: Versions) -> None:
    v1, va, _v2 = versions
    primary = _make_dirty(v1)
    log1, log2, seq = _new_format_logs(versions)
    broken = bytearray(log2)
    broken[512 + 200] ^= 0xFF  # inside the second entry's page data: Hash-1 no longer matches
    assert new_format_entries(bytes(broken)) == []
    hive = Hive.from_bytes(primary, logs=[("H.LOG1", log1), ("H.LOG2", bytes(broken))])
    assert hive.sequence_numbers == (seq + 1, seq + 1)  # only the first entry was applied
    assert len(hive.recovered_from) == 1
    assert bytes(hive._buf[PAGE:]) == va[PAGE:]


def test_spec_new_format_stops_at_gap(versions: Versions) -> None:
    v1, va, v2 = versions
    seq = struct.unpack_from("<I", v1, 8)[0]
    entries = [
        build_log_entry(seq, _hbins(va), _dirty_pages(v1, va, PAGE)),
        build_log_entry(seq + 2, _hbins(v2), _dirty_pages(va, v2, PAGE)),
    ]
    log = build_new_format_log(v1[:512], entries, seq)
    hive = Hive.from_bytes(_make_dirty(v1), logs=[("H.LOG1", log)])
    assert hive.sequence_numbers == (seq + 1, seq + 1)
    assert bytes(hive._buf[PAGE:]) == va[PAGE:]


def test_spec_new_format_with_damaged_primary_base_block(versions: Versions) -> None:
    v1, _va, v2 = versions
    seq = struct.unpack_from("<I", v1, 8)[0]
    whole = build_new_format_log(
        v1[:512], [build_log_entry(seq, _hbins(v2), _dirty_pages(v1, v2, PAGE))], seq
    )
    primary = bytearray(_make_dirty(v1))
    primary[100] ^= 0x55  # base block checksum now wrong: the base block comes from the log
    hive = Hive.from_bytes(bytes(primary), logs=[("H.LOG1", whole)])
    assert bytes(hive._buf[PAGE:]) == v2[PAGE:]
    assert hive.sequence_numbers == (seq + 1, seq + 1)


def test_spec_old_format_recovery(versions: Versions) -> None:
    v1, _va, v2 = versions
    seq = struct.unpack_from("<I", v1, 4)[0]
    hbins = _hbins(v2)
    dirty = {off // 512: page for off, page in _dirty_pages(v1, v2, 512)}
    log = build_old_format_log(v1[:512], hbins, dirty, sequence=seq + 1)
    hive = Hive.from_bytes(_make_dirty(v1), logs=[("H.LOG", log)])
    assert bytes(hive._buf[PAGE:]) == v2[PAGE:]
    assert _tree(hive) == _tree(Hive.from_bytes(v2))
    # a log whose timestamp is not the primary's does not apply
    stale = bytearray(log)
    struct.pack_into("<Q", stale, 12, 1)
    struct.pack_into("<I", stale, 508, checksum(stale))
    with pytest.raises(RegfError, match="none of its transaction logs applies"):
        Hive.from_bytes(_make_dirty(v1), logs=[("H.LOG", bytes(stale))], strict=True)
    # not strict: read as it is, with the reason among the warnings
    as_is = Hive.from_bytes(_make_dirty(v1), logs=[("H.LOG", bytes(stale))])
    assert as_is.dirty and any("not applied" in w for w in as_is.warnings)
    assert bytes(as_is._buf[PAGE:]) == v1[PAGE:]


def test_clean_hive_ignores_logs(versions: Versions, tmp_path: Path) -> None:
    v1 = versions[0]
    log1, _log2, _seq = _new_format_logs(versions)
    (tmp_path / "H").write_bytes(v1)
    (tmp_path / "H.LOG1").write_bytes(log1)
    hive = Hive.open(tmp_path / "H")
    assert hive.recovered_from == []
    assert bytes(hive._buf) == v1


def test_dirty_hive_without_logs(versions: Versions, tmp_path: Path) -> None:
    v1 = versions[0]
    (tmp_path / "H").write_bytes(_make_dirty(v1))
    hive = Hive.open(tmp_path / "H")
    assert hive.dirty and "sequence numbers differ" in hive.warnings[0]
    with pytest.raises(RegfError, match="dirty"):
        Hive.open(tmp_path / "H", strict=True)
    # saving writes a clean hive
    hive.save()
    assert not Hive.open(tmp_path / "H", strict=True).dirty
