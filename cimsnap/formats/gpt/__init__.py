"""GUID Partition Table (UEFI 2.10 chapter 5): protective MBR, primary and backup tables.

Public API: :func:`new_table`, :func:`read_gpt`, :func:`write_gpt`, :class:`GptTable`
(``add_partition``, ``grow_partition``, ``move_backup_to_end``), :class:`GptPartition`, the
partition type GUIDs :data:`MICROSOFT_RESERVED` and :data:`BASIC_DATA`, and :class:`GptError`.
"""

from __future__ import annotations

from cimsnap.formats.gpt.errors import GptError
from cimsnap.formats.gpt.mbr import parse_mbr, protective_mbr
from cimsnap.formats.gpt.table import (
    BASIC_DATA,
    MICROSOFT_RESERVED,
    UNUSED,
    GptHeader,
    GptPartition,
    GptTable,
    detect_sector_size,
    new_table,
    read_gpt,
    write_gpt,
)

__all__ = [
    "BASIC_DATA",
    "MICROSOFT_RESERVED",
    "UNUSED",
    "GptError",
    "GptHeader",
    "GptPartition",
    "GptTable",
    "detect_sector_size",
    "new_table",
    "parse_mbr",
    "protective_mbr",
    "read_gpt",
    "write_gpt",
]
