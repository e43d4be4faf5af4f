"""The NTFS-style upcase table: NTFS ``$UpCase`` and the CimFS filesystem object's upcase table.

Windows compares file names case-insensitively by mapping every UTF-16 code unit through a
65,536-entry table and comparing the results unit by unit.  NTFS stores the table as ``$UpCase``
(128 KiB, little-endian u16); CimFS images store the same table in their metadata region.

What the table is (established by comparing, not guessed):

* the *simple* uppercase mapping of UnicodeData.txt as of **Unicode 5.1** (the table ntfs-3g calls
  "as defined by Vista"; Windows has written it unchanged since, e.g. into the 2020 CIM in the
  test data);
* keeping only round-trip pairs: ``c`` maps to ``U`` only if the simple lowercase of ``U`` is ``c``.
  So U+00B5 MICRO SIGN, U+0131 DOTLESS I, U+017F LONG S, U+03C2 FINAL SIGMA, U+0345, the Greek
  symbol variants (U+03D0...) and the titlecase digraphs (U+01C5...) map to themselves;
* code units outside the BMP cannot be mapped (surrogates map to themselves).

The table is generated from Python's :mod:`unicodedata` (whatever its Unicode version): a mapping
is kept only when both characters existed in Unicode 5.1, i.e. were assigned in Unicode 3.2
(``unicodedata.ucd_3_2_0``, shipped with every Python) or fall in :data:`ADDED_4_0_TO_5_1`.
Tests check the result byte for byte against the table in a Windows-made CIM and against the
``$UpCase`` written by mkntfs (ntfs-3g), which are identical.
"""

from __future__ import annotations

import functools
import struct
import unicodedata
from array import array

TABLE_ENTRIES = 0x10000
TABLE_BYTES = 2 * TABLE_ENTRIES

# Code points assigned in Unicode 4.0, 4.1, 5.0 or 5.1 that take part in a case pair of the
# Windows table (from the Unicode Character Database's DerivedAge.txt; every code point of each
# inclusive range has an Age of 4.0 to 5.1).  Together with Unicode 3.2 this is "Unicode 5.1".
ADDED_4_0_TO_5_1: tuple[tuple[int, int], ...] = (
    (0x023A, 0x023E),  # Latin Extended-B additions (4.1/5.0)
    (0x0241, 0x024F),
    (0x0370, 0x0373),  # Greek (5.1)
    (0x0376, 0x0377),
    (0x037B, 0x037D),  # Greek (5.0)
    (0x03CF, 0x03CF),
    (0x03F7, 0x03FB),  # Greek (4.0/4.1)
    (0x03FD, 0x03FF),
    (0x04CF, 0x04CF),  # Cyrillic (5.0)
    (0x04F6, 0x04F7),
    (0x04FA, 0x04FF),
    (0x0510, 0x0523),  # Cyrillic Supplement (4.0-5.1)
    (0x1D79, 0x1D79),  # Phonetic extensions (5.1)
    (0x1D7D, 0x1D7D),
    (0x1EFA, 0x1EFF),  # Latin Extended Additional (5.1)
    (0x214E, 0x214E),  # turned F (5.0)
    (0x2184, 0x2184),  # reversed c (5.0)
    (0x2C00, 0x2C2E),  # Glagolitic (4.1)
    (0x2C30, 0x2C5E),
    (0x2C60, 0x2C6F),  # Latin Extended-C (5.0/5.1)
    (0x2C72, 0x2C73),
    (0x2C75, 0x2C76),
    (0x2C80, 0x2CE3),  # Coptic (4.1)
    (0x2D00, 0x2D25),  # Georgian Supplement (4.1)
    (0xA640, 0xA65F),  # Cyrillic Extended-B (5.1)
    (0xA662, 0xA66D),
    (0xA680, 0xA697),
    (0xA722, 0xA72F),  # Latin Extended-D (5.1)
    (0xA732, 0xA76F),
    (0xA779, 0xA787),
    (0xA78B, 0xA78C),
)

_UNICODE_3_2 = unicodedata.ucd_3_2_0


def _in_unicode_5_1(cp: int) -> bool:
    if _UNICODE_3_2.category(chr(cp)) != "Cn":
        return True
    return any(lo <= cp <= hi for lo, hi in ADDED_4_0_TO_5_1)


def _simple_upper(ch: str) -> str:
    """UnicodeData's simple uppercase of ``ch`` (``ch`` itself when there is none).

    ``str.upper`` applies the *full* mapping (``ß`` -> ``SS``); where that is several characters
    the simple mapping, if any, is the single-character titlecase (U+1F80 -> U+1F88).
    """
    upper = ch.upper()
    if len(upper) == 1:
        return upper
    title = ch.title()
    return title if len(title) == 1 else ch


def _simple_lower(ch: str) -> str:
    lower = ch.lower()
    return lower if len(lower) == 1 else ch


def _windows_upper(cp: int) -> int:
    ch = chr(cp)
    upper = _simple_upper(ch)
    target = ord(upper)
    if target == cp or target >= TABLE_ENTRIES:
        return cp
    if _simple_lower(upper) != ch:  # not a round-trip pair (µ, ı, ſ, ς, ǅ ...)
        return cp
    if not (_in_unicode_5_1(cp) and _in_unicode_5_1(target)):
        return cp
    return target


@functools.cache
def upcase_table() -> tuple[int, ...]:
    """The 65,536 entries: ``upcase_table()[unit]`` is the uppercase UTF-16 code unit."""
    table = list(range(TABLE_ENTRIES))
    chars = [chr(cp) for cp in range(TABLE_ENTRIES)]
    # Only characters whose (full) uppercase differs can map anywhere; str.upper runs in C.
    for ch, upper in zip(chars, map(str.upper, chars), strict=True):
        if ch != upper:
            cp = ord(ch)
            if not 0xD800 <= cp <= 0xDFFF:
                table[cp] = _windows_upper(cp)
    return tuple(table)


@functools.cache
def upcase_table_bytes() -> bytes:
    """The table as stored on disk: 128 KiB of little-endian u16."""
    table = array("H", upcase_table())
    if struct.pack("=H", 1) != struct.pack("<H", 1):
        table.byteswap()
    return table.tobytes()


@functools.cache
def _translation() -> dict[int, int]:
    return {cp: up for cp, up in enumerate(upcase_table()) if up != cp}


def upcase_name(name: str) -> str:
    """``name`` with every UTF-16 code unit mapped through the table (non-BMP unchanged)."""
    return name.translate(_translation())


def name_key(name: str) -> bytes:
    """A sort key ordering names as NTFS and CimFS do: upcased UTF-16 units, then length.

    Big-endian UTF-16 bytes compare exactly like the sequence of code units (Python's own string
    order differs for characters outside the BMP).
    """
    return upcase_name(name).encode("utf-16-be", "surrogatepass")


def names_equal(a: str, b: str) -> bool:
    """Case-insensitive equality of two names under the table."""
    return name_key(a) == name_key(b)


__all__ = [
    "ADDED_4_0_TO_5_1",
    "TABLE_BYTES",
    "TABLE_ENTRIES",
    "name_key",
    "names_equal",
    "upcase_name",
    "upcase_table",
    "upcase_table_bytes",
]
