"""Export keys as the ``.reg`` text format ("Windows Registry Editor Version 5.00").

The layout follows what regedit writes and imports: a ``[path]`` line per key, then one line
per value: ``@`` for the default value, ``"name"="text"`` for REG_SZ, ``dword:xxxxxxxx`` for
REG_DWORD, ``hex:`` for REG_BINARY and ``hex(N):`` for every other type, hex lines wrapped with
a trailing backslash before 80 columns, a blank line between keys.  Strings are written quoted
only when importing them back gives the same bytes (one terminating NUL, no line breaks);
otherwise as ``hex(1):``.  Tombstones of differencing hives come out as deletions (``[-path]``
and ``"name"=-``), which is what they mean.
"""

from __future__ import annotations

from collections.abc import Iterator

from .hive import Hive
from .records import Key, Value
from .structures import RegType
from .values import decode_string, encode_string

HEADER = "Windows Registry Editor Version 5.00"
LINE_LIMIT = 80


def export_lines(hive: Hive, top: Key | None = None, *, prefix: str | None = None) -> Iterator[str]:
    """The lines of a .reg export of ``top`` (default the root) and everything below it."""
    root_name = prefix if prefix is not None else hive.root.name
    yield HEADER
    yield ""
    for key in hive.walk(top):
        path = root_name + ("\\" + key.path if key.path else "")
        if key.is_tombstone:
            yield f"[-{path}]"
            yield ""
            continue
        yield f"[{path}]"
        for value in key.values():
            yield from _value_lines(value)
        yield ""


def export_text(hive: Hive, top: Key | None = None, *, prefix: str | None = None) -> str:
    return "\n".join(export_lines(hive, top, prefix=prefix)) + "\n"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _value_lines(value: Value) -> Iterator[str]:
    name = "@" if value.name == "" else _quote(value.name)
    if value.is_tombstone:
        yield f"{name}=-"
        return
    data = value.data
    if value.type == RegType.REG_SZ:
        text = decode_string(data)
        if encode_string(text) == data and "\r" not in text and "\n" not in text:
            yield f"{name}={_quote(text)}"
            return
    if value.type == RegType.REG_DWORD and len(data) == 4:
        yield f"{name}=dword:{int.from_bytes(data, 'little'):08x}"
        return
    kind = "hex" if value.type == RegType.REG_BINARY else f"hex({value.type:x})"
    yield from _hex_lines(f"{name}={kind}:", data)


def _hex_lines(head: str, data: bytes) -> Iterator[str]:
    line = head
    items = [f"{b:02x}" for b in data]
    for i, item in enumerate(items):
        last = i == len(items) - 1
        piece = item if last else item + ","
        # keep room for the continuation backslash after the comma
        if len(line) + len(piece) > LINE_LIMIT - 1 and line.strip():
            yield line + "\\"
            line = "  "
        line += piece
    yield line
