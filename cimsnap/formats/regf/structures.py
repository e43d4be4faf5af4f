"""On-disk structures of a registry hive (regf): base block, hive bin, cells and records.

Every layout is declared once here, next to its constants.  Source: Maxim Suhanov, "Windows
registry file format specification" (msuhanov/regf), sections "Base block", "Hive bin", "Cell",
"Index leaf", "Fast leaf", "Hash leaf", "Index root", "Key node", "Key values list", "Key value",
"Key security", "Big data" and "Layered keys".  Offsets inside records are relative to the start
of the cell data (just after the 4-byte cell size), as in the specification.
"""

from __future__ import annotations

import enum
import struct

from cimsnap.errors import FormatError

# --- base block (the first 4096 bytes of a primary file) -------------------------------------
BASE_BLOCK_SIZE = 4096
REGF_SIGNATURE = b"regf"
# signature, seq1, seq2, last written FILETIME, major, minor, file type, file format,
# root cell offset, hive bins data size, clustering factor
BASE_BLOCK_HEADER = struct.Struct("<4sIIQIIIIIII")
BASE_FILE_NAME_OFFSET = 48
BASE_FILE_NAME_SIZE = 64
BASE_FLAGS_OFFSET = 144  # Windows 10: bit 0 = KTM locked, bit 1 = layered keys supported
CHECKSUM_OFFSET = 508  # XOR-32 of the first 508 bytes
CHECKSUM_SPAN = 508

FILE_TYPE_PRIMARY = 0
FILE_TYPE_LOG_OLD = 1  # transaction log, old format (also 2 before Windows XP)
FILE_TYPE_LOG_OLD_W2K = 2
FILE_TYPE_LOG_NEW = 6  # transaction log, new format (Windows 8.1+)
FILE_FORMAT_DIRECT_MEMORY_LOAD = 1
BASE_FLAG_LAYERED_KEYS = 0x2

MAJOR_VERSION = 1
MINOR_VERSION_DEFAULT = 5  # regf 1.5: hash leaves ("lh") and big data ("db")
MINOR_WITH_BIG_DATA = 4  # "db" records exist when the minor version is greater than 3
MINOR_WITH_HASH_LEAF = 5  # "lh" is used when the minor version is greater than 4

# --- hive bins -------------------------------------------------------------------------------
HBIN_SIGNATURE = b"hbin"
HBIN_HEADER = struct.Struct("<4sIIQQI")  # signature, offset, size, reserved, timestamp, spare
HBIN_HEADER_SIZE = 32
HBIN_ALIGNMENT = 4096

# --- cells -----------------------------------------------------------------------------------
CELL_ALIGNMENT = 8
CELL_SIZE = struct.Struct("<i")  # negative = allocated, positive = free
MIN_CELL_SIZE = 8
NIL = 0xFFFFFFFF  # "points nowhere"

# --- subkey lists: li, lf, lh, ri ------------------------------------------------------------
LIST_HEADER = struct.Struct("<2sH")  # signature, number of elements
SIG_INDEX_LEAF = b"li"
SIG_FAST_LEAF = b"lf"
SIG_HASH_LEAF = b"lh"
SIG_INDEX_ROOT = b"ri"
# How many elements we put in one leaf before splitting into an index root.  Windows sizes a leaf
# to fit a 4 KiB block: (4096 - 32 (hbin header) - 4 (cell size) - 4 (list header)) / 8 = 507
# (ReactOS cmindex.c, CmpMaxFastIndexPerHblock).  Our choice, documented in the README.
MAX_LEAF_ELEMENTS = 507

# --- key node (nk) ---------------------------------------------------------------------------
SIG_KEY_NODE = b"nk"
# signature, flags, last written, access bits (+ layered key bit fields), parent,
# subkeys, volatile subkeys, subkeys list, volatile subkeys list, values, values list,
# security, class name, largest subkey name, largest subkey class name, largest value name,
# largest value data, work var, key name length, class name length
KEY_NODE = struct.Struct("<2sHQIIIIIIIIIIIIIIIHH")
KEY_NODE_SIZE = KEY_NODE.size  # 76; the name follows
NK_FLAGS = 2
NK_TIMESTAMP = 4
NK_ACCESS_BITS = 12
NK_LAYERED_BITS = 13  # byte holding "Inherit class" (0x80) and "Layer semantics" (0x03)
NK_PARENT = 16
NK_SUBKEY_COUNT = 20
NK_VOLATILE_SUBKEY_COUNT = 24
NK_SUBKEY_LIST = 28
NK_VOLATILE_SUBKEY_LIST = 32
NK_VALUE_COUNT = 36
NK_VALUE_LIST = 40
NK_SECURITY = 44
NK_CLASS = 48
NK_MAX_SUBKEY_NAME = 52  # low 16 bits; high bits hold virtualization/user/debug flags
NK_MAX_SUBKEY_CLASS = 56
NK_MAX_VALUE_NAME = 60
NK_MAX_VALUE_DATA = 64
NK_NAME_LENGTH = 72
NK_CLASS_LENGTH = 74

KEY_VOLATILE = 0x0001
KEY_HIVE_EXIT = 0x0002
KEY_HIVE_ENTRY = 0x0004
KEY_NO_DELETE = 0x0008
KEY_SYM_LINK = 0x0010
KEY_COMP_NAME = 0x0020
KEY_PREDEF_HANDLE = 0x0040
ROOT_KEY_FLAGS = KEY_HIVE_ENTRY | KEY_NO_DELETE | KEY_COMP_NAME

LAYER_INHERIT_CLASS = 0x80  # in the layered-key byte (NK_LAYERED_BITS)
LAYER_SEMANTICS_MASK = 0x03


class LayerSemantics(enum.IntEnum):
    """Key node "Layer semantics" of a differencing (layered) hive."""

    NORMAL = 0
    TOMBSTONE = 1  # IsTombstone: the key and its lower layers are hidden
    SUPERSEDE_LOCAL = 2  # IsSupersedeLocal: this key replaces the lower key, subkeys still merge
    SUPERSEDE_TREE = 3  # IsSupersedeTree: this key and its subtree replace the lower subtree


# --- key value (vk) --------------------------------------------------------------------------
SIG_KEY_VALUE = b"vk"
# signature, name length, data size, data offset, data type, flags, spare
KEY_VALUE = struct.Struct("<2sHIIIHH")
KEY_VALUE_SIZE = KEY_VALUE.size  # 20; the name follows
VK_DATA_SIZE = 4
VK_DATA_OFFSET = 8
VK_TYPE = 12
VK_FLAGS = 16
DATA_INLINE_FLAG = 0x80000000  # data of 4 bytes or less lives in the data-offset field
MAX_INLINE_DATA = 4
VALUE_COMP_NAME = 0x0001
VALUE_TOMBSTONE = 0x0002

# --- key security (sk) -----------------------------------------------------------------------
SIG_KEY_SECURITY = b"sk"
KEY_SECURITY = struct.Struct("<2sHIIII")  # signature, reserved, flink, blink, refcount, sd size
KEY_SECURITY_SIZE = KEY_SECURITY.size  # 20; the security descriptor follows
SK_FLINK = 4
SK_BLINK = 8
SK_REFCOUNT = 12

# --- big data (db) ---------------------------------------------------------------------------
SIG_BIG_DATA = b"db"
BIG_DATA = struct.Struct("<2sHI")  # signature, number of segments, offset of the segment list
BIG_DATA_SEGMENT_SIZE = 16344  # largest data stored in one cell / one big-data segment

U32 = struct.Struct("<I")
U16 = struct.Struct("<H")
U64 = struct.Struct("<Q")


class RegType(enum.IntEnum):
    """Value data types (winnt.h REG_*); other numbers are allowed and kept as they are."""

    REG_NONE = 0
    REG_SZ = 1
    REG_EXPAND_SZ = 2
    REG_BINARY = 3
    REG_DWORD = 4
    REG_DWORD_BIG_ENDIAN = 5
    REG_LINK = 6
    REG_MULTI_SZ = 7
    REG_RESOURCE_LIST = 8
    REG_FULL_RESOURCE_DESCRIPTOR = 9
    REG_RESOURCE_REQUIREMENTS_LIST = 10
    REG_QWORD = 11


def type_name(value_type: int) -> str:
    """``REG_SZ`` for known types, ``REG_0x1234`` for others."""
    try:
        return RegType(value_type).name
    except ValueError:
        return f"REG_{value_type:#x}"


def parse_type(text: str) -> int:
    """Accept ``REG_SZ``, ``sz``, ``1`` or ``0x10`` (case-insensitive)."""
    name = text.strip().upper()
    if not name.startswith("REG_"):
        name = "REG_" + name
    aliases = {"REG_DWORD_LITTLE_ENDIAN": "REG_DWORD", "REG_QWORD_LITTLE_ENDIAN": "REG_QWORD"}
    name = aliases.get(name, name)
    if name in RegType.__members__:
        return int(RegType[name])
    number = name.removeprefix("REG_")
    try:
        value = int(number, 0)
    except ValueError:
        raise FormatError(f"unknown registry value type {text!r}") from None
    if not 0 <= value <= 0xFFFFFFFF:
        raise FormatError(f"registry value type {text!r} out of range")
    return value


def checksum(base_block: bytes | bytearray | memoryview) -> int:
    """XOR-32 of the first 508 bytes; -1 becomes -2 and 0 becomes 1 (spec, base block note 2)."""
    value = 0
    for (word,) in struct.iter_unpack("<I", base_block[:CHECKSUM_SPAN]):
        value ^= word
    if value == 0xFFFFFFFF:
        return 0xFFFFFFFE
    if value == 0:
        return 1
    return value


def align(n: int, to: int) -> int:
    return (n + to - 1) // to * to
