"""A hive with every kind of content the writer must get right, built with the public API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cimsnap.formats.regf import Hive, RegType

MANY_SUBKEYS = 1200  # more than one leaf: the writer must build an index root ("ri")
BIG = bytes(range(256)) * 400  # 102400 bytes: big data ("db") with 7 segments

# (key path, value name, type, data as given to set_value, decoded value)
SAMPLE_VALUES: list[tuple[str, str, int, Any, Any]] = [
    ("Types", "", RegType.REG_SZ, "the default value", "the default value"),
    ("Types", "sz", RegType.REG_SZ, "hello, world", "hello, world"),
    ("Types", "sz-empty", RegType.REG_SZ, "", ""),
    ("Types", "sz-unicode", RegType.REG_SZ, "Grüße 日本 𐐐", "Grüße 日本 𐐐"),
    ("Types", "expand", RegType.REG_EXPAND_SZ, r"%SystemRoot%\system32", r"%SystemRoot%\system32"),
    ("Types", "multi", RegType.REG_MULTI_SZ, ["one", "two", "drei ü"], ["one", "two", "drei ü"]),
    ("Types", "multi-one", RegType.REG_MULTI_SZ, ["x"], ["x"]),
    ("Types", "multi-empty", RegType.REG_MULTI_SZ, [], []),
    (
        "Types",
        "multi-big",
        RegType.REG_MULTI_SZ,
        ["0123456789" * 900, "tail"],
        ["0123456789" * 900, "tail"],
    ),
    ("Types", "dword", RegType.REG_DWORD, 0xDEADBEEF, 0xDEADBEEF),
    ("Types", "dword-zero", RegType.REG_DWORD, 0, 0),
    ("Types", "dword-be", RegType.REG_DWORD_BIG_ENDIAN, 42, 42),
    ("Types", "qword", RegType.REG_QWORD, 0xFFFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF),
    ("Types", "binary", RegType.REG_BINARY, b"\x01\x02\x03\x04\x05", b"\x01\x02\x03\x04\x05"),
    ("Types", "binary-4", RegType.REG_BINARY, b"\xff\x00\xff\x00", b"\xff\x00\xff\x00"),
    ("Types", "binary-empty", RegType.REG_BINARY, b"", b""),
    ("Types", "none-empty", RegType.REG_NONE, b"", b""),
    ("Types", "none-data", RegType.REG_NONE, b"abcdef", b"abcdef"),
    (
        "Types",
        "link",
        RegType.REG_LINK,
        r"\Registry\Machine\Software",
        r"\Registry\Machine\Software",
    ),
    ("Types", "resource-list", RegType.REG_RESOURCE_LIST, b"\x01" * 40, b"\x01" * 40),
    ("Types", "Wert ü", RegType.REG_SZ, "unicode value name", "unicode value name"),
    ("Types", "v" * 300, RegType.REG_SZ, "long value name", "long value name"),
    ("Big", "16343", RegType.REG_BINARY, b"A" * 16343, b"A" * 16343),
    ("Big", "16344", RegType.REG_BINARY, b"B" * 16344, b"B" * 16344),
    ("Big", "16345", RegType.REG_BINARY, b"C" * 16345, b"C" * 16345),
    ("Big", "102400", RegType.REG_BINARY, BIG, BIG),
    ("Big", "sz-big", RegType.REG_SZ, "x" * 20000, "x" * 20000),
    ("Deep\\a\\b\\c\\d\\e\\f\\g", "leaf", RegType.REG_DWORD, 7, 7),
    ("Names\\日本語", "k", RegType.REG_SZ, "cjk key", "cjk key"),
    ("Names\\Grüße", "k", RegType.REG_SZ, "latin-1 key", "latin-1 key"),
    ("Names\\𐐐", "k", RegType.REG_SZ, "astral key", "astral key"),
    ("Names\\with space and/slash", "k", RegType.REG_SZ, "odd key", "odd key"),
    ("Names\\" + "n" * 255, "k", RegType.REG_SZ, "longest key name", "longest key name"),
]
EMPTY_KEYS = ["Empty", "Names\\Empty Too"]


def build_sample(path: Path | None = None) -> Hive:
    hive = Hive.create(root_name="SAMPLE")
    for key, name, value_type, data, _decoded in SAMPLE_VALUES:
        hive.set_value(key, name, value_type, data)
    for key in EMPTY_KEYS:
        hive.create_key(key)
    for i in range(MANY_SUBKEYS):
        hive.create_key(f"Many\\{'Key' if i % 2 else 'key'}{i}")
    if path is not None:
        hive.save(path)
    return hive


def expected_keys() -> set[str]:
    keys = {""}
    for key in [k for k, *_ in SAMPLE_VALUES] + EMPTY_KEYS:
        parts = key.split("\\")
        for i in range(1, len(parts) + 1):
            keys.add("\\".join(parts[:i]))
    keys.add("Many")
    keys.update(f"Many\\{'Key' if i % 2 else 'key'}{i}" for i in range(MANY_SUBKEYS))
    return keys
