"""Malformed hives: every kind of damage gives a one-line RegfError naming file and offset."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cimsnap.errors import FormatError, NotFoundError
from cimsnap.formats.regf import Hive, RegfError, RegType
from cimsnap.formats.regf.structures import checksum

BASE = 4096


def _sample() -> tuple[bytes, Hive]:
    hive = Hive.create(root_name="BAD")
    hive.set_value("A", "small", RegType.REG_SZ, "text")
    hive.set_value("A", "big", RegType.REG_BINARY, b"\x11" * 40000)
    hive.set_value("A\\B", "dw", RegType.REG_DWORD, 5)
    for i in range(600):
        hive.create_key(f"Many\\k{i:04}")
    data = hive.to_bytes()
    return data, Hive.from_bytes(data)


SAMPLE, PARSED = _sample()


def _patched(changes: Callable[[bytearray], None], *, fix_checksum: bool = True) -> bytes:
    image = bytearray(SAMPLE)
    changes(image)
    if fix_checksum:
        struct.pack_into("<I", image, 508, checksum(image))
    return bytes(image)


def _nk(path: str) -> int:
    """File offset of the cell data of the key at ``path`` in SAMPLE."""
    return BASE + PARSED.key(path).offset + 4


def _read_everything(data: bytes) -> None:
    hive = Hive.from_bytes(data, source="bad.hiv", strict=True)
    for key in hive.walk():
        _ = (key.name, key.class_name, key.security_descriptor)
        for value in key.values():
            value.decoded()


def _expect(data: bytes, pattern: str) -> RegfError:
    with pytest.raises(RegfError, match=pattern) as info:
        _read_everything(data)
    text = str(info.value)
    assert "bad.hiv" in text and "\n" not in text
    return info.value


def test_sample_is_fine() -> None:
    _read_everything(SAMPLE)


def test_too_small() -> None:
    _expect(SAMPLE[:100], "too small")


def test_wrong_signature() -> None:
    _expect(_patched(lambda b: b.__setitem__(slice(0, 4), b"regX")), "not a registry hive")


def test_bad_checksum() -> None:
    err = _expect(_patched(lambda b: b.__setitem__(300, 0x77), fix_checksum=False), "checksum")
    assert err.offset == 508


def test_unsupported_version() -> None:
    _expect(_patched(lambda b: struct.pack_into("<I", b, 24, 9)), "unsupported regf version")


def test_log_file_instead_of_hive() -> None:
    _expect(_patched(lambda b: struct.pack_into("<I", b, 28, 6)), "transaction log")


def test_bins_size_not_a_multiple_of_4096() -> None:
    _expect(_patched(lambda b: struct.pack_into("<I", b, 40, 4097)), "hive bins data size")


def test_truncated_bins() -> None:
    _expect(SAMPLE[: len(SAMPLE) - 4096], "truncated")


def test_bad_hbin_signature() -> None:
    _expect(_patched(lambda b: b.__setitem__(slice(BASE, BASE + 4), b"hbix")), "hive bin signature")


def test_hbin_offset_field_mismatch() -> None:
    _expect(_patched(lambda b: struct.pack_into("<I", b, BASE + 4, 0x1000)), "out of place")


def test_hbin_size_past_the_end() -> None:
    _expect(_patched(lambda b: struct.pack_into("<I", b, BASE + 8, 0x7FFFF000)), "invalid size")


def test_broken_cell_chain() -> None:
    _expect(_patched(lambda b: struct.pack_into("<i", b, BASE + 32, 0)), "broken cell chain")
    _expect(_patched(lambda b: struct.pack_into("<i", b, BASE + 32, -12)), "broken cell chain")


def test_root_offset_out_of_range_or_misaligned() -> None:
    _expect(_patched(lambda b: struct.pack_into("<I", b, 36, 0x7FFFFFF0)), "out of range")
    _expect(_patched(lambda b: struct.pack_into("<I", b, 36, 0x24)), "misaligned")


def test_offset_into_the_middle_of_a_cell() -> None:
    # the root's subkey list pointing 8 bytes into its own cell
    def change(b: bytearray) -> None:
        nk = _nk("")
        (lst,) = struct.unpack_from("<I", b, nk + 28)
        struct.pack_into("<I", b, nk + 28, lst + 8)

    _expect(_patched(change), "not the start of an allocated cell")


def test_wrong_record_signatures() -> None:
    nk = _nk("A")
    _expect(_patched(lambda b: b.__setitem__(slice(nk, nk + 2), b"xx")), "not an nk record")
    (values,) = struct.unpack_from("<I", SAMPLE, nk + 40)
    (vk,) = struct.unpack_from("<I", SAMPLE, BASE + values + 4)
    _expect(_patched(lambda b: b.__setitem__(slice(BASE + vk + 4, BASE + vk + 6), b"zz")), "vk")
    (lst,) = struct.unpack_from("<I", SAMPLE, _nk("") + 28)
    _expect(
        _patched(lambda b: b.__setitem__(slice(BASE + lst + 4, BASE + lst + 6), b"qq")),
        "subkey list signature",
    )


def test_index_root_pointing_to_index_root() -> None:
    nk = _nk("Many")
    (ri,) = struct.unpack_from("<I", SAMPLE, nk + 28)
    assert SAMPLE[BASE + ri + 4 : BASE + ri + 6] == b"ri"
    _expect(_patched(lambda b: struct.pack_into("<I", b, BASE + ri + 8, ri)), "another index root")


def test_cycle_in_subkey_lists() -> None:
    # make A's subkey list point at the root key: A -> root -> A -> ...
    def change(b: bytearray) -> None:
        nk = _nk("A")
        (lst,) = struct.unpack_from("<I", b, nk + 28)
        struct.pack_into("<I", b, BASE + lst + 8, PARSED.root.offset)

    _expect(_patched(change), "reached twice")


def test_huge_counts() -> None:
    nk = _nk("Many")
    _expect(_patched(lambda b: struct.pack_into("<I", b, nk + 20, 0xFFFFFFFF)), "subkeys")
    (ri,) = struct.unpack_from("<I", SAMPLE, nk + 28)
    _expect(_patched(lambda b: struct.pack_into("<H", b, BASE + ri + 6, 0xFFFF)), "claims")
    a = _nk("A")
    _expect(_patched(lambda b: struct.pack_into("<I", b, a + 36, 0x10000000)), "claims")


def test_big_data_damage() -> None:
    big = PARSED.key("A").value("big")
    assert big is not None
    db = big._data_offset
    _expect(_patched(lambda b: struct.pack_into("<H", b, BASE + db + 6, 0xFFFF)), "segments")
    (seg_list,) = struct.unpack_from("<I", SAMPLE, BASE + db + 8)
    _expect(
        _patched(lambda b: struct.pack_into("<I", b, BASE + seg_list + 4, 0x7FFFFFF8)),
        "out of range",
    )
    vk = BASE + big.offset + 4
    _expect(_patched(lambda b: struct.pack_into("<I", b, vk + 4, 0x7FFFFFFF)), "holds")


def test_inline_data_longer_than_four_bytes() -> None:
    dw = PARSED.key("A\\B").value("dw")
    assert dw is not None
    vk = BASE + dw.offset + 4
    _expect(_patched(lambda b: struct.pack_into("<I", b, vk + 4, 0x80000010)), "inline")


def test_bad_security_offset() -> None:
    nk = _nk("A")
    _expect(_patched(lambda b: struct.pack_into("<I", b, nk + 44, 0xFFFFFFFF)), "key security")


def test_errors_are_format_errors() -> None:
    assert issubclass(RegfError, FormatError)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(
    st.lists(
        st.tuples(st.integers(0, len(SAMPLE) - 1), st.integers(0, 255)), min_size=1, max_size=8
    )
)
def test_random_damage_never_crashes(flips: list[tuple[int, int]]) -> None:
    image = bytearray(SAMPLE)
    for position, value in flips:
        image[position] = value
    struct.pack_into("<I", image, 508, checksum(image))
    try:
        _read_everything(bytes(image))
    except RegfError as err:
        assert "\n" not in str(err)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(
    st.lists(
        st.tuples(st.integers(BASE, len(SAMPLE) - 1), st.integers(0, 255)), min_size=1, max_size=6
    )
)
def test_editing_a_damaged_hive_fails_cleanly(flips: list[tuple[int, int]]) -> None:
    """Edits of a damaged hive work or raise RegfError/NotFoundError; never anything else.

    Damage the edits do not touch stays in the saved hive, so reading it back may still fail,
    but again only with RegfError."""
    image = bytearray(SAMPLE)
    for position, value in flips:
        image[position] = value
    try:
        hive = Hive.from_bytes(bytes(image), source="bad.hiv")
        hive.set_value("A\\B", "new", RegType.REG_BINARY, b"\x01" * 20000)
        hive.create_key("Many\\k0001x")
        hive.delete_key("A")
        hive.delete_key("Many\\k0300")
        saved = hive.to_bytes()
    except (RegfError, NotFoundError) as err:
        assert "\n" not in str(err)
        return
    try:
        _read_everything(saved)
    except RegfError as err:
        assert "\n" not in str(err)
