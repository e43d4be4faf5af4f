"""What a Windows layer tar holds, as Python values: entry kinds, metadata, entries."""

from __future__ import annotations

import enum
import io
from dataclasses import dataclass, field
from typing import Protocol

from cimsnap.formats.wintar.ea import ExtendedAttribute, encode_ea_buffer
from cimsnap.formats.wintar.times import FileTimes


class EntryKind(enum.StrEnum):
    FILE = "file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"  # a symlink or a mount point (see WinTarEntry.is_mount_point)
    HARDLINK = "hardlink"
    STREAM = "stream"  # an alternate data stream of the entry just before it
    WHITEOUT = "whiteout"  # path is the file or directory removed from the parent layers
    OPAQUE_WHITEOUT = "opaque_whiteout"  # path is a directory whose parent content is hidden


@dataclass(frozen=True)
class WinMetadata:
    """The Win32 metadata a layer tar keeps for a file, directory or symlink."""

    attributes: int
    times: FileTimes
    security_descriptor: bytes | None = None
    eas: tuple[ExtendedAttribute, ...] = ()


class DataSource(Protocol):
    """Where an entry's data comes from: the tar reader, positioned on that entry."""

    generation: int  # changes when the reader moves to another entry

    def read_data(self, size: int = -1) -> bytes: ...

    def readinto_data(self, buffer: memoryview | bytearray) -> int: ...


class EntryData(io.RawIOBase):
    """The data of one entry: a readable stream valid until the reader moves on."""

    def __init__(self, source: DataSource | None, size: int) -> None:
        # (io.RawIOBase.__init__ does nothing; skipping it saves time per entry.)
        self._source = source
        self._generation = source.generation if source is not None else 0
        self.size = size

    def readable(self) -> bool:
        return True

    def _check(self) -> DataSource | None:
        source = self._source
        if source is not None and source.generation != self._generation:
            raise ValueError("entry data is no longer readable: the reader moved to a later entry")
        return source

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (the rest when negative or None); b"" at the end."""
        source = self._check()
        if source is None:
            return b""
        return source.read_data(-1 if size is None else size)

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        source = self._check()
        if source is None:
            return 0
        return source.readinto_data(buffer)


def _no_data() -> EntryData:
    return EntryData(None, 0)


@dataclass
class WinTarEntry:
    """One entry of a Windows layer tar, as the layer importer needs it.

    ``path`` is relative to the layer root with backslashes (``Files\\Windows\\win.ini``); for a
    stream it is the owning file's path and ``stream_name`` the stream (``Zone.Identifier``).
    Times are FILETIME integers.  ``data`` yields ``size`` bytes for files and streams.
    """

    kind: EntryKind
    path: str
    attributes: int = 0
    times: FileTimes = field(default_factory=lambda: FileTimes.all_at(0))
    security_descriptor: bytes | None = None
    eas: tuple[ExtendedAttribute, ...] = ()
    size: int = 0
    link_target: str | None = None
    is_mount_point: bool = False
    reparse: bytes | None = None
    stream_name: str | None = None
    tar_name: str = field(default="", compare=False)
    offset: int = field(default=0, compare=False)
    data: io.RawIOBase = field(default_factory=_no_data, repr=False, compare=False)

    @property
    def metadata(self) -> WinMetadata:
        return WinMetadata(self.attributes, self.times, self.security_descriptor, self.eas)

    @property
    def ea_buffer(self) -> bytes:
        """The EAs as one FILE_FULL_EA_INFORMATION chain (b"" when there are none)."""
        return encode_ea_buffer(self.eas)

    @property
    def stream_path(self) -> str:
        """``<path>:<stream>`` for a stream entry, else the path."""
        return f"{self.path}:{self.stream_name}" if self.stream_name else self.path
