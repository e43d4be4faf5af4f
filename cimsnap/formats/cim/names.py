"""Windows path handling inside CIM images: splitting, name rules, and upcase collation.

Paths are Windows paths (``\\`` separators, ``/`` accepted too, case-insensitive).  Names are
stored as UTF-16LE; link tables are sorted by name compared UTF-16 unit by unit after mapping each
unit through the image's upcase table (reference "Link table").  Limits: 255 units per component,
32767 per path (hcsshim ``format.go``: MaximumComponentNameLength, MaximumPathLength).
"""

from __future__ import annotations

import functools
import sys
from array import array
from collections.abc import Sequence

from cimsnap.errors import UsageError
from cimsnap.formats.cim.format import MAX_COMPONENT_UNITS, MAX_PATH_UNITS, UPCASE_TABLE_UNITS

SEPARATORS = ("\\", "/")
# Characters a component may not contain: path separators, the stream delimiter, NUL.
FORBIDDEN_NAME_CHARS = frozenset("\\/:\0")


def split_path(path: str) -> list[str]:
    """Components of an image path; ``""``, ``"\\"`` and ``"/"`` are the root (no components)."""
    return [part for part in path.replace("/", "\\").split("\\") if part]


def split_stream(path: str) -> tuple[str, str | None]:
    """``"dir\\file:name"`` or ``"dir\\file:name:$DATA"`` -> (``"dir\\file"``, ``"name"``)."""
    parts = split_path(path)
    if not parts or ":" not in parts[-1]:
        return path, None
    base, _, stream = parts[-1].partition(":")
    if stream.upper().endswith(":$DATA"):
        stream = stream[: -len(":$DATA")]
    parts[-1] = base
    return "\\" + "\\".join(parts), stream or None


def join_path(parent: str, name: str) -> str:
    return parent.rstrip("\\") + "\\" + name if parent not in ("", "\\") else "\\" + name


def utf16_units(name: str) -> int:
    if name.isascii():
        return len(name)
    return len(name.encode("utf-16-le", "surrogatepass")) // 2


def encode_name(name: str) -> bytes:
    """UTF-16LE bytes of a name; lone surrogates (undecodable host bytes) pass through."""
    return name.encode("utf-16-le", "surrogatepass")


def decode_name(raw: bytes) -> str:
    return raw.decode("utf-16-le", "surrogatepass")


def check_name(name: str, *, what: str = "name") -> None:
    """Raise UsageError unless ``name`` is a valid CIM path component (or stream name)."""
    if name in ("", ".", ".."):
        raise UsageError(f"invalid {what} {name!r}")
    bad = FORBIDDEN_NAME_CHARS.intersection(name)
    if bad:
        raise UsageError(f"invalid {what} {name!r}: contains {''.join(sorted(bad))!r}")
    if utf16_units(name) > MAX_COMPONENT_UNITS:
        raise UsageError(f"{what} {name[:40]!r}... is longer than {MAX_COMPONENT_UNITS} units")


def check_path(path: str, *, leaf_only: bool = False) -> list[str]:
    """Components of a path to be written, each checked (only the last with ``leaf_only``,
    for callers that resolve the others against existing names); the path length limit applies
    too."""
    parts = split_path(path)
    for part in parts[-1:] if leaf_only else parts:
        check_name(part)
    # Each code point is at most two units: measure only paths that might be too long.
    if 2 * len(path) > MAX_PATH_UNITS and sum(utf16_units(p) + 1 for p in parts) > MAX_PATH_UNITS:
        raise UsageError(f"path is longer than {MAX_PATH_UNITS} UTF-16 units")
    return parts


def split_leaf(path: str) -> tuple[str, str]:
    """(parent path as given, last component) of a path to be written, checked as
    ``check_path(path, leaf_only=True)`` checks it; ``("", "")`` for the root.

    The fast path of :meth:`CimWriter.add <.writer.CimWriter.add>`: it splits once and measures
    only what could break a limit; resolve the parent with :func:`split_path`."""
    if "/" in path:
        path = path.replace("/", "\\")
    parent, _, name = path.rpartition("\\")
    if not name:  # the root, or a trailing separator: the general rule
        parts = check_path(path, leaf_only=True)
        return ("\\".join(parts[:-1]), parts[-1]) if parts else ("", "")
    # Each code point is at most two units: only long names and paths need measuring.
    if name in (".", "..") or ":" in name or "\0" in name or 2 * len(name) > MAX_COMPONENT_UNITS:
        check_name(name)
    if 2 * len(path) > MAX_PATH_UNITS:
        check_path(path, leaf_only=True)
    return parent, name


class Collation:
    """Case-insensitive ordering of names through an upcase table (65536 UTF-16 units)."""

    def __init__(self, table: Sequence[int]) -> None:
        if len(table) != UPCASE_TABLE_UNITS:
            raise ValueError(f"upcase table has {len(table)} entries, not {UPCASE_TABLE_UNITS}")
        self.table = array("H", table)
        self._map = {unit: up for unit, up in enumerate(self.table) if up != unit}
        # Most names are ASCII; when the table maps ASCII like str.upper(), use that (in C).
        self._ascii_is_upper = all(self.table[c] == ord(chr(c).upper()) for c in range(128))

    @classmethod
    def from_bytes(cls, raw: bytes) -> Collation:
        """The collation of an on-disk table (cached: images share a handful of tables)."""
        return _collation_from_bytes(raw)

    @classmethod
    def _from_bytes(cls, raw: bytes) -> Collation:
        table = array("H")
        table.frombytes(raw)
        if sys.byteorder == "big":
            table.byteswap()  # the on-disk table is little-endian
        return cls(table)

    def to_bytes(self) -> bytes:
        out = array("H", self.table)
        if sys.byteorder == "big":
            out.byteswap()
        return out.tobytes()

    def key(self, name: str) -> bytes:
        """Sort key: the upcased UTF-16 units, big-endian so bytes compare like units."""
        if name.isascii():
            if self._ascii_is_upper:
                return name.upper().encode("utf-16-be")
            units = name
        elif max(name) <= "\uffff":
            units = name  # every code point is already one UTF-16 unit (lone surrogates too)
        else:
            units = "".join(chr(u) for u in _units(name))
        return units.translate(self._map).encode("utf-16-be", "surrogatepass")

    def equal(self, a: str, b: str) -> bool:
        return self.key(a) == self.key(b)


def _units(name: str) -> list[int]:
    raw = encode_name(name)
    return [int.from_bytes(raw[i : i + 2], "little") for i in range(0, len(raw), 2)]


@functools.lru_cache(maxsize=8)
def _collation_from_bytes(raw: bytes) -> Collation:
    return Collation._from_bytes(raw)
