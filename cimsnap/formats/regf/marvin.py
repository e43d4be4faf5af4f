"""Marvin32, the 64-bit keyed hash that protects new-format transaction log entries.

Spec: "Format of transaction log files", "New format", "Log entries" notes 1-3 (Hash-1 over the
entry from its first page reference, Hash-2 over its first 32 bytes, seed 82 EF 4D 88 7A 4E 55
C5).  The algorithm is Microsoft's published Marvin32: two 32-bit lanes mixed by add/xor/rotate
rounds over little-endian 32-bit words, then a padding word with a 0x80 marker and two final
rounds.
"""

from __future__ import annotations

import struct

# The spec lists the seed as 82 EF 4D 88 7A 4E 55 C5: that is the 64-bit number written most
# significant byte first (checked against log entries written by Windows 10).
HVLE_SEED = 0x82EF4D887A4E55C5
_MASK = 0xFFFFFFFF


def marvin32(data: bytes | bytearray | memoryview, seed: int = HVLE_SEED) -> int:
    """The 64-bit Marvin32 hash of ``data``: ``(p1 << 32) | p0``."""
    p0 = seed & _MASK
    p1 = (seed >> 32) & _MASK
    view = memoryview(data).cast("B")
    whole = len(view) // 4 * 4
    for (word,) in struct.iter_unpack("<I", view[:whole]):
        p0 = (p0 + word) & _MASK
        p1 ^= p0
        p0 = ((p0 << 20) | (p0 >> 12)) & _MASK
        p0 = (p0 + p1) & _MASK
        p1 = ((p1 << 9) | (p1 >> 23)) & _MASK
        p1 ^= p0
        p0 = ((p0 << 27) | (p0 >> 5)) & _MASK
        p0 = (p0 + p1) & _MASK
        p1 = ((p1 << 19) | (p1 >> 13)) & _MASK
    tail = bytes(view[whole:])
    final = 0x80 << (8 * len(tail))
    final |= int.from_bytes(tail, "little")
    p0 = (p0 + final) & _MASK
    for _ in range(2):
        p1 ^= p0
        p0 = ((p0 << 20) | (p0 >> 12)) & _MASK
        p0 = (p0 + p1) & _MASK
        p1 = ((p1 << 9) | (p1 >> 23)) & _MASK
        p1 ^= p0
        p0 = ((p0 << 27) | (p0 >> 5)) & _MASK
        p0 = (p0 + p1) & _MASK
        p1 = ((p1 << 19) | (p1 >> 13)) & _MASK
    return (p1 << 32) | p0
