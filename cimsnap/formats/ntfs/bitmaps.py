"""Bit ranges in NTFS bitmaps ($Bitmap, $MFT:$BITMAP): bit n is bit n%8 of byte n//8."""

from __future__ import annotations


def set_bits(bitmap: bytearray, start: int, count: int, value: bool = True) -> None:
    """Set (or clear) ``count`` bits from bit ``start``; whole bytes are filled at once."""
    end = start + count
    pos = start
    while pos < end and pos % 8:
        _put(bitmap, pos, value)
        pos += 1
    whole = (end - pos) // 8
    if whole > 0:
        bitmap[pos // 8 : pos // 8 + whole] = (b"\xff" if value else b"\0") * whole
        pos += whole * 8
    while pos < end:
        _put(bitmap, pos, value)
        pos += 1


def _put(bitmap: bytearray, bit: int, value: bool) -> None:
    if value:
        bitmap[bit // 8] |= 1 << (bit % 8)
    else:
        bitmap[bit // 8] &= ~(1 << (bit % 8)) & 0xFF


def count_set(bitmap: bytes, limit: int) -> int:
    """Number of set bits among the first ``limit``."""
    whole = limit // 8
    count = int.from_bytes(bitmap[:whole], "little").bit_count()
    for bit in range(whole * 8, limit):
        count += (bitmap[bit // 8] >> (bit % 8)) & 1
    return count
