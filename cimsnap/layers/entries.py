"""What the CIM and the legacy layer writers share: tar entries in, dispatched by kind.

Both writers take a layer tar's entries one by one (:meth:`LayerEntryWriter.add_entry`),
report any failure as a :class:`LayerError` naming the tar, the entry's offset and its path, and
end with ``close()`` (the result) or ``abort()`` (nothing left); :func:`write_layer` feeds them a
whole tar.  Each writer decides what an entry kind means for its layout.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from cimsnap.errors import CimsnapError
from cimsnap.formats.wintar import EntryKind, WinTarEntry, WinTarReader
from cimsnap.layers.errors import LayerError
from cimsnap.layers.uvm import UvmResult


@dataclass
class ImportResult:
    """What an import made."""

    layer_dir: Path
    size: int  # total size of the layer's files (hcsshim's return value)
    entries: int = 0
    cim_path: Path | None = None
    uvm_build: int | None = None
    uvm: UvmResult | None = None
    merged_hives: list[str] = field(default_factory=list)


class LayerEntryWriter(ABC):
    """One layer written from tar entries; subclasses say what each kind of entry does."""

    source_name: str | None  # the tar's name, for errors
    entries: int

    def add_entry(self, entry: WinTarEntry) -> None:
        """Apply one tar entry (its data is read now)."""
        self.entries += 1
        try:
            self._dispatch(entry)
        except LayerError as err:
            if err.offset is None:  # say which entry of which tar
                err.path = Path(self.source_name) if self.source_name else err.path
                err.offset = entry.offset
                err.inner = err.inner or entry.stream_path
            raise
        except CimsnapError as err:
            raise LayerError(
                err.message, path=self.source_name, offset=entry.offset, inner=entry.stream_path
            ) from err

    def _dispatch(self, entry: WinTarEntry) -> None:
        kind = entry.kind
        if kind in (EntryKind.FILE, EntryKind.DIRECTORY, EntryKind.SYMLINK):
            self._add(entry)
        elif kind is EntryKind.STREAM:
            self._add_stream(entry)
        elif kind is EntryKind.HARDLINK:
            self._add_link(entry)
        elif kind is EntryKind.WHITEOUT:
            self._remove(entry.path)
        else:
            self._opaque(entry.path)

    @abstractmethod
    def _add(self, entry: WinTarEntry) -> None:
        """A file, directory or symlink."""

    @abstractmethod
    def _add_stream(self, entry: WinTarEntry) -> None:
        """An alternate data stream of the file added just before."""

    @abstractmethod
    def _add_link(self, entry: WinTarEntry) -> None:
        """A hard link."""

    @abstractmethod
    def _remove(self, path: str) -> None:
        """A whiteout: ``path`` (of this layer or a parent) is gone."""

    @abstractmethod
    def _opaque(self, directory: str) -> None:
        """An opaque-directory marker: the parents' entries below ``directory`` are hidden."""

    @abstractmethod
    def close(self) -> ImportResult:
        """Finish the layer."""

    @abstractmethod
    def abort(self) -> None:
        """Remove everything written so far."""


def write_layer(
    writer: LayerEntryWriter,
    stream: BinaryIO,
    *,
    name: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> ImportResult:
    """Feed the layer tar read from ``stream`` to ``writer`` and close it (abort on failure).

    ``progress`` is called with the number of tar bytes consumed after each entry.
    """
    try:
        reader = WinTarReader(stream, name=name)
        for entry in reader:
            writer.add_entry(entry)
            if progress is not None:
                progress(reader.position)
    except BaseException:
        writer.abort()
        raise
    return writer.close()
