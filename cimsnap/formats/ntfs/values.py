"""Attribute values of NTFS 3.1: standard information, file names, volume information, $AttrDef.

Layouts after ntfs-3g ``layout.h`` (STANDARD_INFORMATION v3, FILE_NAME_ATTR,
VOLUME_INFORMATION, ATTR_DEF).  Times are Windows FILETIMEs (100 ns since 1601-01-01 UTC).
"""

from __future__ import annotations

import functools
import struct
import time
from dataclasses import dataclass

from cimsnap.formats.ntfs.errors import NtfsError
from cimsnap.formats.upcase import upcase_table_bytes

FILETIME_UNIX_EPOCH = 116444736000000000


def filetime_now() -> int:
    return time.time_ns() // 100 + FILETIME_UNIX_EPOCH


# $STANDARD_INFORMATION (NTFS 3.x, 72 bytes): creation, modification, MFT change and access
# times, file attributes, maximum versions, version, class id, owner id, security id, quota
# charged, update sequence number.
_STANDARD_INFORMATION = struct.Struct("<QQQQIIIIIIQQ")
STANDARD_INFORMATION_SIZE = _STANDARD_INFORMATION.size


@dataclass
class StandardInformation:
    file_attributes: int
    security_id: int
    time: int
    owner_id: int = 0

    def pack(self) -> bytes:
        t = self.time
        return _STANDARD_INFORMATION.pack(
            t, t, t, t, self.file_attributes, 0, 0, 0, self.owner_id, self.security_id, 0, 0
        )

    @classmethod
    def unpack(cls, value: bytes) -> StandardInformation:
        if len(value) < 48:
            raise NtfsError("$STANDARD_INFORMATION is truncated")
        creation, _m, _c, _a, attributes = struct.unpack_from("<QQQQI", value)
        security_id = owner_id = 0
        if len(value) >= STANDARD_INFORMATION_SIZE:
            owner_id, security_id = struct.unpack_from("<II", value, 48)
        return cls(attributes, security_id, creation, owner_id)


# $FILE_NAME: parent reference, four times, allocated size, data size, file attributes,
# EA/reparse word, name length (units), namespace, then the UTF-16 name.
_FILE_NAME = struct.Struct("<QQQQQQQIIBB")
FILE_NAME_HEADER = _FILE_NAME.size  # 66


@dataclass
class FileName:
    parent: int  # file reference of the directory
    name: str
    namespace: int
    file_attributes: int
    time: int
    allocated_size: int = 0
    data_size: int = 0

    def pack(self) -> bytes:
        encoded = self.name.encode("utf-16-le", "surrogatepass")
        if not 1 <= len(encoded) // 2 <= 255:
            raise NtfsError(f"file name {self.name!r} must be 1 to 255 UTF-16 units")
        t = self.time
        head = _FILE_NAME.pack(
            self.parent,
            t,
            t,
            t,
            t,
            self.allocated_size,
            self.data_size,
            self.file_attributes,
            0,
            len(encoded) // 2,
            self.namespace,
        )
        return head + encoded

    @classmethod
    def unpack(cls, value: bytes) -> FileName:
        if len(value) < FILE_NAME_HEADER:
            raise NtfsError("$FILE_NAME is truncated")
        parent, creation, _m, _c, _a, alloc, size, attributes, _ea, units, namespace = (
            _FILE_NAME.unpack_from(value)
        )
        raw = value[FILE_NAME_HEADER : FILE_NAME_HEADER + 2 * units]
        if len(raw) != 2 * units:
            raise NtfsError("$FILE_NAME name runs past the attribute")
        name = raw.decode("utf-16-le", "surrogatepass")
        return cls(parent, name, namespace, attributes, creation, alloc, size)


def volume_information(major: int = 3, minor: int = 1, flags: int = 0) -> bytes:
    """$VOLUME_INFORMATION: 8 reserved bytes, major and minor version, flags."""
    return struct.pack("<QBBH", 0, major, minor, flags)


def parse_volume_information(value: bytes) -> tuple[int, int, int]:
    if len(value) < 12:
        raise NtfsError("$VOLUME_INFORMATION is truncated")
    _r, major, minor, flags = struct.unpack_from("<QBBH", value)
    return major, minor, flags


# $AttrDef: 160-byte records (name as 64 UTF-16 units, type, display rule, collation rule,
# flags, minimum and maximum size), the table 2560 bytes long (16 slots, the last empty).
# Values: the table Windows writes for NTFS 3.1 (the same one mkntfs copies).
ATTRDEF_ENTRY = struct.Struct("<128sIIIIqq")
ATTRDEF_SIZE = 2560
ATTRDEF_INDEXABLE = 0x02
ATTRDEF_RESIDENT_ONLY = 0x40
ATTRDEF_LOG_NONRESIDENT = 0x80
_ATTRDEF_TABLE: tuple[tuple[str, int, int, int, int], ...] = (
    # name, type, flags, minimum size, maximum size (-1: unlimited)
    ("$STANDARD_INFORMATION", 0x10, ATTRDEF_RESIDENT_ONLY, 0x30, 0x48),
    ("$ATTRIBUTE_LIST", 0x20, ATTRDEF_LOG_NONRESIDENT, 0, -1),
    ("$FILE_NAME", 0x30, ATTRDEF_INDEXABLE | ATTRDEF_RESIDENT_ONLY, 0x44, 0x242),
    ("$OBJECT_ID", 0x40, ATTRDEF_RESIDENT_ONLY, 0, 0x100),
    ("$SECURITY_DESCRIPTOR", 0x50, ATTRDEF_LOG_NONRESIDENT, 0, -1),
    ("$VOLUME_NAME", 0x60, ATTRDEF_RESIDENT_ONLY, 2, 0x100),
    ("$VOLUME_INFORMATION", 0x70, ATTRDEF_RESIDENT_ONLY, 0xC, 0xC),
    ("$DATA", 0x80, 0, 0, -1),
    ("$INDEX_ROOT", 0x90, ATTRDEF_RESIDENT_ONLY, 0, -1),
    ("$INDEX_ALLOCATION", 0xA0, ATTRDEF_LOG_NONRESIDENT, 0, -1),
    ("$BITMAP", 0xB0, ATTRDEF_LOG_NONRESIDENT, 0, -1),
    ("$REPARSE_POINT", 0xC0, ATTRDEF_LOG_NONRESIDENT, 0, 0x4000),
    ("$EA_INFORMATION", 0xD0, ATTRDEF_RESIDENT_ONLY, 8, 8),
    ("$EA", 0xE0, 0, 0, 0x10000),
    ("$LOGGED_UTILITY_STREAM", 0x100, ATTRDEF_LOG_NONRESIDENT, 0, 0x10000),
)


def attrdef_table() -> bytes:
    out = bytearray(ATTRDEF_SIZE)
    for i, (name, attr_type, flags, minimum, maximum) in enumerate(_ATTRDEF_TABLE):
        ATTRDEF_ENTRY.pack_into(
            out,
            i * ATTRDEF_ENTRY.size,
            name.encode("utf-16-le"),
            attr_type,
            0,
            0,
            flags,
            minimum,
            maximum,
        )
    return bytes(out)


# $UpCase:$Info (Windows 8 and later; ntfs-3g's struct UPCASEINFO): length, filler, CRC-64 of
# the table, then the version of Windows that generated it (left zero, as mkntfs does: the
# table is the Unicode 5.1 one every Windows since Vista writes).
_UPCASE_INFO = struct.Struct("<IIQIIIHH")
_CRC64_POLY = 0x9A6C9329AC4BC9B5  # reflected ECMA-182 (the variant mkntfs computes)


@functools.cache
def _crc64_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ _CRC64_POLY if c & 1 else c >> 1
        table.append(c)
    return table


def crc64(data: bytes) -> int:
    table = _crc64_table()
    crc = 0xFFFFFFFFFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFFFFFFFFFF


# CRC-64 of the Windows (Unicode 5.1) upcase table, as Windows 10 records it in $UpCase:$Info
# (seen on the Windows-formatted volume in the test data; a test recomputes it).  Saves
# hashing 128 KiB in Python on every first format.
WINDOWS_UPCASE_CRC64 = 0xDADC7E776B1B690C


def upcase_info(table: bytes) -> bytes:
    crc = WINDOWS_UPCASE_CRC64 if table == upcase_table_bytes() else crc64(table)
    return _UPCASE_INFO.pack(_UPCASE_INFO.size, 0, crc, 0, 0, 0, 0, 0)
