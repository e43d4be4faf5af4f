"""The writer: structure of what it writes (lists, hashes, sk sharing, maxima, big data, space)."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cimsnap.errors import FormatError, NotFoundError, UsageError
from cimsnap.formats.regf import Hive, RegType
from cimsnap.formats.regf.security import DEFAULT_SECURITY_DESCRIPTOR
from cimsnap.formats.secdesc import sd_to_sddl, sddl_to_sd

BASE = 4096


def _spec_hash(name: str) -> int:
    """The lh hash exactly as the spec words it (names here are ASCII)."""
    h = 0
    for ch in name.upper():
        h = (37 * h + ord(ch)) & 0xFFFFFFFF
    return h


def _leaf_entries(hive: Hive, list_offset: int) -> list[tuple[bytes, list[tuple[int, int]]]]:
    """[(signature, [(nk offset, hash or hint)])] for a list, expanding an index root."""
    buf = bytes(hive._buf)
    pos = BASE + list_offset + 4
    sig, count = struct.unpack_from("<2sH", buf, pos)
    if sig == b"ri":
        leaves = struct.unpack_from(f"<{count}I", buf, pos + 4)
        return [_leaf_entries(hive, leaf)[0] for leaf in leaves]
    pairs = struct.unpack_from(f"<{2 * count}I", buf, pos + 4)
    return [(sig, list(zip(pairs[0::2], pairs[1::2], strict=True)))]


def _list_offset(hive: Hive, path: str) -> int:
    key = hive.key(path)
    return int(struct.unpack_from("<I", hive._buf, key._pos + 28)[0])


def test_new_hive_layout() -> None:
    hive = Hive.from_bytes(Hive.create(root_name="Fresh").to_bytes())
    assert hive.root.offset == 0x20  # first cell of the first bin, like Windows
    assert hive.root.name == "Fresh"
    assert hive.root.flags & 0x2C == 0x2C  # hive entry, no delete, compressed name
    assert hive.root.security_descriptor == DEFAULT_SECURITY_DESCRIPTOR
    assert hive.minor_version == 5 and hive.sequence_numbers == (2, 2)
    assert hive.check() == []


# The new-hive root descriptor is our choice (regf/security.py), written in SDDL and laid out
# owner, group, DACL; hives already written carry these exact bytes, so they must not drift.
DEFAULT_ROOT_SDDL = "O:BAG:SYD:(A;CI;KA;;;SY)(A;CI;KA;;;BA)(A;CI;KR;;;BU)(A;CIIO;GA;;;CO)"
DEFAULT_ROOT_SD = (
    "01000480 14000000 24000000 00000000 30000000"  # header: owner 0x14, group 0x24, DACL 0x30
    "01020000000000052000000020020000"  # owner BA
    "010100000000000512000000"  # group SY
    "02006000 0400 0000"  # ACL revision 2, 0x60 bytes, 4 ACEs
    "00021400 3f000f00 010100000000000512000000"
    "00021800 3f000f00 01020000000000052000000020020000"
    "00021800 19000200 01020000000000052000000021020000"
    "000a1400 00000010 010100000000000300000000"
)


def test_default_root_security_descriptor_is_stable() -> None:
    assert bytes.fromhex(DEFAULT_ROOT_SD) == DEFAULT_SECURITY_DESCRIPTOR
    assert sd_to_sddl(DEFAULT_SECURITY_DESCRIPTOR) == DEFAULT_ROOT_SDDL


def test_hash_leaves_sorted_with_spec_hashes() -> None:
    hive = Hive.create()
    names = ["zeta", "Alpha", "beta", "ALPHA2", "a", "_under", "Zz", "m1", "M0"]
    for name in names:
        hive.create_key(f"P\\{name}")
    hive = Hive.from_bytes(hive.to_bytes())
    [(sig, entries)] = _leaf_entries(hive, _list_offset(hive, "P"))
    assert sig == b"lh"
    got = [(hive._key_name(offset), h) for offset, h in entries]
    assert [n for n, _h in got] == sorted(names, key=str.upper)
    assert all(h == _spec_hash(n) for n, h in got)


def test_index_root_for_many_subkeys() -> None:
    hive = Hive.create()
    for i in range(1500):
        hive.create_key(f"P\\k{i:05}")
    hive = Hive.from_bytes(hive.to_bytes())
    leaves = _leaf_entries(hive, _list_offset(hive, "P"))
    assert len(leaves) == 3 and all(sig == b"lh" and len(e) <= 507 for sig, e in leaves)
    names = [hive._key_name(o) for _sig, entries in leaves for o, _h in entries]
    assert names == [f"k{i:05}" for i in range(1500)]
    assert hive.key("P").subkey_count == 1500


def test_regf_1_3_hive_uses_fast_leaves_and_no_big_data() -> None:
    hive = Hive.create(minor_version=3)
    for name in ("Key", "ab", "Zäh"):
        hive.create_key(f"P\\{name}")
    hive.set_value("P", "big", RegType.REG_BINARY, b"\x42" * 40000)
    hive = Hive.from_bytes(hive.to_bytes())
    [(sig, entries)] = _leaf_entries(hive, _list_offset(hive, "P"))
    assert sig == b"lf"
    hints = [struct.pack("<I", h) for _o, h in entries]
    assert hints == [b"ab\0\0", b"Key\0", b"Z\xe4h\0"]
    big = hive.key("P").value("big")
    assert big is not None and big.data == b"\x42" * 40000
    pos, length = hive._cells.cell(big._data_offset, "data")
    assert hive._buf[pos : pos + 2] != b"db" and length >= 40000


def test_big_data_boundaries() -> None:
    hive = Hive.create()
    for size in (16343, 16344, 16345, 16344 * 3, 16344 * 3 + 1):
        hive.set_value("B", str(size), RegType.REG_BINARY, bytes([size % 251]) * size)
    hive = Hive.from_bytes(hive.to_bytes())
    for value in hive.key("B").values():
        size = int(value.name)
        assert value.data == bytes([size % 251]) * size
        pos, _length = hive._cells.cell(value._data_offset, "data")
        is_db = hive._buf[pos : pos + 2] == b"db"
        assert is_db == (size > 16344)
        if is_db:
            count = struct.unpack_from("<H", hive._buf, pos + 2)[0]
            assert count == -(-size // 16344)


def test_security_descriptors_are_shared_and_counted() -> None:
    hive = Hive.create()
    for i in range(10):
        hive.create_key(f"A\\{i}")
    other = sddl_to_sd("O:SYG:SYD:(A;CI;KA;;;SY)")
    hive.set_security_descriptor(hive.key("A\\3"), other)
    hive.set_security_descriptor(hive.key("A\\4"), other)
    child = hive.create_key("A\\3\\child")  # takes its parent's descriptor
    assert child.security_descriptor == other
    items = {d: count for _o, count, d in hive.security_items()}
    assert items == {DEFAULT_SECURITY_DESCRIPTOR: 10, other: 3}
    hive.delete_key("A\\3")
    hive.delete_key("A\\4")
    items = {d: count for _o, count, d in hive.security_items()}
    assert items == {DEFAULT_SECURITY_DESCRIPTOR: 10}  # the unused sk was unlinked and freed
    assert Hive.from_bytes(hive.to_bytes()).check() == []


def _maxima(hive: Hive, path: str) -> tuple[int, int, int, int]:
    key = hive.key(path)
    raw = struct.unpack_from("<4I", hive._buf, key._pos + 52)
    return raw[0] & 0xFFFF, raw[1], raw[2], raw[3]


def test_cached_maxima() -> None:
    hive = Hive.create()
    hive.create_key("M\\short")
    hive.create_key("M\\a-much-longer-name")
    hive.create_key("M\\日本")
    hive.set_value("M", "v", RegType.REG_BINARY, b"x" * 100)
    hive.set_value("M", "longer-value-name", RegType.REG_DWORD, 1)
    hive.flush()
    assert _maxima(hive, "M") == (2 * 18, 0, 2 * 17, 100)
    hive.delete_key("M\\a-much-longer-name")
    hive.delete_value("M", "v")
    hive.flush()
    assert _maxima(hive, "M") == (2 * 5, 0, 2 * 17, 4)


def test_freed_space_is_reused() -> None:
    hive = Hive.create()
    for i in range(300):
        hive.set_value(f"T\\k{i}", "v", RegType.REG_BINARY, b"\x01" * 3000)
    hive.flush()
    size = hive.hbins_size
    for _round in range(3):
        hive.delete_key("T")
        for i in range(300):
            hive.set_value(f"T\\k{i}", "v", RegType.REG_BINARY, b"\x02" * 3000)
        hive.flush()
    assert hive.hbins_size <= size * 1.1
    assert Hive.from_bytes(hive.to_bytes()).check() == []


def test_replacing_a_value_changes_type_and_frees_old_data() -> None:
    hive = Hive.create()
    hive.set_value("K", "v", RegType.REG_BINARY, b"\x00" * 50000)
    hive.flush()
    free_before = hive._cells.free_bytes()
    hive.set_value("K", "V", RegType.REG_DWORD, 7)  # same value: names are case-insensitive
    key = hive.key("K")
    assert key.value_count == 1
    assert key.value("v").type == RegType.REG_DWORD  # type: ignore[union-attr]
    assert key.value("v").name == "v"  # type: ignore[union-attr]
    assert hive._cells.free_bytes() >= free_before + 50000


def test_errors_for_bad_requests() -> None:
    hive = Hive.create()
    hive.create_key("A")
    with pytest.raises(NotFoundError):
        hive.key("nope")
    with pytest.raises(NotFoundError):
        hive.delete_value("A", "nope")
    with pytest.raises(NotFoundError):
        hive.delete_key("nope")
    with pytest.raises(UsageError):
        hive.delete_key("")
    with pytest.raises(FormatError):
        hive.create_key("A\\" + "x" * 256)
    with pytest.raises(FormatError):
        hive.set_value("A", "m", RegType.REG_MULTI_SZ, ["ok", ""])
    with pytest.raises(FormatError):
        hive.set_value("A", "d", RegType.REG_DWORD, 1 << 40)
    with pytest.raises(UsageError):
        Hive.create().save()  # no path yet


def test_case_insensitive_paths_reuse_existing_keys() -> None:
    hive = Hive.create()
    hive.create_key("Software\\Vendor")
    hive.set_value("SOFTWARE\\vendor\\App", "x", RegType.REG_SZ, "y")
    assert [k.path for k in hive.walk()] == [
        "",
        "Software",
        "Software\\Vendor",
        "Software\\Vendor\\App",
    ]


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "HIVE"
    hive = Hive.create()
    hive.set_value("K", "v", RegType.REG_SZ, "first")
    hive.save(target)
    original = target.read_bytes()
    hive.set_value("K", "v", RegType.REG_SZ, "second")

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        hive.save(target)
    monkeypatch.undo()
    assert target.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["HIVE"]
    hive.save(target)
    reread = Hive.open(target)
    assert reread.key("K").value("v").decoded() == "second"  # type: ignore[union-attr]
    assert reread.sequence_numbers[0] == reread.sequence_numbers[1] > 2


# --- random edits against a model ----------------------------------------------------------------
_names = st.sampled_from(["a", "B", "c", "Ä", "日", "key", "KEY2", "x y"])
_values = st.one_of(
    st.tuples(st.just(RegType.REG_SZ), st.text(max_size=20).filter(lambda t: "\0" not in t)),
    st.tuples(st.just(RegType.REG_DWORD), st.integers(0, 2**32 - 1)),
    st.tuples(st.just(RegType.REG_QWORD), st.integers(0, 2**64 - 1)),
    st.tuples(st.just(RegType.REG_BINARY), st.binary(max_size=40)),
    st.tuples(st.just(RegType.REG_BINARY), st.integers(16340, 40000).map(lambda n: b"\xab" * n)),
    st.tuples(
        st.just(RegType.REG_MULTI_SZ),
        st.lists(st.text(min_size=1, max_size=5).filter(lambda t: "\0" not in t), max_size=4),
    ),
)
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.lists(_names, min_size=1, max_size=3), _names, _values),
        st.tuples(st.just("delkey"), st.lists(_names, min_size=1, max_size=3)),
        st.tuples(st.just("delval"), st.lists(_names, min_size=1, max_size=3), _names),
    ),
    max_size=40,
)


def _fold(name: str) -> str:
    return name.upper()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_ops)
def test_random_edits_match_a_model(ops: list[tuple[Any, ...]]) -> None:
    hive = Hive.create()
    model: dict[tuple[str, ...], dict[str, Any]] = {(): {}}
    for op in ops:
        path = tuple(_fold(p) for p in op[1])
        key_path = "\\".join(op[1])
        if op[0] == "set":
            value_type, data = op[3]
            hive.set_value(key_path, op[2], value_type, data)
            for i in range(1, len(path) + 1):
                model.setdefault(path[:i], {})
            model[path][_fold(op[2])] = (value_type, data)
        elif op[0] == "delkey":
            if path in model:
                hive.delete_key(key_path)
                for known in [k for k in model if k[: len(path)] == path]:
                    del model[known]
            else:
                with pytest.raises(NotFoundError):
                    hive.delete_key(key_path)
        else:
            if path in model and _fold(op[2]) in model[path]:
                hive.delete_value(key_path, op[2])
                del model[path][_fold(op[2])]
    reread = Hive.from_bytes(hive.to_bytes())
    assert reread.check() == []
    got = {
        tuple(_fold(p) for p in key.path.split("\\") if p): {
            _fold(v.name): (v.type, v.decoded()) for v in key.values()
        }
        for key in reread.walk()
    }
    assert got == model
