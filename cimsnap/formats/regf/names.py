"""Key and value names: case folding, ordering, hashes and on-disk encoding.

Registry names compare case-insensitively by upper-casing each UTF-16 code unit on its own
(spec "Index leaf": sorted by an uppercase name, compared by character codes; "Hash leaf": the
hash is ``h = 37 * h + upcase(unit)``).  Code units outside the Basic Multilingual Plane are
surrogates and are not folded, which is why U+10410 and U+10438 are different keys.

Windows folds with its own NLS upcase table; we fold each code unit with Unicode's simple
uppercase mapping when it maps to exactly one BMP unit (our choice where the tables could differ;
see the README's compatibility notes).
"""

from __future__ import annotations

from functools import lru_cache

from cimsnap.errors import FormatError

MAX_NAME_UNITS = 16383  # value names; key names are limited to 255 units by Windows


@lru_cache(maxsize=65536)
def _fold_unit(unit: str) -> str:
    upper = unit.upper()
    if len(upper) == 1 and ord(upper) < 0x10000:
        return upper
    return unit


def upcase(name: str) -> str:
    """Upper-case ``name`` one UTF-16 code unit at a time (ASCII fast path)."""
    if name.isascii():
        return name.upper()
    return "".join(_fold_unit(ch) if ord(ch) < 0x10000 else ch for ch in name)


def sort_key(name: str) -> bytes:
    """Bytes whose ordering is the registry's subkey order (UTF-16 units of the upcased name)."""
    return upcase(name).encode("utf-16-be", "surrogatepass")


def name_hash(name: str) -> int:
    """The ``lh`` hash of a key name."""
    h = 0
    folded = upcase(name).encode("utf-16-le", "surrogatepass")
    for i in range(0, len(folded), 2):
        h = (h * 37 + folded[i] + (folded[i + 1] << 8)) & 0xFFFFFFFF
    return h


def name_hint(name: str) -> bytes:
    """The ``lf`` name hint: the first four characters as (extended) ASCII, zero padded."""
    head = name[:4]
    if all(ord(ch) < 256 for ch in head):
        return head.encode("latin-1").ljust(4, b"\0")
    return b"\0\0\0\0"


def utf16_units(name: str) -> int:
    """Length of ``name`` in UTF-16 code units."""
    return len(name.encode("utf-16-le", "surrogatepass")) // 2


def encode_name(name: str) -> tuple[bytes, bool]:
    """On-disk bytes of a key or value name and whether they are "compressed" (one byte each).

    We compress only 7-bit ASCII names: every reader decodes those the same way, while readers
    disagree on compressed names with characters 0x80-0xFF (Windows compresses those too).
    """
    if name.isascii():
        return name.encode("ascii"), True
    return name.encode("utf-16-le", "surrogatepass"), False


def decode_name(raw: bytes, compressed: bool) -> str:
    if compressed:
        return raw.decode("latin-1")
    if len(raw) % 2:
        raw = raw[:-1]
    return raw.decode("utf-16-le", "surrogatepass")


def check_key_name(name: str) -> None:
    if not name:
        raise FormatError("a key name cannot be empty")
    if "\\" in name:
        raise FormatError(f"a key name cannot contain a backslash: {name!r}")
    if utf16_units(name) > 255:
        raise FormatError(f"key name longer than 255 characters: {name[:40]!r}...")


def check_value_name(name: str) -> None:
    if utf16_units(name) > MAX_NAME_UNITS:
        raise FormatError(f"value name longer than {MAX_NAME_UNITS} characters")


def split_path(path: str) -> list[str]:
    """``"a\\b\\c"`` -> ``["a", "b", "c"]``; leading, trailing and doubled backslashes ignored.

    Only the backslash separates keys: ``/`` is an ordinary character in key names.
    """
    return [part for part in path.split("\\") if part]
