"""Win32 metadata between its forms: layer tar entries, CIM file metadata, host files.

A tar entry (:class:`~cimsnap.formats.wintar.WinTarEntry`) becomes the ``CimCreateFile``
metadata of the CIM writer as hcsshim's importer builds it (pkg/ociwclayer/cim/import.go:
attributes with FILE_ATTRIBUTE_REPARSE_POINT only for symlinks, the four FILETIMEs, the raw
security descriptor, the EA chain, the reparse buffer), and a CIM file's stat becomes tar
metadata again for export.

The tar's entry type decides what a path is: FILE_ATTRIBUTE_DIRECTORY is set for directories and
cleared for regular files whatever ``MSWINDOWS.fileattr`` says (a CIM entry whose attribute
contradicts its type could not be written; a choice); a symlink keeps it, so directory symlinks
and junctions are directories with a reparse point, as hcsshim's CimCreateFile call makes them.
"""

from __future__ import annotations

from cimsnap.formats.cim import CimStat, FileMetadata
from cimsnap.formats.cim.format import FILE_ATTRIBUTE_DIRECTORY, FILE_ATTRIBUTE_REPARSE_POINT
from cimsnap.formats.wintar import (
    EntryKind,
    ExtendedAttribute,
    FileTimes,
    WinMetadata,
    WinTarEntry,
    decode_ea_buffer,
)


def cim_metadata(entry: WinTarEntry) -> FileMetadata:
    """What the CIM writer is given for a file, directory or symlink entry."""
    attributes = entry.attributes & ~FILE_ATTRIBUTE_REPARSE_POINT
    if entry.kind is EntryKind.DIRECTORY:
        attributes |= FILE_ATTRIBUTE_DIRECTORY
    elif entry.kind is not EntryKind.SYMLINK:  # a directory symlink or junction stays one
        attributes &= ~FILE_ATTRIBUTE_DIRECTORY
    reparse = entry.reparse if entry.kind is EntryKind.SYMLINK and entry.reparse else None
    if reparse is not None:
        attributes |= FILE_ATTRIBUTE_REPARSE_POINT
    times = entry.times
    return FileMetadata(
        attributes=attributes,
        creation_time=times.creation,
        last_write_time=times.last_write,
        change_time=times.change,
        last_access_time=times.last_access,
        security_descriptor=entry.security_descriptor,
        extended_attributes=entry.ea_buffer,
        reparse_buffer=reparse,
    )


def generated_metadata(filetime: int, *, directory: bool = False) -> FileMetadata:
    """Metadata of a file the importer makes itself (``layout``, ``Hives``, merged hives):
    FILE_ATTRIBUTE_NORMAL (or DIRECTORY) and all four times ``filetime`` (hcsshim uses now)."""
    from cimsnap.formats.cim.format import FILE_ATTRIBUTE_NORMAL

    attributes = FILE_ATTRIBUTE_DIRECTORY if directory else FILE_ATTRIBUTE_NORMAL
    return FileMetadata(attributes, filetime, filetime, filetime, filetime)


def parent_directory_metadata(entry: WinTarEntry) -> FileMetadata:
    """Metadata of a directory the tar names no entry for but one of its entries needs: plain
    DIRECTORY with the entry's times (a choice: hcsshim would fail instead)."""
    times = entry.times
    return FileMetadata(
        FILE_ATTRIBUTE_DIRECTORY, times.creation, times.last_write, times.change, times.last_access
    )


def win_metadata(stat: CimStat) -> WinMetadata:
    """Tar metadata of a file or directory read from a CIM."""
    eas: tuple[ExtendedAttribute, ...] = ()
    if stat.extended_attributes:
        eas = tuple(decode_ea_buffer(stat.extended_attributes))
    return WinMetadata(
        attributes=stat.attributes,
        times=FileTimes(
            stat.creation_time, stat.last_write_time, stat.change_time, stat.last_access_time
        ),
        security_descriptor=stat.security_descriptor,
        eas=eas,
    )
