"""Extended attributes: FILE_FULL_EA_INFORMATION buffers (MS-FSCC 2.4.15) and their names.

A layer tar keeps each EA as a PAX record ``MSWINDOWS.xattr.<name>`` whose value is the base64 of
the EA's value; flags are not kept (go-winio backuptar: "there is no way to encode the EA's
flags").  Importers hand the EAs to Windows (or to a CIM) as one FILE_FULL_EA_INFORMATION chain,
built here as go-winio's EncodeExtendedAttributes builds it: entries of NextEntryOffset u32,
Flags u8, EaNameLength u8, EaValueLength u16, the name, a NUL, the value, padded to 4 bytes;
the last entry has NextEntryOffset 0 and no padding.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cimsnap.formats.wintar.errors import WinTarError

# FILE_FULL_EA_INFORMATION fixed part: NextEntryOffset, Flags, EaNameLength, EaValueLength.
EA_ENTRY = struct.Struct("<IBBH")
MAX_EA_NAME = 255  # EaNameLength is one byte
MAX_EA_VALUE = 0xFFFF  # EaValueLength is two bytes


@dataclass(frozen=True)
class ExtendedAttribute:
    name: str
    value: bytes
    flags: int = 0


def check_ea_name(name: str) -> None:
    """EA names are 1-255 printable ASCII characters without '=' (PAX keys cannot hold one)."""
    if not 1 <= len(name) <= MAX_EA_NAME:
        raise WinTarError(f"EA name {name!r} must be 1 to {MAX_EA_NAME} characters")
    if any(not 0x20 <= ord(c) < 0x7F for c in name) or "=" in name:
        raise WinTarError(f"EA name {name!r} must be printable ASCII without '='")


def check_unique_names(eas: tuple[ExtendedAttribute, ...] | list[ExtendedAttribute]) -> None:
    """NTFS compares EA names case-insensitively: two names differing in case collide."""
    seen: set[str] = set()
    for ea in eas:
        key = ea.name.upper()
        if key in seen:
            raise WinTarError(f"EA {ea.name!r} is given twice (names are case-insensitive)")
        seen.add(key)


def encode_ea_buffer(eas: tuple[ExtendedAttribute, ...] | list[ExtendedAttribute]) -> bytes:
    """One FILE_FULL_EA_INFORMATION chain holding ``eas`` in order (b"" for none)."""
    out = bytearray()
    for index, ea in enumerate(eas):
        check_ea_name(ea.name)
        if len(ea.value) > MAX_EA_VALUE:
            raise WinTarError(f"EA {ea.name!r} value of {len(ea.value)} bytes exceeds 65535")
        name = ea.name.encode("ascii")
        entry_size = EA_ENTRY.size + len(name) + 1 + len(ea.value)
        padded = (entry_size + 3) & ~3
        last = index == len(eas) - 1
        out += EA_ENTRY.pack(0 if last else padded, ea.flags, len(name), len(ea.value))
        out += name + b"\x00" + ea.value
        if not last:
            out += bytes(padded - entry_size)
    return bytes(out)


def decode_ea_buffer(buffer: bytes) -> list[ExtendedAttribute]:
    """The EAs of a FILE_FULL_EA_INFORMATION chain; raises WinTarError when it is malformed."""
    eas = []
    pos = 0
    while pos < len(buffer):
        if pos + EA_ENTRY.size > len(buffer):
            raise WinTarError(f"EA entry at {pos} is truncated")
        next_offset, flags, name_len, value_len = EA_ENTRY.unpack_from(buffer, pos)
        name_start = pos + EA_ENTRY.size
        value_start = name_start + name_len + 1
        if value_start + value_len > len(buffer):
            raise WinTarError(f"EA entry at {pos} runs past the buffer")
        name = buffer[name_start : name_start + name_len].decode("ascii", "replace")
        eas.append(ExtendedAttribute(name, buffer[value_start : value_start + value_len], flags))
        if next_offset == 0:
            break
        if next_offset < EA_ENTRY.size or next_offset % 4:
            raise WinTarError(f"EA entry at {pos} has a bad NextEntryOffset {next_offset}")
        pos += next_offset
    return eas
