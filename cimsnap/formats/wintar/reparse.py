"""Reparse buffers for symbolic links and mount points (MS-FSCC 2.1.2.1, 2.1.2.4, 2.1.2.5).

A layer tar stores a Windows symlink or junction as a tar symlink entry whose link name is the
target as Windows shows it (the *print name*), plus ``MSWINDOWS.mountpoint`` for junctions.
Importers turn that back into a REPARSE_DATA_BUFFER exactly as go-winio's EncodeReparsePoint
does (hcsshim passes that buffer to BackupWrite or to the CIM writer):

* tag IO_REPARSE_TAG_SYMLINK (0xA000000C) or IO_REPARSE_TAG_MOUNT_POINT (0xA0000003);
* the *substitute name* is the NT path: ``\\\\?\\X`` becomes ``\\??\\X``, ``\\\\server\\share``
  becomes ``\\??\\UNC\\server\\share``, ``C:\\x`` becomes ``\\??\\C:\\x``; anything else is kept
  as is and, for symlinks, marked relative (SYMLINK_FLAG_RELATIVE = 1);
* the substitute name comes first at offset 0, then the print name; both are UTF-16LE and
  NUL-terminated, the NULs not counted in the lengths.  MS-FSCC allows either order and no
  NULs; CreateSymbolicLinkW puts the print name first; we follow go-winio, whose buffer is what
  hcsshim stores.

Layout (little-endian): ReparseTag u32, ReparseDataLength u16, Reserved u16,
SubstituteNameOffset u16, SubstituteNameLength u16, PrintNameOffset u16, PrintNameLength u16,
[Flags u32 for symlinks], PathBuffer.  :func:`decode_reparse_point` reads either name order.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cimsnap.formats.wintar.errors import WinTarError

IO_REPARSE_TAG_MOUNT_POINT = 0xA0000003
IO_REPARSE_TAG_SYMLINK = 0xA000000C
SYMLINK_FLAG_RELATIVE = 0x00000001
# REPARSE_DATA_BUFFER header: ReparseTag, ReparseDataLength, Reserved.
REPARSE_HEADER = struct.Struct("<IHH")
# Name fields shared by both tags: SubstituteNameOffset/Length, PrintNameOffset/Length.
NAME_FIELDS = struct.Struct("<HHHH")
SYMLINK_FLAGS = struct.Struct("<I")
# MAXIMUM_REPARSE_DATA_BUFFER_SIZE (16 KiB) bounds the whole buffer.
MAX_REPARSE_BUFFER = 16 * 1024


@dataclass(frozen=True)
class ReparsePoint:
    """A symlink or mount point: its target as Windows prints it, and which kind it is."""

    target: str
    is_mount_point: bool = False


def _nt_path(target: str) -> tuple[str, bool]:
    """(substitute name, relative?) for a target, per go-winio EncodeReparsePoint."""
    if target.startswith("\\\\?\\"):
        return "\\??\\" + target[4:], False
    if target.startswith("\\\\"):
        return "\\??\\UNC\\" + target[2:], False
    if len(target) >= 2 and target[1] == ":" and target[0].isascii() and target[0].isalpha():
        return "\\??\\" + target, False
    return target, True


def _utf16z(text: str) -> bytes:
    try:
        return (text + "\x00").encode("utf-16-le")
    except UnicodeEncodeError:
        raise WinTarError(f"reparse target {text!r} is not valid Unicode") from None


def encode_reparse_point(target: str, is_mount_point: bool = False) -> bytes:
    """REPARSE_DATA_BUFFER for a symlink or mount point to ``target`` (a Windows path)."""
    if target == "" or "\x00" in target:
        raise WinTarError("reparse target is empty or contains NUL")
    substitute, relative = _nt_path(target)
    sub16 = _utf16z(substitute)
    print16 = _utf16z(target)
    tag = IO_REPARSE_TAG_MOUNT_POINT if is_mount_point else IO_REPARSE_TAG_SYMLINK
    flags = b"" if is_mount_point else SYMLINK_FLAGS.pack(SYMLINK_FLAG_RELATIVE if relative else 0)
    data_length = NAME_FIELDS.size + len(flags) + len(sub16) + len(print16)
    if REPARSE_HEADER.size + data_length > MAX_REPARSE_BUFFER:
        raise WinTarError(f"reparse target of {len(target)} characters is too long")
    names = NAME_FIELDS.pack(0, len(sub16) - 2, len(sub16), len(print16) - 2)
    return REPARSE_HEADER.pack(tag, data_length, 0) + names + flags + sub16 + print16


def decode_reparse_point(buffer: bytes) -> ReparsePoint:
    """Target and kind of a symlink or mount point reparse buffer (print name, as go-winio
    reads it; the substitute name with its ``\\??\\`` prefix undone when the print name is empty).
    """
    if len(buffer) < REPARSE_HEADER.size + NAME_FIELDS.size:
        raise WinTarError(f"reparse buffer of {len(buffer)} bytes is too short")
    tag, data_length, _reserved = REPARSE_HEADER.unpack_from(buffer)
    if tag == IO_REPARSE_TAG_MOUNT_POINT:
        path_start = REPARSE_HEADER.size + NAME_FIELDS.size
    elif tag == IO_REPARSE_TAG_SYMLINK:
        path_start = REPARSE_HEADER.size + NAME_FIELDS.size + SYMLINK_FLAGS.size
    else:
        raise WinTarError(f"reparse tag {tag:#010x} is neither a symlink nor a mount point")
    end = REPARSE_HEADER.size + data_length
    if end > len(buffer) or path_start > end:
        raise WinTarError("reparse buffer is shorter than its ReparseDataLength")
    sub_off, sub_len, print_off, print_len = NAME_FIELDS.unpack_from(buffer, REPARSE_HEADER.size)

    def name(offset: int, length: int) -> str:
        start = path_start + offset
        if length % 2 or start + length > end:
            raise WinTarError("reparse buffer name lies outside the buffer")
        return buffer[start : start + length].decode("utf-16-le", "surrogatepass")

    target = name(print_off, print_len)
    if not target:
        target = name(sub_off, sub_len)
        if target.startswith("\\??\\UNC\\"):
            target = "\\\\" + target[8:]
        elif target.startswith("\\??\\"):
            target = target[4:]
    return ReparsePoint(target, tag == IO_REPARSE_TAG_MOUNT_POINT)
