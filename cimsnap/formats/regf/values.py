"""Typed value data: encoding Python values to registry bytes and back.

Strings (REG_SZ, REG_EXPAND_SZ, REG_LINK) are UTF-16LE; REG_SZ and REG_EXPAND_SZ are written
with a terminating NUL as Windows' RegSetValueEx callers do, REG_LINK without one.  REG_MULTI_SZ
is a sequence of NUL-terminated strings followed by one more NUL; an empty list is a single NUL
character.  Integers are little-endian (REG_DWORD, REG_QWORD) or big-endian (REG_DWORD_BIG_ENDIAN).
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Sequence

from cimsnap.errors import FormatError

from .structures import RegType

STRING_TYPES = frozenset({RegType.REG_SZ, RegType.REG_EXPAND_SZ, RegType.REG_LINK})
ValueData = bytes | str | int | Sequence[str]
Decoded = bytes | str | int | list[str]


def decode_string(data: bytes) -> str:
    """UTF-16LE text up to the first NUL (an odd trailing byte is dropped)."""
    if len(data) % 2:
        data = data[:-1]
    text = data.decode("utf-16-le", "surrogatepass")
    end = text.find("\0")
    return text if end < 0 else text[:end]


def decode_multi_string(data: bytes) -> list[str]:
    """The strings of a REG_MULTI_SZ, stopping at the empty string that ends the list."""
    if len(data) % 2:
        data = data[:-1]
    items: list[str] = []
    for item in data.decode("utf-16-le", "surrogatepass").split("\0"):
        if not item:
            break
        items.append(item)
    return items


def encode_string(text: str, *, terminate: bool = True) -> bytes:
    raw = text.encode("utf-16-le", "surrogatepass")
    return raw + b"\0\0" if terminate else raw


def encode_multi_string(items: Sequence[str]) -> bytes:
    if isinstance(items, str):
        raise FormatError("REG_MULTI_SZ data must be a list of strings")
    out = bytearray()
    for item in items:
        if not item or "\0" in item:
            raise FormatError("REG_MULTI_SZ strings must be non-empty and contain no NUL")
        out += item.encode("utf-16-le", "surrogatepass") + b"\0\0"
    out += b"\0\0"
    return bytes(out)


def encode_value(value_type: int, data: ValueData) -> bytes:
    """Bytes for ``data`` of ``value_type``; ``bytes`` are stored as they are for every type."""
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    if value_type in STRING_TYPES and isinstance(data, str):
        return encode_string(data, terminate=value_type != RegType.REG_LINK)
    if value_type == RegType.REG_MULTI_SZ and not isinstance(data, str | int):
        return encode_multi_string(list(data))
    if isinstance(data, int) and not isinstance(data, bool):
        if value_type == RegType.REG_DWORD:
            return _int_bytes(data, 4, "little")
        if value_type == RegType.REG_DWORD_BIG_ENDIAN:
            return _int_bytes(data, 4, "big")
        if value_type == RegType.REG_QWORD:
            return _int_bytes(data, 8, "little")
    raise FormatError(f"cannot store {type(data).__name__} data as registry type {value_type}")


def _int_bytes(value: int, size: int, order: str) -> bytes:
    if not 0 <= value < 1 << (8 * size):
        if -(1 << (8 * size - 1)) <= value < 0:
            value &= (1 << (8 * size)) - 1
        else:
            raise FormatError(f"{value} does not fit in {size} bytes")
    return value.to_bytes(size, order)  # type: ignore[arg-type]


def decode_value(value_type: int, data: bytes) -> Decoded:
    """A natural Python value for the data; bytes when the data does not fit its type."""
    if value_type in (RegType.REG_SZ, RegType.REG_EXPAND_SZ):
        return decode_string(data)
    if value_type == RegType.REG_LINK:
        return decode_string(data)
    if value_type == RegType.REG_MULTI_SZ:
        return decode_multi_string(data)
    if value_type == RegType.REG_DWORD and len(data) == 4:
        return int.from_bytes(data, "little")
    if value_type == RegType.REG_DWORD_BIG_ENDIAN and len(data) == 4:
        return int.from_bytes(data, "big")
    if value_type == RegType.REG_QWORD and len(data) == 8:
        return int.from_bytes(data, "little")
    return data


_HEX_SEPARATORS = re.compile(r"[\s,:]")


def parse_hex(text: str) -> bytes:
    """``"01 02 03"``, ``"01,02,03"``, ``"010203"`` or ``"01:02"`` -> bytes."""
    cleaned = _HEX_SEPARATORS.sub("", text.strip())
    if cleaned.lower().startswith("0x"):
        cleaned = cleaned[2:]
    try:
        return binascii.unhexlify(cleaned)
    except (binascii.Error, ValueError):
        raise FormatError(f"invalid hex data {text!r}") from None


def parse_int(text: str, bits: int) -> int:
    """Decimal or ``0x`` hex; negative numbers wrap to two's complement."""
    try:
        value = int(text.strip(), 0)
    except ValueError:
        raise FormatError(f"invalid number {text!r}") from None
    limit = 1 << bits
    if -(limit >> 1) <= value < 0:
        value += limit
    if not 0 <= value < limit:
        raise FormatError(f"{text!r} does not fit in {bits} bits")
    return value


def parse_value_text(value_type: int, items: Sequence[str]) -> bytes:
    """Bytes for command-line data: one string per item (MULTI_SZ takes several)."""
    if value_type == RegType.REG_MULTI_SZ:
        return encode_multi_string(list(items))
    if len(items) > 1:
        raise FormatError("only REG_MULTI_SZ takes more than one --data")
    text = items[0] if items else ""
    if value_type in (RegType.REG_SZ, RegType.REG_EXPAND_SZ):
        return encode_string(text)
    if value_type == RegType.REG_LINK:
        return encode_string(text, terminate=False)
    if value_type == RegType.REG_DWORD:
        return parse_int(text, 32).to_bytes(4, "little") if items else _missing()
    if value_type == RegType.REG_DWORD_BIG_ENDIAN:
        return parse_int(text, 32).to_bytes(4, "big") if items else _missing()
    if value_type == RegType.REG_QWORD:
        return parse_int(text, 64).to_bytes(8, "little") if items else _missing()
    return parse_hex(text)


def _missing() -> bytes:
    raise FormatError("this value type needs --data")
