"""NTFS 3.1: a formatter for empty volumes, volume extension, and a small reader.

Public API: :func:`format_volume` (-> :class:`NtfsLayout`), :func:`extend_volume`
(-> :class:`ExtendResult`), :class:`NtfsVolume` (read side for tests and ``info``),
:class:`NtfsError`.
"""

from __future__ import annotations

from cimsnap.formats.ntfs.errors import NtfsError
from cimsnap.formats.ntfs.extend import ExtendResult, extend_volume
from cimsnap.formats.ntfs.format import SCRATCH_DIRECTORIES, NtfsLayout, format_volume
from cimsnap.formats.ntfs.reader import DirectoryEntry, MftRecord, NtfsVolume, VolumeInfo

__all__ = [
    "SCRATCH_DIRECTORIES",
    "DirectoryEntry",
    "ExtendResult",
    "MftRecord",
    "NtfsError",
    "NtfsLayout",
    "NtfsVolume",
    "VolumeInfo",
    "extend_volume",
    "format_volume",
]
