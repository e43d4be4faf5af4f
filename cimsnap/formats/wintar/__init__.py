"""Windows layer tar streams: the OCI layer format of Windows container images.

A Windows layer is a tar whose entries live under ``Files/`` (the container's C:\\), ``Hives/``
(registry hive deltas) and ``UtilityVM/Files/``, with the Win32 metadata of every file in PAX
records, as hcsshim exports layers (pkg/ociwclayer with go-winio's backuptar).  This package
reads and writes such streams, byte-compatible with hcsshim, with constant memory on
non-seekable input, and refuses unsafe or malformed input with one :class:`WinTarError`.

Reading::

    from cimsnap.formats.wintar import WinTarReader, EntryKind
    with open("layer.tar", "rb") as f:
        for entry in WinTarReader(f, name="layer.tar"):
            entry.kind            # EntryKind: FILE, DIRECTORY, SYMLINK, HARDLINK, STREAM,
                                  #            WHITEOUT, OPAQUE_WHITEOUT
            entry.path            # "Files\\Windows\\System32\\config\\SYSTEM" (backslashes)
            entry.attributes      # FILE_ATTRIBUTE_* (REPARSE_POINT set exactly for symlinks)
            entry.times           # FileTimes(creation, last_write, change, last_access): FILETIMEs
            entry.security_descriptor  # self-relative SD bytes or None (SDDL records converted)
            entry.eas             # tuple[ExtendedAttribute(name, value)]; entry.ea_buffer packs
                                  # them as FILE_FULL_EA_INFORMATION
            entry.link_target     # HARDLINK: layer path of the target; SYMLINK: Windows target
            entry.is_mount_point  # SYMLINK that is a junction
            entry.reparse         # SYMLINK: REPARSE_DATA_BUFFER as go-winio builds it
            entry.stream_name     # STREAM: the stream's name; entry.path is its file
            entry.size, entry.data.read(n)   # FILE/STREAM contents, readable until the next entry

Entry order is the tar's; a STREAM always directly follows its file (or another stream of it).
WHITEOUT paths are the removed path; OPAQUE_WHITEOUT paths the directory.  The reader checks:
paths stay inside ``Files``/``Hives``/``UtilityVM\\Files`` (no absolute paths, drive letters,
``..``, NUL), hard links and whiteouts stay below ``Files`` or ``UtilityVM\\Files``, stream
entries follow their file, header checksums, short data, PAX record syntax and sizes (1 MiB),
security descriptor structure, base64, times and attributes.  Errors carry the tar name, the
entry's header offset and its name.  After the end-of-archive marker the reader stops reading;
callers that hash the whole stream call ``reader.drain()`` to consume the rest.

Writing::

    from cimsnap.formats.wintar import FileTimes, WinMetadata, WinTarWriter, sddl_to_sd
    meta = WinMetadata(attributes=0x20, times=FileTimes.all_at(133_000_000_000_000_000),
                       security_descriptor=sddl_to_sd("O:BAG:SYD:(A;;FA;;;SY)"))
    with WinTarWriter(out) as w:
        w.add_directory("Files", WinMetadata(0x10, meta.times))
        w.add_file("Files\\a.txt", meta, b"hello")          # or (stream, size=n)
        w.add_stream("Files\\a.txt", "Zone.Identifier", b"[ZoneTransfer]")
        w.add_symlink("Files\\link", meta, "a.txt")           # mount_point=True for junctions
        w.add_hardlink("Files\\b.txt", "Files\\a.txt", meta)
        w.add_whiteout("Files\\old.txt")                  # and add_opaque_whiteout(dir)
    # add_entry(entry) writes an entry read by WinTarReader (copying a layer).
    # WinTarWriter(out, stream_data_suffix=True) names streams "<file>:<stream>:$DATA".

The output matches hcsshim's exporter byte for byte (see writer.py for the header layout), and
reading it back gives the same entries.  Helpers: :func:`sddl_to_sd`, :func:`sd_to_sddl`,
:func:`parse_security_descriptor` (re-exported from :mod:`cimsnap.formats.secdesc`, the shared
security descriptor package), :func:`encode_reparse_point`, :func:`decode_reparse_point`,
:func:`encode_ea_buffer`, :func:`decode_ea_buffer`, FILETIME conversions in :mod:`.times`.
"""

from __future__ import annotations

from cimsnap.formats.secdesc import (
    SecurityDescriptor,
    SecurityDescriptorError,
    parse_sddl,
    parse_security_descriptor,
    sd_to_sddl,
    sddl_to_sd,
)
from cimsnap.formats.wintar.ea import ExtendedAttribute, decode_ea_buffer, encode_ea_buffer
from cimsnap.formats.wintar.errors import WinTarError
from cimsnap.formats.wintar.model import EntryKind, WinMetadata, WinTarEntry
from cimsnap.formats.wintar.reader import WinTarReader, read_layer_tar
from cimsnap.formats.wintar.reparse import (
    IO_REPARSE_TAG_MOUNT_POINT,
    IO_REPARSE_TAG_SYMLINK,
    ReparsePoint,
    decode_reparse_point,
    encode_reparse_point,
)
from cimsnap.formats.wintar.times import (
    FileTimes,
    filetime_from_datetime,
    filetime_from_unix_ns,
    filetime_to_datetime,
    filetime_to_unix_ns,
)
from cimsnap.formats.wintar.writer import WinTarWriter

__all__ = [
    "IO_REPARSE_TAG_MOUNT_POINT",
    "IO_REPARSE_TAG_SYMLINK",
    "EntryKind",
    "ExtendedAttribute",
    "FileTimes",
    "ReparsePoint",
    "SecurityDescriptor",
    "SecurityDescriptorError",
    "WinMetadata",
    "WinTarEntry",
    "WinTarError",
    "WinTarReader",
    "WinTarWriter",
    "decode_ea_buffer",
    "decode_reparse_point",
    "encode_ea_buffer",
    "encode_reparse_point",
    "filetime_from_datetime",
    "filetime_from_unix_ns",
    "filetime_to_datetime",
    "filetime_to_unix_ns",
    "parse_sddl",
    "parse_security_descriptor",
    "read_layer_tar",
    "sd_to_sddl",
    "sddl_to_sd",
]
