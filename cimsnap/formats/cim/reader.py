"""Read CimFS images (format versions 1, 2 and 3), including forks that refer to parent regions.

Implements the reading side of ``../shared/reference/cimfs-format.md``: the ``.cim`` header and
its parents' region sets ("Files of one image", "FilesystemHeader"), region files, the filesystem
object, file tables, link tables (case-insensitive binary-sorted directories, alternate streams),
security descriptors, EAs, reparse buffers, data / sparse / PE-image streams, and usage as
hcsshim's ``GetCimUsage`` computes it.

Every offset, length and count read from disk is checked against the file it points into before
anything is allocated, so a malformed image yields a :class:`CimFormatError` naming the file and
offset, never a hang or a giant allocation.
"""

from __future__ import annotations

import io
import itertools
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar, overload

from cimsnap.errors import NotFoundError, UsageError
from cimsnap.formats.cim.errors import CimFormatError
from cimsnap.formats.cim.format import (
    COUNTED_LENGTH,
    FILE_ATTRIBUTE_DIRECTORY,
    FILE_ENTRY_V1,
    FILE_ID,
    FILE_TABLE_DIRECTORY_ENTRY,
    FILES_PER_TABLE,
    FILESYSTEM_OBJECT,
    LINK_TABLE_HEADER,
    MAX_REGIONS,
    PE_IMAGE,
    PE_IMAGE_MAPPING,
    STREAM,
    UPCASE_TABLE_BYTES,
    FileEntry,
    FilesystemHeader,
    PeImage,
    RegionHeader,
    RegionSet,
    Stream,
    StreamType,
    format_region_offset,
    split_region_offset,
    unpack_link_table,
)
from cimsnap.formats.cim.metadata import ExtendedAttribute, decode_eas
from cimsnap.formats.cim.names import (
    FORBIDDEN_NAME_CHARS,
    Collation,
    decode_name,
    join_path,
    split_path,
    split_stream,
)

# Largest .cim file: the fixed header plus 65535 parent region sets.
MAX_IMAGE_FILE_BYTES = FilesystemHeader.SIZE + 0xFFFF * RegionSet.STRUCT.size
# Largest link table the reader will load (a directory of millions of entries); a bigger length
# field is treated as corruption rather than allocated.
MAX_LINK_TABLE_BYTES = 256 << 20
_STREAM_TYPES = frozenset(int(t) for t in StreamType)
DIRECTORY_CACHE_SIZE = 4096
ENTRY_CACHE_SIZE = 1 << 16

K = TypeVar("K")
V = TypeVar("V")


class _LRU(Generic[K, V]):
    """A small bounded cache (the FUSE server and walks revisit directories and SDs)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self.data.get(key)
        if value is not None:
            self.data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> V:
        self.data[key] = value
        if len(self.data) > self.limit:
            self.data.popitem(last=False)
        return value


@dataclass(frozen=True)
class StreamInfo:
    """An alternate data stream of a file."""

    name: str
    size: int
    sparse: bool


@dataclass(frozen=True)
class CimStat:
    """What ``stat`` reports for a file or directory of an image."""

    file_id: int
    attributes: int  # Windows FILE_ATTRIBUTE_* (derived: DIRECTORY, REPARSE_POINT)
    size: int
    creation_time: int  # FILETIMEs
    last_write_time: int
    change_time: int
    last_access_time: int
    security_descriptor: bytes | None
    extended_attributes: bytes  # raw FILE_FULL_EA_INFORMATION chain, b"" when none
    reparse_buffer: bytes | None
    reparse_tag: int
    streams: tuple[StreamInfo, ...]
    stream_type: int  # StreamType of the default stream
    sparse: bool  # the default stream is sparse (reads as zeros, no data stored)

    @property
    def is_dir(self) -> bool:
        return bool(self.attributes & FILE_ATTRIBUTE_DIRECTORY)

    @property
    def eas(self) -> list[ExtendedAttribute]:
        return decode_eas(self.extended_attributes) if self.extended_attributes else []


class CimDirEntry(NamedTuple):
    """One name in a directory (``path`` is the full image path, or just the name when the
    directory was given by FileID)."""

    name: str
    path: str
    file_id: int
    is_dir: bool


@dataclass(frozen=True)
class CimUsage:
    """Disk usage of an image's own files; ``total`` is what Windows' GetCimUsage returns."""

    image_file_bytes: int  # the .cim file
    region_bytes: int
    objectid_bytes: int
    allocated_bytes: int  # blocks really used by region + objectid files (sparse-aware)
    region_files: tuple[str, ...]
    objectid_files: tuple[str, ...]

    @property
    def total(self) -> int:
        return self.region_bytes + self.objectid_bytes


@dataclass
class _Region:
    path: Path
    fd: int
    size: int
    region_type: int


@dataclass(frozen=True)
class _Directory:
    names: tuple[str, ...]
    file_ids: tuple[int, ...]
    index: dict[bytes, int]  # upcase key -> position


def find_image_file(directory: Path, name: str) -> Path | None:
    """``directory/name``, matching the name case-insensitively as Windows would."""
    exact = directory / name
    if exact.exists():
        return exact
    wanted = name.casefold()
    try:
        for candidate in os.listdir(directory):
            if candidate.casefold() == wanted:
                return directory / candidate
    except OSError:
        return None
    return None


def read_image_header(path: str | os.PathLike[str]) -> FilesystemHeader:
    """The ``.cim`` header alone (own and parent region sets), without opening any region."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_IMAGE_FILE_BYTES + 1)
    except FileNotFoundError:
        raise NotFoundError("no such image", path=path) from None
    try:
        return FilesystemHeader.unpack(data)
    except CimFormatError as err:
        err.path = path
        raise


class CimFile(io.RawIOBase):
    """A read-only, seekable view of one stream of a file in an image."""

    def __init__(self, image: CimImage, name: str, stream: Stream) -> None:
        super().__init__()
        self._image = image
        self.name = name
        self._stream = stream
        self._pos = 0

    @property
    def size(self) -> int:
        return self._stream.length

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise UsageError("negative seek position", inner=self.name)
        self._pos = base + offset
        return self._pos

    def pread(self, length: int, offset: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` (fewer at the end of the stream)."""
        return self._image._read_stream(self._stream, offset, length, self.name)

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (all the rest when negative) from the current position."""
        if size is None or size < 0:
            return self.readall()
        data = self.pread(size, self._pos)
        self._pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.pread(len(view), self._pos)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def readall(self) -> bytes:
        data = self.pread(max(self.size - self._pos, 0), self._pos)
        self._pos += len(data)
        return data


class _OpenMethod:
    """``CimImage.open(path)`` opens an image; ``image.open(path)`` opens a file inside it."""

    @overload
    def __get__(
        self, obj: None, objtype: type[CimImage]
    ) -> Callable[[str | os.PathLike[str]], CimImage]: ...

    @overload
    def __get__(
        self, obj: CimImage, objtype: type[CimImage] | None = None
    ) -> Callable[..., CimFile]: ...

    def __get__(self, obj: CimImage | None, objtype: type[CimImage] | None = None) -> Any:
        if obj is None:
            assert objtype is not None
            return objtype.open_image
        return obj.open_file


class CimImage:
    """An open CimFS image.  Use ``CimImage.open(path)`` (or as a context manager).

    Paths are Windows paths inside the image (``\\`` or ``/``, case-insensitive through the
    image's own upcase table); ``"file:stream"`` names an alternate stream where streams apply.
    """

    open = _OpenMethod()

    def __init__(
        self,
        path: Path,
        header: FilesystemHeader,
        regions: list[_Region],
        own_region_start: int,
    ) -> None:
        self.path = path
        self.header = header
        self._regions = regions
        self._own_region_start = own_region_start
        self._entry_cache: dict[int, FileEntry] = {}  # cleared when it reaches the limit
        self._dir_cache: _LRU[int, _Directory] = _LRU(DIRECTORY_CACHE_SIZE)
        self._blob_cache: _LRU[int, bytes] = _LRU(4096)
        self._table_cache: dict[int, bytes] = {}
        self._pe_cache: _LRU[int, PeImage] = _LRU(1024)
        fs = FILESYSTEM_OBJECT.unpack(
            self._pread(header.filesystem_offset, 0, FILESYSTEM_OBJECT.size, "filesystem object")
        )
        upcase_offset, ftd_offset, ftd_length, root_id = fs
        self.collation = Collation.from_bytes(
            self._pread(upcase_offset, 0, UPCASE_TABLE_BYTES, "upcase table")
        )
        ftd_raw = self._pread(
            ftd_offset, 0, ftd_length * FILE_TABLE_DIRECTORY_ENTRY.size, "file table directory"
        )
        self._tables: list[tuple[int, int, int]] = []  # (offset, count, entry size)
        for i in range(ftd_length):
            table_offset, count, entry_size, _ = FILE_TABLE_DIRECTORY_ENTRY.unpack_from(
                ftd_raw, i * FILE_TABLE_DIRECTORY_ENTRY.size
            )
            if count > FILES_PER_TABLE:
                raise CimFormatError(
                    f"file table {i} claims {count} files (at most 1024)", path=path
                )
            if count and entry_size < FILE_ENTRY_V1.size:
                raise CimFormatError(
                    f"file table {i} entry size {entry_size} is too small", path=path
                )
            self._tables.append((table_offset, count, entry_size))
        # The highest FileID with a slot (tables other than the last are normally full; a
        # shorter one just leaves FileIDs without slots).
        last = self._tables[-1][1] if self._tables else 0
        self.file_count = FILES_PER_TABLE * (len(self._tables) - 1) + last if self._tables else 0
        self.root_id = root_id
        if not self._entry(root_id).is_directory:
            raise CimFormatError(f"root FileID {root_id} is not a directory", path=path)

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    def open_image(cls, path: str | os.PathLike[str]) -> CimImage:
        """Open ``path`` (a ``.cim`` file) with its own and its parents' region files."""
        path = Path(path)
        header = read_image_header(path)
        sets = [*header.parents, header.regions]
        total = sum(rs.count for rs in sets)
        if total == 0 or total > MAX_REGIONS:
            raise CimFormatError(f"image refers to {total} regions (1..65536)", path=path)
        regions: list[_Region] = []
        try:
            for n, region_set in enumerate(sets):
                which = "its own" if n == len(sets) - 1 else f"parent {n}"
                for i in range(region_set.count):
                    regions.append(_open_region(path, region_set, i, which))
        except BaseException:
            for region in regions:
                os.close(region.fd)
            raise
        try:
            return cls(path, header, regions, total - header.regions.count)
        except BaseException:
            for region in regions:
                os.close(region.fd)
            raise

    def close(self) -> None:
        for region in self._regions:
            if region.fd >= 0:
                os.close(region.fd)
                region.fd = -1

    def __enter__(self) -> CimImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- facts about the image --------------------------------------------------------------

    @property
    def version(self) -> tuple[int, int]:
        return self.header.common.major, self.header.common.minor

    @property
    def region_set(self) -> RegionSet:
        return self.header.regions

    @property
    def parent_region_sets(self) -> tuple[RegionSet, ...]:
        return self.header.parents

    @property
    def region_count(self) -> int:
        return len(self._regions)

    def region_type(self, index: int) -> int:
        return self._regions[index].region_type

    def region_path(self, index: int) -> Path:
        return self._regions[index].path

    def usage(self) -> CimUsage:
        """Bytes of the image's own region and object-ID files (GetCimUsage) and details."""
        directory = self.path.parent
        own = self.header.regions
        regions = [self._regions[self._own_region_start + i].path for i in range(own.count)]
        objectids = [
            p for i in range(own.count) if (p := find_image_file(directory, own.objectid_name(i)))
        ]
        region_stats = [os.stat(p) for p in regions]
        objectid_stats = [os.stat(p) for p in objectids]
        return CimUsage(
            image_file_bytes=os.stat(self.path).st_size,
            region_bytes=sum(s.st_size for s in region_stats),
            objectid_bytes=sum(s.st_size for s in objectid_stats),
            allocated_bytes=sum(s.st_blocks * 512 for s in region_stats + objectid_stats),
            region_files=tuple(p.name for p in regions),
            objectid_files=tuple(p.name for p in objectids),
        )

    # --- paths ------------------------------------------------------------------------------

    def lookup(self, path: str) -> int:
        """FileID of ``path``; NotFoundError when absent."""
        file_id = self.root_id
        walked = ""
        for part in split_path(path):
            if not self._entry(file_id).is_directory:
                raise NotFoundError("not a directory", path=self.path, inner=walked)
            directory = self._directory(file_id, walked or "\\")
            position = directory.index.get(self.collation.key(part))
            if position is None:
                raise NotFoundError(
                    "no such file or directory", path=self.path, inner=join_path(walked, part)
                )
            file_id = directory.file_ids[position]
            walked = join_path(walked, directory.names[position])
        return file_id

    def file_ids(self) -> Iterator[int]:
        """Every FileID that has a slot in the file tables (reachable or not)."""
        for index, (_, count, _) in enumerate(self._tables):
            yield from range(index * FILES_PER_TABLE + 1, index * FILES_PER_TABLE + count + 1)

    def exists(self, path: str) -> bool:
        try:
            self.lookup(path)
        except NotFoundError:
            return False
        return True

    def entry(self, path_or_id: str | int) -> FileEntry:
        """The raw file table entry of a path or FileID."""
        file_id = path_or_id if isinstance(path_or_id, int) else self.lookup(path_or_id)
        return self._entry(file_id)

    def is_dir(self, path_or_id: str | int) -> bool:
        return self.entry(path_or_id).is_directory

    def scandir(self, path: str | int = "\\") -> list[CimDirEntry]:
        """Entries of a directory in the image's (upcase) order."""
        if isinstance(path, int):
            file_id, shown = path, f"FileID {path}"
        else:
            file_id, shown = self.lookup(path), path
        if not self._entry(file_id).is_directory:
            raise UsageError("not a directory", path=self.path, inner=shown)
        directory = self._directory(file_id, shown)
        return [
            CimDirEntry(
                name,
                join_path(path, name) if isinstance(path, str) else name,  # relative for IDs
                child,
                self._entry(child).is_directory,
            )
            for name, child in zip(directory.names, directory.file_ids, strict=True)
        ]

    def listdir(self, path: str = "\\") -> list[str]:
        file_id = self.lookup(path)
        if not self._entry(file_id).is_directory:
            raise UsageError("not a directory", path=self.path, inner=path)
        return list(self._directory(file_id, path).names)

    def walk(self, top: str = "\\") -> Iterator[tuple[str, list[CimDirEntry], list[CimDirEntry]]]:
        """Like ``os.walk`` (top-down): (directory path, subdirectories, other entries).

        A directory reached twice (a cycle, or a directory hard link, which CimFS does not
        allow) raises CimFormatError instead of looping.
        """
        top_id = self.lookup(top)
        if not self._entry(top_id).is_directory:
            raise UsageError("not a directory", path=self.path, inner=top)
        seen = {top_id}
        stack = [(top if top not in ("", "/") else "\\", top_id)]
        while stack:
            dir_path, dir_id = stack.pop()
            entries = [
                CimDirEntry(name, join_path(dir_path, name), child, self._entry(child).is_directory)
                for name, child in zip(*self._directory_fields(dir_id, dir_path), strict=True)
            ]
            dirs = [e for e in entries if e.is_dir]
            files = [e for e in entries if not e.is_dir]
            yield dir_path, dirs, files
            for sub in reversed(dirs):
                if sub.file_id in seen:
                    raise CimFormatError(
                        f"directory FileID {sub.file_id} is reachable twice (directory cycle)",
                        path=self.path,
                        inner=sub.path,
                    )
                seen.add(sub.file_id)
                stack.append((sub.path, sub.file_id))

    def _directory_fields(self, dir_id: int, shown: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
        directory = self._directory(dir_id, shown)
        return directory.names, directory.file_ids

    # --- metadata ---------------------------------------------------------------------------

    def stat(self, path_or_id: str | int) -> CimStat:
        """Attributes, times, size, SD, EAs, reparse buffer and alternate streams."""
        if isinstance(path_or_id, int):
            file_id, shown = path_or_id, f"FileID {path_or_id}"
        else:
            file_id, shown = self.lookup(path_or_id), path_or_id
        entry = self._entry(file_id)
        sd = (
            self._counted(entry.sd_offset, "security descriptor", shown)
            if entry.sd_offset
            else None
        )
        eas = b""
        if entry.ea_offset and entry.ea_length:
            eas = self._pread(entry.ea_offset, 0, entry.ea_length, f"EAs of {shown}")
            try:
                decode_eas(eas)
            except ValueError as err:
                raise CimFormatError(f"EAs of {shown}: {err}", path=self.path) from None
        reparse = (
            self._counted(entry.reparse_offset, "reparse buffer", shown)
            if entry.reparse_offset
            else None
        )
        streams = tuple(
            StreamInfo(name, stream.length, stream.sparse)
            for name, stream in self._stream_table(entry, shown)
        )
        return CimStat(
            file_id=file_id,
            attributes=entry.attributes,
            size=0 if entry.is_directory else entry.default_stream.length,
            creation_time=entry.creation_time,
            last_write_time=entry.last_write_time,
            change_time=entry.change_time,
            last_access_time=entry.last_access_time,
            security_descriptor=sd,
            extended_attributes=eas,
            reparse_buffer=reparse,
            reparse_tag=entry.reparse_tag,
            streams=streams,
            stream_type=entry.default_stream.stream_type,
            sparse=entry.default_stream.sparse,
        )

    def streams(self, path_or_id: str | int) -> list[StreamInfo]:
        return list(self.stat(path_or_id).streams)

    # --- data -------------------------------------------------------------------------------

    def open_file(self, path: str | int, stream: str | None = None) -> CimFile:
        """A seekable reader of a file's data (or of its alternate stream ``stream``)."""
        if isinstance(path, str) and stream is None:
            path, stream = split_stream(path)
        file_id = path if isinstance(path, int) else self.lookup(path)
        shown = path if isinstance(path, str) else f"FileID {path}"
        entry = self._entry(file_id)
        if stream is not None:
            wanted = self.collation.key(stream)
            for name, desc in self._stream_table(entry, shown):
                if self.collation.key(name) == wanted:
                    return CimFile(self, f"{shown}:{name}", desc)
            raise NotFoundError(
                "no such alternate stream", path=self.path, inner=f"{shown}:{stream}"
            )
        if entry.is_directory:
            raise UsageError("is a directory", path=self.path, inner=shown)
        return CimFile(self, shown, entry.default_stream)

    def read(self, path: str | int, stream: str | None = None) -> bytes:
        with self.open_file(path, stream) as handle:
            return handle.readall()

    # --- internals --------------------------------------------------------------------------

    def _pread(self, offset_value: int, skip: int, length: int, what: str) -> bytes:
        """``length`` bytes at RegionOffset ``offset_value`` + ``skip``, bounds-checked."""
        index, base = split_region_offset(offset_value)
        if index >= len(self._regions):
            raise CimFormatError(
                f"{what}: region index {index} is beyond the image's {len(self._regions)} regions",
                path=self.path,
            )
        region = self._regions[index]
        if base < RegionHeader.SIZE:
            raise CimFormatError(
                f"{what}: offset {base:#x} points into the region header (or is null)",
                path=region.path,
                offset=base,
            )
        start = base + skip
        if length < 0 or start + length > region.size:
            raise CimFormatError(
                f"{what}: {length} bytes at {start:#x} run past the end of the file "
                f"({region.size} bytes)",
                path=region.path,
                offset=start,
            )
        data = os.pread(region.fd, length, start)
        if len(data) != length:
            raise CimFormatError(f"{what}: file is truncated", path=region.path, offset=start)
        return data

    def _counted(self, offset_value: int, what: str, shown: str) -> bytes:
        """A u16-length-prefixed object (security descriptor, reparse buffer)."""
        cached = self._blob_cache.get(offset_value)
        if cached is not None:
            return cached
        label = f"{what} of {shown} at {format_region_offset(offset_value)}"
        (length,) = COUNTED_LENGTH.unpack(self._pread(offset_value, 0, COUNTED_LENGTH.size, label))
        return self._blob_cache.put(
            offset_value, self._pread(offset_value, COUNTED_LENGTH.size, length, label)
        )

    def _entry(self, file_id: int) -> FileEntry:
        cached = self._entry_cache.get(file_id)
        if cached is not None:
            return cached
        if len(self._entry_cache) >= ENTRY_CACHE_SIZE:
            self._entry_cache.clear()
        if not 1 <= file_id <= self.file_count:
            raise CimFormatError(
                f"FileID {file_id} is out of range (image has {self.file_count})", path=self.path
            )
        table_index, slot = divmod(file_id - 1, FILES_PER_TABLE)
        table_offset, count, entry_size = self._tables[table_index]
        if slot >= count:
            raise CimFormatError(
                f"FileID {file_id} has no slot (file table {table_index} holds {count})",
                path=self.path,
            )
        table = self._table_cache.get(table_index)
        if table is None:
            table = self._pread(table_offset, 0, count * entry_size, f"file table {table_index}")
            self._table_cache[table_index] = table
        entry = FileEntry.unpack(memoryview(table)[slot * entry_size : (slot + 1) * entry_size])
        if entry.default_stream.stream_type not in _STREAM_TYPES:
            raise CimFormatError(
                f"FileID {file_id} has unknown stream type {entry.default_stream.stream_type}",
                path=self.path,
            )
        self._entry_cache[file_id] = entry
        return entry

    def _directory(self, file_id: int, shown: str) -> _Directory:
        cached = self._dir_cache.get(file_id)
        if cached is not None:
            return cached
        entry = self._entry(file_id)
        stream = entry.default_stream
        if not entry.is_directory:
            raise UsageError("not a directory", path=self.path, inner=shown)
        if stream.length == 0:
            return self._dir_cache.put(file_id, _Directory((), (), {}))
        if stream.length > MAX_LINK_TABLE_BYTES:
            raise CimFormatError(
                f"directory {shown}: link table length {stream.length} is implausible",
                path=self.path,
            )
        raw = self._pread(stream.data_offset, 0, stream.length, f"directory {shown}")
        try:
            pairs = unpack_link_table(raw, FILE_ID.size)
        except CimFormatError as err:
            raise CimFormatError(f"directory {shown}: {err.message}", path=self.path) from None
        names: list[str] = []
        ids: list[int] = []
        index: dict[bytes, int] = {}
        previous = b""
        for position, (raw_name, raw_id) in enumerate(pairs):
            name = _checked_name(raw_name, self.path, shown)
            key = self.collation.key(name)
            if position and key <= previous:
                raise CimFormatError(
                    f"directory {shown}: link table is not sorted at {name!r}", path=self.path
                )
            previous = key
            (child,) = FILE_ID.unpack(raw_id)
            if not 1 <= child <= self.file_count:
                raise CimFormatError(
                    f"directory {shown}: entry {name!r} has FileID {child} out of range",
                    path=self.path,
                )
            names.append(name)
            ids.append(child)
            index[key] = position
        return self._dir_cache.put(file_id, _Directory(tuple(names), tuple(ids), index))

    def _stream_table(self, entry: FileEntry, shown: str) -> list[tuple[str, Stream]]:
        """Alternate streams: a link table of Stream values at ``stream_table_offset``.

        Framing (not settled by public sources): the table is stored exactly like a directory's
        link table, its first u32 being the length of the whole table.
        """
        if not entry.stream_table_offset:
            return []
        label = f"alternate stream table of {shown}"
        length, _ = LINK_TABLE_HEADER.unpack(
            self._pread(entry.stream_table_offset, 0, LINK_TABLE_HEADER.size, label)
        )
        if length > MAX_LINK_TABLE_BYTES:
            raise CimFormatError(f"{label}: length {length} is implausible", path=self.path)
        raw = self._pread(entry.stream_table_offset, 0, length, label)
        try:
            pairs = unpack_link_table(raw, STREAM.size)
        except CimFormatError as err:
            raise CimFormatError(f"{label}: {err.message}", path=self.path) from None
        out = []
        previous = b""
        for position, (raw_name, raw_stream) in enumerate(pairs):
            name = _checked_name(raw_name, self.path, shown)
            key = self.collation.key(name)
            if position and key <= previous:
                raise CimFormatError(f"{label}: not sorted at {name!r}", path=self.path)
            previous = key
            stream = Stream.unpack_from(raw_stream)
            if stream.stream_type != StreamType.DATA:
                raise CimFormatError(
                    f"{label}: stream {name!r} has type {stream.stream_type}", path=self.path
                )
            out.append((name, stream))
        return out

    def _pe_image(self, offset_value: int) -> PeImage:
        cached = self._pe_cache.get(offset_value)
        if cached is not None:
            return cached
        label = f"PE image descriptor at {format_region_offset(offset_value)}"
        data_offset, data_length, image_length, count, flags = PE_IMAGE.unpack(
            self._pread(offset_value, 0, PE_IMAGE.size, label)
        )
        raw = self._pread(offset_value, PE_IMAGE.size, count * PE_IMAGE_MAPPING.size, label)
        mappings = tuple(
            PE_IMAGE_MAPPING.unpack_from(raw, i * PE_IMAGE_MAPPING.size) for i in range(count)
        )
        if any(a[0] >= b[0] for a, b in itertools.pairwise(mappings)):
            raise CimFormatError(f"{label}: mappings are not in ascending order", path=self.path)
        # data_length is a u64 on disk; the public reader masks off the top bit likewise.
        pe = PeImage(data_offset, data_length & ((1 << 63) - 1), image_length, flags, mappings)
        return self._pe_cache.put(offset_value, pe)

    def _read_stream(self, stream: Stream, offset: int, length: int, shown: str) -> bytes:
        if stream.stream_type == StreamType.LINK_TABLE:
            raise UsageError("is a directory", path=self.path, inner=shown)
        length = max(min(length, stream.length - offset), 0)
        if length == 0:
            return b""
        if stream.sparse:
            return bytes(length)
        if stream.stream_type == StreamType.DATA:
            return self._pread(stream.data_offset, offset, length, f"data of {shown}")
        if stream.stream_type != StreamType.PE_IMAGE:
            raise CimFormatError(
                f"{shown}: unknown stream type {stream.stream_type}", path=self.path
            )
        pe = self._pe_image(stream.data_offset)
        out = bytearray()
        while length:
            delta, segment_end = pe.delta_for(offset)
            chunk = min(length, segment_end - offset)
            if offset + delta + chunk > pe.data_length:
                raise CimFormatError(
                    f"PE image data of {shown}: read at {offset:#x} maps beyond the image data "
                    f"({pe.data_length} bytes)",
                    path=self.path,
                )
            out += self._pread(pe.data_offset, offset + delta, chunk, f"PE image data of {shown}")
            offset += chunk
            length -= chunk
        return bytes(out)


def _checked_name(raw: bytes, image: Path, shown: str) -> str:
    name = decode_name(raw)
    if name in (".", "..") or FORBIDDEN_NAME_CHARS.intersection(name):
        raise CimFormatError(f"directory {shown}: invalid name {name!r}", path=image)
    return name


def _open_region(image: Path, region_set: RegionSet, index: int, which: str) -> _Region:
    name = region_set.region_name(index)
    path = find_image_file(image.parent, name)
    if path is None:
        raise CimFormatError(
            f"region file {name} ({which} region set) is missing", path=image.parent / name
        )
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        size = os.fstat(fd).st_size
        header = RegionHeader.unpack(os.pread(fd, RegionHeader.SIZE, 0))
    except CimFormatError as err:
        os.close(fd)
        err.path = path
        raise
    except BaseException:
        os.close(fd)
        raise
    return _Region(path, fd, size, header.region_type)
