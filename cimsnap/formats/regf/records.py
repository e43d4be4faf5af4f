"""Views of a hive's records: keys (``nk``) and values (``vk``).

A :class:`Key` or :class:`Value` holds its hive and the offset of its cell; fields are read
from the hive's image when asked for, so walking a hive creates no copies of its data.  The
structures are the spec's "Key node" and "Key value" (msuhanov/regf); :class:`~.hive.Hive`
does the reading of lists and data and all editing.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING

from .cells import ALLOCATED
from .names import decode_name
from .structures import (
    BASE_BLOCK_SIZE,
    CELL_SIZE,
    DATA_INLINE_FLAG,
    KEY_COMP_NAME,
    KEY_NODE_SIZE,
    KEY_VALUE,
    KEY_VALUE_SIZE,
    LAYER_INHERIT_CLASS,
    LAYER_SEMANTICS_MASK,
    NIL,
    NK_ACCESS_BITS,
    NK_CLASS,
    NK_CLASS_LENGTH,
    NK_FLAGS,
    NK_LAYERED_BITS,
    NK_NAME_LENGTH,
    NK_PARENT,
    NK_SECURITY,
    NK_SUBKEY_COUNT,
    NK_TIMESTAMP,
    NK_VALUE_COUNT,
    SIG_KEY_NODE,
    SIG_KEY_VALUE,
    U16,
    U32,
    U64,
    VALUE_COMP_NAME,
    VALUE_TOMBSTONE,
    LayerSemantics,
)
from .values import Decoded, ValueData, decode_value, encode_value

if TYPE_CHECKING:
    from .hive import Hive

_FILETIME_EPOCH = dt.datetime(1601, 1, 1, tzinfo=dt.UTC)


def filetime_now() -> int:
    return (time.time_ns() // 100) + 116444736000000000


def filetime_to_datetime(filetime: int) -> dt.datetime:
    return _FILETIME_EPOCH + dt.timedelta(microseconds=filetime // 10)


class Value:
    """One value of a key (a ``vk`` record); its data is read when asked for."""

    __slots__ = ("_data_offset", "_size_raw", "flags", "hive", "name", "offset", "type")

    def __init__(self, hive: Hive, offset: int):
        # walking a hive makes one of these per value: the checks of CellStore.cell are inlined
        cells = hive._cells
        buf = hive._buf
        if offset < cells.hbins_size and not offset & 7 and cells.kind[offset >> 3] == ALLOCATED:
            pos = BASE_BLOCK_SIZE + offset + 4
            length = -CELL_SIZE.unpack_from(buf, pos - 4)[0] - 4
        else:
            pos, length = cells.cell(offset, "key value")
        if length < KEY_VALUE_SIZE or buf[pos : pos + 2] != SIG_KEY_VALUE:
            raise cells.error(f"value at {offset:#x} is not a vk record", offset)
        _sig, name_length, size_raw, data_offset, value_type, flags, _spare = KEY_VALUE.unpack_from(
            buf, pos
        )
        if KEY_VALUE_SIZE + name_length > length:
            raise cells.error(f"value name at {offset:#x} runs past its cell", offset)
        self.hive = hive
        self.offset = offset
        raw = buf[pos + KEY_VALUE_SIZE : pos + KEY_VALUE_SIZE + name_length]
        if flags & VALUE_COMP_NAME:
            self.name = raw.decode("latin-1")
        else:
            self.name = decode_name(bytes(raw), False)
        self.type = value_type
        self.flags = flags
        self._size_raw = size_raw
        self._data_offset = data_offset

    @property
    def is_tombstone(self) -> bool:
        """A tombstone value of a differencing hive: it deletes the value of the lower layer."""
        return bool(self.flags & VALUE_TOMBSTONE)

    @property
    def size(self) -> int:
        return self._size_raw & ~DATA_INLINE_FLAG

    @property
    def data(self) -> bytes:
        return self.hive._value_data(self._size_raw, self._data_offset, self.offset)

    def decoded(self) -> Decoded:
        """str for strings, list[str] for REG_MULTI_SZ, int for numbers, else bytes."""
        return decode_value(self.type, self.data)

    def __repr__(self) -> str:
        return f"Value({self.name!r}, type={self.type}, size={self.size})"


class Key:
    """A key (an ``nk`` record) of an open hive.  Stays valid until the key is deleted."""

    __slots__ = ("_name", "_path", "_pos", "hive", "offset")

    def __init__(self, hive: Hive, offset: int, path: str | None = None):
        cells = hive._cells
        buf = hive._buf
        if offset < cells.hbins_size and not offset & 7 and cells.kind[offset >> 3] == ALLOCATED:
            pos = BASE_BLOCK_SIZE + offset + 4
            length = -CELL_SIZE.unpack_from(buf, pos - 4)[0] - 4
        else:
            pos, length = cells.cell(offset, "key node")
        if length < KEY_NODE_SIZE or buf[pos : pos + 2] != SIG_KEY_NODE:
            raise hive._cells.error(f"key at {offset:#x} is not an nk record", offset)
        (name_length,) = U16.unpack_from(buf, pos + NK_NAME_LENGTH)
        if KEY_NODE_SIZE + name_length > length:
            raise hive._cells.error(f"key name at {offset:#x} runs past its cell", offset)
        self.hive = hive
        self.offset = offset
        self._pos = pos
        self._name: str | None = None
        self._path = path

    # --- identity ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        if self._name is None:
            buf = self.hive._buf
            pos = self._pos
            (flags,) = U16.unpack_from(buf, pos + NK_FLAGS)
            (length,) = U16.unpack_from(buf, pos + NK_NAME_LENGTH)
            raw = bytes(buf[pos + KEY_NODE_SIZE : pos + KEY_NODE_SIZE + length])
            self._name = decode_name(raw, bool(flags & KEY_COMP_NAME))
        return self._name

    @property
    def path(self) -> str:
        """Backslash path below the root key (``""`` for the root)."""
        if self._path is None:
            parts: list[str] = []
            key: Key | None = self
            seen: set[int] = set()
            while key is not None and not key.is_root:
                if key.offset in seen:
                    raise self.hive._cells.error("parent links form a loop", key.offset)
                seen.add(key.offset)
                parts.append(key.name)
                key = key.parent
            self._path = "\\".join(reversed(parts))
        return self._path

    def _field(self, offset: int) -> int:
        (value,) = U32.unpack_from(self.hive._buf, self._pos + offset)
        return int(value)

    @property
    def flags(self) -> int:
        (value,) = U16.unpack_from(self.hive._buf, self._pos + NK_FLAGS)
        return int(value)

    @property
    def is_root(self) -> bool:
        return self.offset == self.hive._root_offset

    @property
    def parent(self) -> Key | None:
        if self.is_root:
            return None
        return Key(self.hive, self._field(NK_PARENT))

    @property
    def timestamp(self) -> int:
        """Last written time as a FILETIME (100 ns since 1601)."""
        (value,) = U64.unpack_from(self.hive._buf, self._pos + NK_TIMESTAMP)
        return int(value)

    @property
    def last_written(self) -> dt.datetime:
        return filetime_to_datetime(self.timestamp)

    # --- layered keys ------------------------------------------------------------------------
    @property
    def layer_semantics(self) -> LayerSemantics:
        bits = self.hive._buf[self._pos + NK_LAYERED_BITS]
        return LayerSemantics(bits & LAYER_SEMANTICS_MASK)

    @property
    def inherit_class(self) -> bool:
        return bool(self.hive._buf[self._pos + NK_LAYERED_BITS] & LAYER_INHERIT_CLASS)

    @property
    def is_tombstone(self) -> bool:
        return self.layer_semantics == LayerSemantics.TOMBSTONE

    @property
    def is_supersede_local(self) -> bool:
        return self.layer_semantics == LayerSemantics.SUPERSEDE_LOCAL

    @property
    def is_supersede_tree(self) -> bool:
        return self.layer_semantics == LayerSemantics.SUPERSEDE_TREE

    @property
    def access_bits(self) -> int:
        return self.hive._buf[self._pos + NK_ACCESS_BITS]

    # --- class name and security -------------------------------------------------------------
    @property
    def class_name(self) -> str | None:
        length = U16.unpack_from(self.hive._buf, self._pos + NK_CLASS_LENGTH)[0]
        offset = self._field(NK_CLASS)
        if offset == NIL or length == 0:
            return None
        pos, cell_length = self.hive._cells.cell(offset, "class name")
        if length > cell_length:
            raise self.hive._cells.error("class name runs past its cell", offset)
        return decode_name(bytes(self.hive._buf[pos : pos + length]), False)

    @property
    def security_offset(self) -> int:
        return self._field(NK_SECURITY)

    @property
    def security_descriptor(self) -> bytes:
        return self.hive._security_descriptor(self._field(NK_SECURITY))

    # --- children ----------------------------------------------------------------------------
    @property
    def subkey_count(self) -> int:
        pending = self.hive._pending.get(self.offset)
        if pending is not None:
            return len(pending)
        return self._field(NK_SUBKEY_COUNT)

    @property
    def value_count(self) -> int:
        return self._field(NK_VALUE_COUNT)

    def subkeys(self) -> list[Key]:
        """Subkeys in the hive's order (case-insensitive by name)."""
        hive = self.hive
        prefix = self.path + "\\" if not self.is_root else ""
        result = []
        for offset in hive._subkey_offsets(self.offset):
            child = Key(hive, offset)
            child._path = prefix + child.name
            result.append(child)
        return result

    def subkey(self, name: str) -> Key | None:
        """The subkey called ``name`` (case-insensitive), or None."""
        offset = self.hive._find_subkey(self.offset, name)
        if offset is None:
            return None
        child = Key(self.hive, offset)
        child._path = (self.path + "\\" if not self.is_root else "") + child.name
        return child

    def values(self) -> list[Value]:
        hive = self.hive
        return [Value(hive, offset) for offset in hive._value_offsets(self.offset)]

    def value(self, name: str) -> Value | None:
        """The value called ``name`` (case-insensitive; ``""`` is the default value), or None."""
        offset = self.hive._find_value(self.offset, name)
        return None if offset is None else Value(self.hive, offset)

    # --- editing (see Hive for the path-based forms) -----------------------------------------
    def create_subkey(self, name: str) -> Key:
        return self.hive._create_subkey(self, name)

    def set_value(self, name: str, value_type: int, data: ValueData) -> Value:
        return self.hive._set_value(self, name, value_type, encode_value(value_type, data))

    def delete_value(self, name: str) -> None:
        self.hive._delete_value(self, name)

    def __repr__(self) -> str:
        return f"Key({self.path or '<root>'!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Key) and other.hive is self.hive and other.offset == self.offset

    def __hash__(self) -> int:
        return hash((id(self.hive), self.offset))
