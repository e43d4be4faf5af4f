"""Streaming reader of Windows layer tars: tar entries -> :class:`WinTarEntry` values.

Implements what hcsshim's importers (pkg/ociwclayer import.go and cim/import.go with go-winio's
backuptar) make of each tar entry, plus the safety checks of paths.py:

* a base name starting with ``.wh.`` is a whiteout of ``<dir>\\<rest>``, whatever its type
  (``.wh..wh..opq`` an opaque-directory marker, other ``.wh..wh.`` names are refused);
* a tar hard link is a hard link (metadata in its header is reported but unused by hcsshim);
* a regular entry ``<file>:<stream>`` (or ``...:$DATA``) right after ``<file>`` (or after other
  streams of it) is an alternate data stream; anywhere else it is refused;
* anything else is a file, directory or symlink with FileInfoFromHeader's metadata:
  attributes from ``MSWINDOWS.fileattr`` (else DIRECTORY for directories, else 0); last-write
  time from ``mtime``, creation time from ``LIBARCHIVE.creationtime`` (else mtime), change and
  access times from ``ctime``/``atime`` (else mtime: a choice, :data:`MISSING_TIME_SOURCE`);
  the security descriptor from ``MSWINDOWS.rawsd`` (else the SDDL of ``MSWINDOWS.sd``), EAs
  from ``MSWINDOWS.xattr.*``; a symlink's reparse buffer built from its link name and
  ``MSWINDOWS.mountpoint``.  FILE_ATTRIBUTE_REPARSE_POINT is cleared, then set for symlinks,
  as hcsshim's CIM importer does.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
from collections.abc import Iterator
from typing import BinaryIO, NoReturn

from cimsnap.formats.secdesc import SecurityDescriptorError, parse_security_descriptor, sddl_to_sd
from cimsnap.formats.wintar import paths
from cimsnap.formats.wintar.ea import ExtendedAttribute, check_ea_name, check_unique_names
from cimsnap.formats.wintar.errors import WinTarError
from cimsnap.formats.wintar.model import EntryData, EntryKind, WinTarEntry
from cimsnap.formats.wintar.records import (
    AUFS_META_PREFIX,
    FILE_ATTRIBUTE_DIRECTORY,
    FILE_ATTRIBUTE_REPARSE_POINT,
    OPAQUE_WHITEOUT,
    PAX_CREATION_TIME,
    PAX_EA_PREFIX,
    PAX_FILE_ATTRIBUTES,
    PAX_MOUNT_POINT,
    PAX_RAW_SD,
    PAX_SDDL_SD,
    WHITEOUT_PREFIX,
)
from cimsnap.formats.wintar.reparse import encode_reparse_point
from cimsnap.formats.wintar.tarstream import (
    PAX_MTIME,
    TYPE_DIR,
    TYPE_LINK,
    TYPE_REG,
    TYPE_SYMLINK,
    TarMember,
    TarReader,
)
from cimsnap.formats.wintar.times import (
    FileTimes,
    TimeRangeError,
    filetime_from_unix_ns,
    parse_pax_time,
)

# Which tar time stands in for a missing atime/ctime.  go-winio converts Go's zero time (an
# undefined value); we use the last-write time, the one time every entry has.  (Choice.)
MISSING_TIME_SOURCE = "mtime"


class WinTarReader:
    """Iterate over the entries of a Windows layer tar read from ``fileobj``.

    ``fileobj`` is any binary stream (seekable or not); ``name`` labels errors.  Each entry's
    ``data`` is readable until the iteration moves on; unread data is skipped.
    """

    def __init__(self, fileobj: BinaryIO, name: str | os.PathLike[str] | None = None) -> None:
        self._tar = TarReader(fileobj, name)
        self._owner: str | None = None  # path of the entry streams may follow

    @property
    def position(self) -> int:
        return self._tar.position

    def drain(self) -> int:
        """After iterating: read what follows the end-of-archive marker; bytes read."""
        return self._tar.drain()

    def __iter__(self) -> Iterator[WinTarEntry]:
        next_member = self._tar.next
        entry = self._entry
        while True:
            member = next_member()
            if member is None:
                return
            yield entry(member)

    def _fail(self, member: TarMember, message: str) -> NoReturn:
        raise WinTarError(message, path=self._tar.name, offset=member.offset, inner=member.name)

    def _data(self, size: int) -> EntryData:
        return EntryData(self._tar, size)

    def _entry(self, member: TarMember) -> WinTarEntry:
        try:
            return self._classify(member)
        except (paths.UnsafePathError, TimeRangeError) as exc:
            self._fail(member, str(exc))
        except WinTarError as exc:
            if exc.offset is None:
                self._fail(member, exc.message)
            raise
        except SecurityDescriptorError as exc:
            self._fail(member, exc.message)

    def _classify(self, member: TarMember) -> WinTarEntry:
        name = member.name
        # Absolute paths, drive letters, "..", NUL: before all else.
        parts = paths.split_components(name)
        base = parts[-1]  # the last component (one trailing separator was dropped)
        if base.startswith(WHITEOUT_PREFIX):
            self._owner = None
            return self._whiteout(member, base)
        if member.typeflag == TYPE_REG and ":" in base:
            stream = paths.split_stream_name(name)
            if stream is not None:
                return self._stream(member, *stream)
        if member.typeflag == TYPE_LINK:
            self._owner = None
            return self._hardlink(member, parts)
        return self._file_dir_or_symlink(member, parts)

    def _whiteout(self, member: TarMember, base: str) -> WinTarEntry:
        parent = member.name.rstrip("/\\")[: -len(base)]
        if base == OPAQUE_WHITEOUT:
            directory = paths.layer_path(parent) if parent.strip("/\\.") else ""
            if not any(
                paths.is_at_or_under(directory, root) for root in paths.LINK_AND_WHITEOUT_ROOTS
            ):
                self._fail(member, "opaque whiteout outside Files and UtilityVM\\Files")
            return self._plain(member, EntryKind.OPAQUE_WHITEOUT, directory)
        if base.startswith(AUFS_META_PREFIX):
            self._fail(member, "AUFS metadata entry (.wh..wh.*) cannot be in a Windows layer")
        removed = base[len(WHITEOUT_PREFIX) :]
        if removed == "":
            self._fail(member, "whiteout without a name")
        target = paths.layer_path(parent + removed)
        paths.check_link_location(target, "whiteout")
        return self._plain(member, EntryKind.WHITEOUT, target)

    def _plain(self, member: TarMember, kind: EntryKind, path: str) -> WinTarEntry:
        return WinTarEntry(
            kind=kind, path=path, tar_name=member.name, offset=member.offset, data=self._data(0)
        )

    def _stream(self, member: TarMember, owner_name: str, stream: str) -> WinTarEntry:
        owner = paths.layer_path(owner_name)
        if owner != self._owner:
            self._fail(member, "alternate stream entry does not follow its file")
        return WinTarEntry(
            kind=EntryKind.STREAM,
            path=owner,
            stream_name=stream,
            size=member.size,
            times=self._times(member),
            tar_name=member.name,
            offset=member.offset,
            data=self._data(member.size),
        )

    def _hardlink(self, member: TarMember, parts: list[str]) -> WinTarEntry:
        path = paths.layer_path_of_parts(parts)
        if member.linkname == "":
            self._fail(member, "hard link without a target")
        target = paths.layer_path(member.linkname)
        paths.check_link_location(path, "hard link")
        paths.check_link_location(target, "hard link target")
        if target == path:
            self._fail(member, "hard link to itself")
        return WinTarEntry(
            kind=EntryKind.HARDLINK,
            path=path,
            attributes=self._attributes(member),
            times=self._times(member),
            link_target=target,
            tar_name=member.name,
            offset=member.offset,
            data=self._data(0),
        )

    def _file_dir_or_symlink(self, member: TarMember, parts: list[str]) -> WinTarEntry:
        path = paths.layer_path_of_parts(parts)
        attributes = self._attributes(member) & ~FILE_ATTRIBUTE_REPARSE_POINT
        typeflag = member.typeflag
        if typeflag == TYPE_DIR and not attributes & FILE_ATTRIBUTE_DIRECTORY:
            self._fail(member, "directory entry without FILE_ATTRIBUTE_DIRECTORY")
        if typeflag == TYPE_REG and attributes & FILE_ATTRIBUTE_DIRECTORY:
            self._fail(member, "regular file entry with FILE_ATTRIBUTE_DIRECTORY")
        if path in paths.SKELETON_DIRECTORIES and typeflag != TYPE_DIR:
            self._fail(member, f"{path} must be a directory")
        link_target = None
        reparse = None
        mount_point = False
        if typeflag == TYPE_SYMLINK:
            if member.linkname == "":
                self._fail(member, "symlink without a target")
            link_target = member.linkname.replace("/", "\\")
            mount_point = PAX_MOUNT_POINT in member.pax
            reparse = encode_reparse_point(link_target, mount_point)
            attributes |= FILE_ATTRIBUTE_REPARSE_POINT
            kind = EntryKind.SYMLINK
        elif typeflag == TYPE_DIR:
            kind = EntryKind.DIRECTORY
        else:
            kind = EntryKind.FILE
        self._owner = path
        return WinTarEntry(
            kind=kind,
            path=path,
            attributes=attributes,
            times=self._times(member),
            security_descriptor=self._security_descriptor(member),
            eas=self._eas(member),
            size=member.size,
            link_target=link_target,
            is_mount_point=mount_point,
            reparse=reparse,
            tar_name=member.name,
            offset=member.offset,
            data=self._data(member.size),
        )

    # -- metadata records (go-winio backuptar) ----------------------------------------------

    def _attributes(self, member: TarMember) -> int:
        text = member.pax.get(PAX_FILE_ATTRIBUTES)
        if text is None:
            return FILE_ATTRIBUTE_DIRECTORY if member.typeflag == TYPE_DIR else 0
        if not (text.isascii() and text.isdigit()) or int(text) > 0xFFFFFFFF:
            self._fail(member, f"malformed {PAX_FILE_ATTRIBUTES} {text!r}")
        return int(text)

    def _times(self, member: TarMember) -> FileTimes:
        mtime_ns = member.mtime_ns
        creation_ns = mtime_ns
        text = member.pax.get(PAX_CREATION_TIME)
        if text is not None and text != member.pax.get(PAX_MTIME):  # (a repeat: parsed already)
            try:
                creation_ns = parse_pax_time(text)
            except ValueError as exc:
                self._fail(member, f"{PAX_CREATION_TIME}: {exc}")
        # Converted in this order (the first out of range is the one reported); a missing
        # ctime/atime stands for mtime (MISSING_TIME_SOURCE); equal times converted once.
        creation = filetime_from_unix_ns(creation_ns)
        last_write = creation if mtime_ns == creation_ns else filetime_from_unix_ns(mtime_ns)
        ctime_ns, atime_ns = member.ctime_ns, member.atime_ns
        change = (
            last_write
            if ctime_ns is None or ctime_ns == mtime_ns
            else filetime_from_unix_ns(ctime_ns)
        )
        last_access = (
            last_write
            if atime_ns is None or atime_ns == mtime_ns
            else filetime_from_unix_ns(atime_ns)
        )
        return FileTimes(creation, last_write, change, last_access)

    def _security_descriptor(self, member: TarMember) -> bytes | None:
        raw = member.pax.get(PAX_RAW_SD)
        if raw is not None:
            sd = _checked_raw_sd(raw)
            if sd is None:
                self._fail(member, f"{PAX_RAW_SD} is not valid base64")
            return sd or None
        sddl = member.pax.get(PAX_SDDL_SD)
        if sddl:
            return _sddl_to_sd_cached(sddl)
        return None

    def _eas(self, member: TarMember) -> tuple[ExtendedAttribute, ...]:
        eas = []
        for key, value in member.pax.items():
            if not key.startswith(PAX_EA_PREFIX):
                continue
            ea_name = key[len(PAX_EA_PREFIX) :]
            check_ea_name(ea_name)
            data = _base64(value)
            if data is None:
                self._fail(member, f"{key} is not valid base64")
            if len(data) > 0xFFFF:
                self._fail(member, f"EA {ea_name!r} value of {len(data)} bytes exceeds 65535")
            eas.append(ExtendedAttribute(ea_name, data))
        check_unique_names(eas)
        return tuple(eas)


# Layers repeat a handful of security descriptors thousands of times: decode and check each
# distinct record once.  (Exceptions are not cached, so a bad record fails every time.)
@functools.lru_cache(maxsize=1024)
def _checked_raw_sd(text: str) -> bytes | None:
    sd = _base64(text)
    if sd:
        parse_security_descriptor(sd)
    return sd


@functools.lru_cache(maxsize=256)
def _sddl_to_sd_cached(text: str) -> bytes:
    return sddl_to_sd(text)


def _base64(text: str) -> bytes | None:
    """Go base64.StdEncoding.DecodeString: padded standard alphabet, CR and LF ignored."""
    try:
        return base64.b64decode(text.replace("\r", "").replace("\n", ""), validate=True)
    except (binascii.Error, ValueError):
        return None


def read_layer_tar(
    fileobj: BinaryIO, name: str | os.PathLike[str] | None = None
) -> Iterator[WinTarEntry]:
    """Shorthand for ``iter(WinTarReader(fileobj, name))``."""
    return iter(WinTarReader(fileobj, name))
