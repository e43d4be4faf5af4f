"""Windows file metadata as CimFS stores it: attributes, times, SD, EAs, reparse buffer.

Mirrors the Windows ``CIMFS_FILE_METADATA`` (cimfs.h): attributes (FILE_ATTRIBUTE_*), four
FILETIMEs, a self-relative security descriptor, a FILE_FULL_EA_INFORMATION chain and a full
reparse buffer.  Also the codecs for EA chains and reparse buffers (Windows documentation of
FILE_FULL_EA_INFORMATION and REPARSE_DATA_BUFFER / REPARSE_GUID_DATA_BUFFER) and FILETIME
conversion.  Reference sections "File entry" and "Limits".
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cimsnap.errors import UsageError
from cimsnap.formats.cim.format import (
    FILE_ATTRIBUTE_DIRECTORY,
    FILE_ATTRIBUTE_REPARSE_POINT,
    MAX_EA_NAME_LENGTH,
    MAX_FULL_EA_LENGTH,
    STORABLE_ATTRIBUTES,
)

# FILETIME: 100 ns intervals since 1601-01-01 UTC.
FILETIME_UNIX_EPOCH = 116444736000000000
MAX_FILETIME = (1 << 64) - 1


def filetime_from_ns(unix_ns: int) -> int:
    """FILETIME of a Unix time in nanoseconds (truncated to 100 ns, clamped to FILETIME range)."""
    return min(max(unix_ns // 100 + FILETIME_UNIX_EPOCH, 0), MAX_FILETIME)


def ns_from_filetime(filetime: int) -> int:
    """Unix time in nanoseconds of a FILETIME (0 means "not set" and maps to the epoch 1601)."""
    return (filetime - FILETIME_UNIX_EPOCH) * 100


# --- Extended attributes (FILE_FULL_EA_INFORMATION chain) -----------------------------------

EA_HEADER = struct.Struct("<IBBH")  # next entry offset, flags, name length, value length
EA_ALIGNMENT = 4
FILE_NEED_EA = 0x80


@dataclass(frozen=True)
class ExtendedAttribute:
    name: bytes  # ANSI name as stored (no terminating NUL)
    value: bytes
    flags: int = 0


def encode_eas(eas: list[ExtendedAttribute]) -> bytes:
    """A FILE_FULL_EA_INFORMATION chain; entries 4-byte aligned, the last one unpadded."""
    out = bytearray()
    for i, ea in enumerate(eas):
        if not 0 < len(ea.name) <= MAX_EA_NAME_LENGTH or b"\0" in ea.name:
            raise UsageError(f"invalid EA name {ea.name!r} (1..{MAX_EA_NAME_LENGTH} bytes, no NUL)")
        if len(ea.value) > 0xFFFF:
            raise UsageError(f"EA {ea.name!r} value is longer than 65535 bytes")
        body = ea.name + b"\0" + ea.value
        length = EA_HEADER.size + len(body)
        last = i == len(eas) - 1
        padded = length if last else -(-length // EA_ALIGNMENT) * EA_ALIGNMENT
        out += EA_HEADER.pack(0 if last else padded, ea.flags, len(ea.name), len(ea.value))
        out += body + b"\0" * (padded - length)
    if len(out) > MAX_FULL_EA_LENGTH:
        raise UsageError(
            f"extended attributes take {len(out)} bytes, more than {MAX_FULL_EA_LENGTH}"
        )
    return bytes(out)


def decode_eas(raw: bytes) -> list[ExtendedAttribute]:
    """Entries of a FILE_FULL_EA_INFORMATION chain; ValueError when malformed."""
    out: list[ExtendedAttribute] = []
    at = 0
    while raw[at:]:
        if len(raw) - at < EA_HEADER.size:
            raise ValueError(f"EA entry at {at} is truncated")
        next_offset, flags, name_len, value_len = EA_HEADER.unpack_from(raw, at)
        name_at = at + EA_HEADER.size
        end = name_at + name_len + 1 + value_len
        if name_len == 0 or end > len(raw) or raw[name_at + name_len] != 0:
            raise ValueError(f"EA entry at {at} is malformed")
        out.append(
            ExtendedAttribute(
                raw[name_at : name_at + name_len], raw[name_at + name_len + 1 : end], flags
            )
        )
        if next_offset == 0:
            if end != len(raw):
                raise ValueError(f"{len(raw) - end} bytes follow the last EA entry")
            break
        if next_offset < end - at:
            raise ValueError(f"EA entry at {at} has next offset {next_offset} inside itself")
        at += next_offset
    return out


def check_eas(raw: bytes) -> None:
    if len(raw) > MAX_FULL_EA_LENGTH:
        raise UsageError(
            f"extended attributes take {len(raw)} bytes, more than {MAX_FULL_EA_LENGTH}"
        )
    try:
        decode_eas(raw)
    except ValueError as err:
        raise UsageError(f"invalid extended attribute buffer: {err}") from None


# --- Reparse buffers ------------------------------------------------------------------------

REPARSE_HEADER = struct.Struct("<IHH")  # tag, data length, reserved
REPARSE_GUID_LENGTH = 16
IO_REPARSE_TAG_SYMLINK = 0xA000000C
IO_REPARSE_TAG_MOUNT_POINT = 0xA0000003
SYMLINK_FLAG_RELATIVE = 0x1
_MICROSOFT_TAG_BIT = 0x80000000


def reparse_tag(buffer: bytes) -> int:
    """Tag of a full reparse buffer; UsageError unless its length fields are consistent."""
    if len(buffer) < REPARSE_HEADER.size:
        raise UsageError(f"reparse buffer of {len(buffer)} bytes is shorter than its header")
    tag, data_length, _ = REPARSE_HEADER.unpack_from(buffer)
    # Third-party tags carry a GUID before the data (REPARSE_GUID_DATA_BUFFER).
    head = REPARSE_HEADER.size + (0 if tag & _MICROSOFT_TAG_BIT else REPARSE_GUID_LENGTH)
    if tag == 0 or len(buffer) != head + data_length:
        raise UsageError(
            f"reparse buffer (tag {tag:#x}) is {len(buffer)} bytes, "
            f"its header says {head + data_length}"
        )
    if len(buffer) > 0xFFFF:
        raise UsageError("reparse buffer is longer than 65535 bytes")
    return tag


SYMLINK_BODY = struct.Struct("<HHHHI")  # substitute off, len, print off, len, flags


def symlink_reparse_buffer(target: str, *, relative: bool) -> bytes:
    """IO_REPARSE_TAG_SYMLINK buffer for ``target`` (substitute and print name both the target)."""
    name = target.encode("utf-16-le", "surrogatepass")
    body = SYMLINK_BODY.pack(
        0, len(name), len(name), len(name), SYMLINK_FLAG_RELATIVE if relative else 0
    )
    data = body + name + name
    return REPARSE_HEADER.pack(IO_REPARSE_TAG_SYMLINK, len(data), 0) + data


def symlink_target(buffer: bytes) -> tuple[str, bool] | None:
    """(print name, relative) of a symlink reparse buffer, None for other tags or bad buffers."""
    if len(buffer) < REPARSE_HEADER.size + SYMLINK_BODY.size:
        return None
    tag, _, _ = REPARSE_HEADER.unpack_from(buffer)
    if tag != IO_REPARSE_TAG_SYMLINK:
        return None
    _, _, print_off, print_len, flags = SYMLINK_BODY.unpack_from(buffer, REPARSE_HEADER.size)
    start = REPARSE_HEADER.size + SYMLINK_BODY.size + print_off
    raw = buffer[start : start + print_len]
    if len(raw) != print_len or print_len % 2:
        return None
    return raw.decode("utf-16-le", "surrogatepass"), bool(flags & SYMLINK_FLAG_RELATIVE)


# --- What a writer is given for each file ---------------------------------------------------


@dataclass
class FileMetadata:
    """Metadata of one file or directory, as ``CimCreateFile`` takes it.

    ``attributes`` are Windows FILE_ATTRIBUTE_* bits; FILE_ATTRIBUTE_DIRECTORY makes a directory.
    READONLY, HIDDEN, SYSTEM, ARCHIVE and SPARSE_FILE are stored; REPARSE_POINT follows from
    ``reparse_buffer``; others (NORMAL, NOT_CONTENT_INDEXED...) cannot be stored and are dropped.
    Times are FILETIMEs.  ``security_descriptor`` is a self-relative SD (None: none stored),
    ``extended_attributes`` a FILE_FULL_EA_INFORMATION chain (see :func:`encode_eas`),
    ``reparse_buffer`` a full reparse buffer (tag, length, reserved, data).
    """

    attributes: int = 0
    creation_time: int = 0
    last_write_time: int = 0
    change_time: int = 0
    last_access_time: int = 0
    security_descriptor: bytes | None = None
    extended_attributes: bytes = b""
    reparse_buffer: bytes | None = None

    @property
    def is_directory(self) -> bool:
        return bool(self.attributes & FILE_ATTRIBUTE_DIRECTORY)

    @classmethod
    def directory(cls, **kwargs: object) -> FileMetadata:
        meta = cls(**kwargs)  # type: ignore[arg-type]
        meta.attributes |= FILE_ATTRIBUTE_DIRECTORY
        return meta

    def stored_attributes(self) -> int:
        """The attributes a reader will report for this file once written."""
        attrs = self.attributes & STORABLE_ATTRIBUTES
        if self.is_directory:
            attrs |= FILE_ATTRIBUTE_DIRECTORY
        if self.reparse_buffer:
            attrs |= FILE_ATTRIBUTE_REPARSE_POINT
        return attrs

    def validate(self) -> None:
        """UsageError unless every field can be stored."""
        if not (  # once per file written: one expression for the usual case
            0 <= self.creation_time <= MAX_FILETIME
            and 0 <= self.last_write_time <= MAX_FILETIME
            and 0 <= self.change_time <= MAX_FILETIME
            and 0 <= self.last_access_time <= MAX_FILETIME
        ):
            for name in ("creation_time", "last_write_time", "change_time", "last_access_time"):
                value = getattr(self, name)
                if not 0 <= value <= MAX_FILETIME:
                    raise UsageError(f"{name} {value} is not a FILETIME")
        if self.security_descriptor is not None and not 0 < len(self.security_descriptor) <= 0xFFFF:
            raise UsageError(f"security descriptor of {len(self.security_descriptor)} bytes")
        if self.extended_attributes:
            check_eas(self.extended_attributes)
        if self.reparse_buffer is not None:
            reparse_tag(self.reparse_buffer)
