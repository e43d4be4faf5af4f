"""A registry hive in memory: read every record, edit keys and values, save crash-safely.

Implements the primary-file format of the spec (msuhanov/regf) "Format of primary files": the
base block (checksum, sequence numbers, versions), key nodes, subkey lists (``li``, ``lf``,
``lh`` and ``ri``), value lists, key values with inline, cell and big-data (``db``) storage,
key security items (a circular doubly linked list with reference counts) and the layered-key
bits of differencing hives.  Dirty hives are recovered from their transaction logs by
:mod:`cimsnap.formats.regf.logs` when opened.

Editing works on the cells of the image in place, as Windows and hivex do: new records go into
free cells or a new hive bin, deleted records are freed, everything else keeps its bytes.  Subkey
lists are kept in memory while a key's children change and written back, sorted by upcased name
with ``lh`` hashes (``lf`` hints for regf 1.3/1.4 hives), when the hive is saved; the cached
maxima of every changed key node are recomputed at the same time.  Saving bumps both sequence
numbers, updates the hive bins size and the checksum, writes a temporary file in the same
directory, fsyncs it and renames it over the destination.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import struct
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from cimsnap.errors import NotFoundError, UsageError

from . import logs as hivelogs
from .cells import ALLOCATED, CellStore, RegfError
from .names import (
    check_key_name,
    check_value_name,
    decode_name,
    encode_name,
    name_hint,
    sort_key,
    split_path,
    upcase,
)
from .records import Key, Value, filetime_now
from .security import DEFAULT_SECURITY_DESCRIPTOR
from .structures import (
    BASE_BLOCK_HEADER,
    BASE_BLOCK_SIZE,
    BASE_FILE_NAME_OFFSET,
    BASE_FILE_NAME_SIZE,
    BASE_FLAG_LAYERED_KEYS,
    BASE_FLAGS_OFFSET,
    BIG_DATA,
    BIG_DATA_SEGMENT_SIZE,
    CELL_SIZE,
    CHECKSUM_OFFSET,
    DATA_INLINE_FLAG,
    FILE_FORMAT_DIRECT_MEMORY_LOAD,
    FILE_TYPE_PRIMARY,
    HBIN_ALIGNMENT,
    HBIN_HEADER,
    HBIN_HEADER_SIZE,
    HBIN_SIGNATURE,
    KEY_COMP_NAME,
    KEY_NODE,
    KEY_NODE_SIZE,
    KEY_SECURITY,
    KEY_SECURITY_SIZE,
    KEY_VALUE,
    KEY_VALUE_SIZE,
    LAYER_INHERIT_CLASS,
    LIST_HEADER,
    MAJOR_VERSION,
    MAX_INLINE_DATA,
    MAX_LEAF_ELEMENTS,
    MINOR_VERSION_DEFAULT,
    MINOR_WITH_BIG_DATA,
    MINOR_WITH_HASH_LEAF,
    NIL,
    NK_CLASS,
    NK_CLASS_LENGTH,
    NK_FLAGS,
    NK_LAYERED_BITS,
    NK_MAX_SUBKEY_CLASS,
    NK_MAX_SUBKEY_NAME,
    NK_MAX_VALUE_DATA,
    NK_MAX_VALUE_NAME,
    NK_NAME_LENGTH,
    NK_SECURITY,
    NK_SUBKEY_COUNT,
    NK_TIMESTAMP,
    NK_VALUE_COUNT,
    NK_VALUE_LIST,
    REGF_SIGNATURE,
    ROOT_KEY_FLAGS,
    SIG_BIG_DATA,
    SIG_FAST_LEAF,
    SIG_HASH_LEAF,
    SIG_INDEX_LEAF,
    SIG_INDEX_ROOT,
    SIG_KEY_NODE,
    SIG_KEY_SECURITY,
    SIG_KEY_VALUE,
    SK_BLINK,
    SK_FLINK,
    SK_REFCOUNT,
    U16,
    U32,
    U64,
    VALUE_COMP_NAME,
    VALUE_TOMBSTONE,
    VK_DATA_OFFSET,
    VK_DATA_SIZE,
    VK_FLAGS,
    VK_TYPE,
    LayerSemantics,
    checksum,
)
from .values import ValueData, encode_value

_LEAF_PAIR = struct.Struct("<II")
_LINEAR_LOOKUP = 16  # subkey lists up to this size are searched without building a dict
_NK_COUNTS = struct.Struct("<I4xI")  # subkey count, (volatile count), subkey list offset
_NK_VALUES = struct.Struct("<II")  # value count, value list offset


class Hive:
    """A registry hive loaded into memory.  See the package docstring for the API."""

    def __init__(self, image: bytearray, source: str | os.PathLike[str], *, strict: bool):
        self._init_state(source)
        self._load(image, strict)

    def _init_state(self, source: str | os.PathLike[str]) -> None:
        self._source = Path(source)
        self.path: Path | None = None
        self.recovered_from: list[Path] = []
        self.dirty = False  # opened without recovery although the base block says dirty
        self.warnings: list[str] = []
        self._now: Callable[[], int] = filetime_now
        # children of keys whose subkey lists changed: sorted (sort key, offset); written on flush
        self._pending: dict[int, list[tuple[bytes, int]]] = {}
        self._pending_old: dict[int, list[int]] = {}  # cells of the list those replace
        self._lookup: dict[int, dict[bytes, int]] = {}  # name lookup caches of big lists
        self._touched: set[int] = set()  # keys whose cached maxima must be recomputed
        self._sk_by_descriptor: dict[bytes, int] | None = None

    # === opening and creating ================================================================
    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, recover: bool = True, strict: bool = False
    ) -> Hive:
        """Read a hive file; a dirty hive is recovered from ``.LOG1``/``.LOG2``/``.LOG`` beside it.

        Without usable logs a dirty hive (wrong base block checksum or different sequence
        numbers) is read as it is, the way Windows' self-healing does, with ``hive.dirty`` set
        and a note in ``hive.warnings``; ``strict=True`` makes that an error instead.
        """
        path = Path(path)
        data = path.read_bytes()
        found = hivelogs.find_logs(path) if recover else []
        logs = [(p, p.read_bytes()) for p in found]
        hive = cls._recovered(data, logs, path, strict=strict)
        hive.path = path
        return hive

    @classmethod
    def _recovered(
        cls, data: bytes, logs: list[tuple[Path, bytes]], source: Path, *, strict: bool
    ) -> Hive:
        image = bytearray(data)
        if not logs or not hivelogs.needs_recovery(image):
            return cls(image, source, strict=strict)
        try:
            result = hivelogs.recover(image, logs, source=source)
        except RegfError as err:
            if strict:
                raise
            hive = cls(bytearray(data), source, strict=False)
            hive.warnings.append(f"transaction logs not applied: {err.message}")
            return hive
        hive = cls(result.image, source, strict=True)
        hive.recovered_from = result.applied
        return hive

    @classmethod
    def from_bytes(
        cls,
        data: bytes | bytearray,
        *,
        source: str = "<memory>",
        logs: Sequence[tuple[str, bytes]] = (),
        strict: bool = False,
    ) -> Hive:
        """A hive from the bytes of a primary file (and optionally of its transaction logs)."""
        named = [(Path(name), bytes(raw)) for name, raw in logs]
        return cls._recovered(bytes(data), named, Path(source), strict=strict)

    @classmethod
    def create(
        cls,
        root_name: str = "ROOT",
        *,
        minor_version: int = MINOR_VERSION_DEFAULT,
        security_descriptor: bytes = DEFAULT_SECURITY_DESCRIPTOR,
        file_name: str = "",
        layered: bool = False,
    ) -> Hive:
        """A new, empty hive (no template file): one hive bin with the root key and its sk."""
        check_key_name(root_name)
        if not 3 <= minor_version <= 6:
            raise UsageError(f"regf minor version {minor_version} is not supported (3..6)")
        now = filetime_now()
        base = bytearray(BASE_BLOCK_SIZE)
        BASE_BLOCK_HEADER.pack_into(
            base,
            0,
            REGF_SIGNATURE,
            1,
            1,
            now,
            MAJOR_VERSION,
            minor_version,
            FILE_TYPE_PRIMARY,
            FILE_FORMAT_DIRECT_MEMORY_LOAD,
            NIL,
            HBIN_ALIGNMENT,
            1,
        )
        if layered:
            U32.pack_into(base, BASE_FLAGS_OFFSET, BASE_FLAG_LAYERED_KEYS)
        first_bin = bytearray(HBIN_ALIGNMENT)
        HBIN_HEADER.pack_into(first_bin, 0, HBIN_SIGNATURE, 0, HBIN_ALIGNMENT, 0, now, 0)
        struct.pack_into("<i", first_bin, HBIN_HEADER_SIZE, HBIN_ALIGNMENT - HBIN_HEADER_SIZE)
        image = base + first_bin
        _set_file_name(image, file_name)
        U32.pack_into(image, CHECKSUM_OFFSET, checksum(image))
        hive = cls.__new__(cls)
        hive._init_state(file_name or "<new hive>")
        hive._buf = image
        hive._cells = CellStore(image, HBIN_ALIGNMENT, hive._source)
        hive.minor_version = minor_version
        # the root key node is the first cell of the first bin, as in every hive Windows writes
        # (regipy, for one, finds the root there instead of using the base block's offset)
        raw, compressed = encode_name(root_name)
        flags = ROOT_KEY_FLAGS & ~KEY_COMP_NAME
        root = hive._new_key_node(raw, compressed, parent=NIL, security=NIL, flags=flags)
        hive._root_offset = root
        sk = hive._new_security(security_descriptor, first=True)
        U32.pack_into(hive._buf, BASE_BLOCK_SIZE + root + 4 + NK_SECURITY, sk)
        hive._add_security_reference(sk)
        return hive

    def _load(self, image: bytearray, strict: bool) -> None:
        source = self._source
        if len(image) >= len(REGF_SIGNATURE) and image[:4] != REGF_SIGNATURE:
            raise RegfError(f"not a registry hive (signature {bytes(image[:4])!r})", path=source)
        if len(image) < BASE_BLOCK_SIZE:
            raise RegfError(
                f"file is {len(image)} bytes, too small for a hive (truncated?)", path=source
            )
        (
            sig,
            seq1,
            seq2,
            _ts,
            major,
            minor,
            file_type,
            file_format,
            root,
            hbins_size,
            _clustering,
        ) = BASE_BLOCK_HEADER.unpack_from(image, 0)
        if sig != REGF_SIGNATURE:
            raise RegfError(f"not a registry hive (signature {bytes(sig)!r})", path=source)
        (stored,) = U32.unpack_from(image, CHECKSUM_OFFSET)
        computed = checksum(image)
        problems = []
        if stored != computed:
            problems.append(f"base block checksum is {stored:#010x}, expected {computed:#010x}")
        if seq1 != seq2:
            problems.append(f"sequence numbers differ ({seq1}/{seq2})")
        if problems:
            text = "; ".join(problems)
            if strict:
                raise RegfError(
                    f"dirty or damaged hive: {text} (no usable transaction logs)",
                    path=source,
                    offset=CHECKSUM_OFFSET if stored != computed else 4,
                )
            self.dirty = True
            self.warnings.append(f"hive is dirty ({text}); read without transaction logs")
        if major != MAJOR_VERSION or not 3 <= minor <= 6:
            raise RegfError(f"unsupported regf version {major}.{minor}", path=source)
        if file_type != FILE_TYPE_PRIMARY:
            raise RegfError(
                f"file type {file_type}: a transaction log, not a primary hive file", path=source
            )
        if file_format != FILE_FORMAT_DIRECT_MEMORY_LOAD:
            raise RegfError(f"unsupported hive file format {file_format}", path=source)
        if hbins_size == 0 or hbins_size % HBIN_ALIGNMENT:
            raise RegfError(f"invalid hive bins data size {hbins_size:#x}", path=source)
        if BASE_BLOCK_SIZE + hbins_size > len(image):
            raise RegfError(
                f"hive is truncated: the base block declares {hbins_size} bytes of hive bins, "
                f"the file holds {len(image) - BASE_BLOCK_SIZE}",
                path=source,
            )
        del image[BASE_BLOCK_SIZE + hbins_size :]  # padding or garbage after the last bin
        self._buf = image
        self.minor_version = minor
        self._cells = CellStore(image, hbins_size, source)
        self._root_offset = root
        Key(self, root)  # validates the root key node

    # === base block ==========================================================================
    @property
    def root(self) -> Key:
        return Key(self, self._root_offset, "")

    @property
    def sequence_numbers(self) -> tuple[int, int]:
        seq1, seq2 = struct.unpack_from("<II", self._buf, 4)
        return int(seq1), int(seq2)

    @property
    def last_written(self) -> int:
        (value,) = U64.unpack_from(self._buf, 12)
        return int(value)

    @property
    def layered(self) -> bool:
        """The base block says this hive supports layered keys (a differencing hive)."""
        (flags,) = U32.unpack_from(self._buf, BASE_FLAGS_OFFSET)
        return bool(flags & BASE_FLAG_LAYERED_KEYS)

    @property
    def file_name(self) -> str:
        raw = bytes(self._buf[BASE_FILE_NAME_OFFSET : BASE_FILE_NAME_OFFSET + BASE_FILE_NAME_SIZE])
        return decode_name(raw, False).split("\0", 1)[0]

    @property
    def hbins_size(self) -> int:
        return self._cells.hbins_size

    def set_clock(self, clock: Callable[[], int]) -> None:
        """Use ``clock()`` (a FILETIME) for timestamps instead of the current time."""
        self._now = clock

    # === navigation ==========================================================================
    def key(self, path: str) -> Key:
        """The key at ``path`` (backslashes, case-insensitive, relative to the root)."""
        key = self.find_key(path)
        if key is None:
            raise NotFoundError(f"key not found: {path}", path=self._source)
        return key

    def find_key(self, path: str) -> Key | None:
        key = self.root
        for part in split_path(path):
            child = key.subkey(part)
            if child is None:
                return None
            key = child
        return key

    def walk(self, top: Key | None = None) -> Iterator[Key]:
        """Every key below ``top`` (default the root), parents before children.

        A key reached twice (a cycle or a list shared between keys) is a format error.
        """
        start = top if top is not None else self.root
        seen: set[int] = {start.offset}
        stack = [start]
        while stack:
            key = stack.pop()
            yield key
            children = key.subkeys()
            for child in children:
                if child.offset in seen:
                    raise self._cells.error(
                        f"key {child.offset:#x} is reached twice (cycle in subkey lists) "
                        f"under {key.path or '<root>'}",
                        child.offset,
                    )
                seen.add(child.offset)
            stack.extend(reversed(children))

    def _subkey_offsets(self, nk: int) -> list[int]:
        pending = self._pending.get(nk)
        if pending is not None:
            return [offset for _key, offset in pending]
        pos = BASE_BLOCK_SIZE + nk + 4
        count, list_offset = _NK_COUNTS.unpack_from(self._buf, pos + NK_SUBKEY_COUNT)
        if count == 0:
            return []
        offsets = self._read_subkey_list(list_offset, nk)
        if len(offsets) != count:
            raise self._cells.error(
                f"key {nk:#x} says it has {count} subkeys, its list holds {len(offsets)}",
                list_offset,
            )
        return offsets

    def _read_subkey_list(self, list_offset: int, nk: int) -> list[int]:
        pos, length = self._cells.cell(list_offset, f"subkey list of key {nk:#x}")
        buf = self._buf
        if length < 4:
            raise self._cells.error("subkey list cell too small", list_offset)
        sig, count = LIST_HEADER.unpack_from(buf, pos)
        if sig != SIG_INDEX_ROOT:
            return self._leaf_offsets(sig, pos, length, count, list_offset)
        if 4 + 4 * count > length:
            raise self._cells.error(f"index root claims {count} leaves", list_offset)
        result: list[int] = []
        for leaf in struct.unpack_from(f"<{count}I", buf, pos + 4):
            leaf_pos, leaf_length = self._cells.cell(leaf, "subkey list leaf")
            if leaf_length < 4:
                raise self._cells.error("subkey list leaf too small", leaf)
            leaf_sig, leaf_count = LIST_HEADER.unpack_from(buf, leaf_pos)
            if leaf_sig == SIG_INDEX_ROOT:
                raise self._cells.error("an index root points to another index root", leaf)
            result.extend(self._leaf_offsets(leaf_sig, leaf_pos, leaf_length, leaf_count, leaf))
        return result

    def _leaf_offsets(self, sig: bytes, pos: int, length: int, count: int, at: int) -> list[int]:
        if sig in (SIG_HASH_LEAF, SIG_FAST_LEAF):
            if 4 + 8 * count > length:
                raise self._cells.error(f"subkey list claims {count} elements", at)
            return list(struct.unpack_from(f"<{2 * count}I", self._buf, pos + 4)[0::2])
        if sig == SIG_INDEX_LEAF:
            if 4 + 4 * count > length:
                raise self._cells.error(f"subkey list claims {count} elements", at)
            return list(struct.unpack_from(f"<{count}I", self._buf, pos + 4))
        raise self._cells.error(f"bad subkey list signature {bytes(sig)!r}", at)

    def _find_subkey(self, nk: int, name: str) -> int | None:
        wanted = sort_key(name)
        pending = self._pending.get(nk)
        if pending is not None:
            i = bisect.bisect_left(pending, (wanted, -1))
            if i < len(pending) and pending[i][0] == wanted:
                return pending[i][1]
            return None
        cache = self._lookup.get(nk)
        if cache is None:
            offsets = self._subkey_offsets(nk)
            if len(offsets) <= _LINEAR_LOOKUP:
                for offset in offsets:
                    if sort_key(self._key_name(offset)) == wanted:
                        return offset
                return None
            cache = {sort_key(self._key_name(offset)): offset for offset in offsets}
            self._lookup[nk] = cache
        return cache.get(wanted)

    def _key_name(self, nk: int) -> str:
        return Key(self, nk).name

    def _value_offsets(self, nk: int) -> list[int]:
        count, list_offset = _NK_VALUES.unpack_from(self._buf, BASE_BLOCK_SIZE + nk + 4 + 36)
        if count == 0:
            return []
        cells = self._cells
        if (
            list_offset < cells.hbins_size
            and not list_offset & 7
            and cells.kind[list_offset >> 3] == ALLOCATED
        ):
            pos = BASE_BLOCK_SIZE + list_offset + 4
            length = -CELL_SIZE.unpack_from(self._buf, pos - 4)[0] - 4
        else:
            pos, length = cells.cell(list_offset, f"value list of key {nk:#x}")
        if 4 * count > length:
            raise self._cells.error(f"key {nk:#x} claims {count} values", list_offset)
        return list(struct.unpack_from(f"<{count}I", self._buf, pos))

    def _find_value(self, nk: int, name: str) -> int | None:
        """Offset of the value called ``name`` (case-insensitive), without decoding the rest."""
        wanted = upcase(name)
        ascii_wanted = wanted.encode("ascii") if wanted.isascii() else None
        buf = self._buf
        for vk in self._value_offsets(nk):
            pos, length = self._cells.cell(vk, "key value")
            if length < KEY_VALUE_SIZE or buf[pos : pos + 2] != SIG_KEY_VALUE:
                raise self._cells.error(f"value at {vk:#x} is not a vk record", vk)
            (name_length,) = U16.unpack_from(buf, pos + 2)
            (flags,) = U16.unpack_from(buf, pos + VK_FLAGS)
            if KEY_VALUE_SIZE + name_length > length:
                raise self._cells.error(f"value name at {vk:#x} runs past its cell", vk)
            raw = bytes(buf[pos + KEY_VALUE_SIZE : pos + KEY_VALUE_SIZE + name_length])
            if flags & VALUE_COMP_NAME and ascii_wanted is not None:
                if len(raw) == len(ascii_wanted) and raw.upper() == ascii_wanted:
                    return vk
                continue
            if upcase(decode_name(raw, bool(flags & VALUE_COMP_NAME))) == wanted:
                return vk
        return None

    def _value_data(self, size_raw: int, data_offset: int, vk: int) -> bytes:
        if size_raw & DATA_INLINE_FLAG:
            size = size_raw & ~DATA_INLINE_FLAG
            if size > MAX_INLINE_DATA:
                raise self._cells.error(f"inline value data of {size} bytes", vk)
            return data_offset.to_bytes(4, "little")[:size]
        if size_raw == 0:
            return b""
        pos, length = self._cells.cell(data_offset, f"data of value {vk:#x}")
        buf = self._buf
        if (
            size_raw > BIG_DATA_SEGMENT_SIZE
            and self.minor_version >= MINOR_WITH_BIG_DATA
            and buf[pos : pos + 2] == SIG_BIG_DATA
        ):
            return self._big_data(pos, length, size_raw, data_offset)
        if size_raw > length:
            raise self._cells.error(
                f"value data of {size_raw} bytes does not fit its {length}-byte cell", data_offset
            )
        return bytes(buf[pos : pos + size_raw])

    def _big_data(self, pos: int, length: int, size: int, at: int) -> bytes:
        if length < BIG_DATA.size:
            raise self._cells.error("big data record too small", at)
        _sig, segments, list_offset = BIG_DATA.unpack_from(self._buf, pos)
        list_pos, list_length = self._cells.cell(list_offset, "big data segment list")
        if 4 * segments > list_length:
            raise self._cells.error(f"big data claims {segments} segments", list_offset)
        out = bytearray()
        remaining = size
        for segment in struct.unpack_from(f"<{segments}I", self._buf, list_pos):
            if remaining == 0:
                break
            seg_pos, seg_length = self._cells.cell(segment, "big data segment")
            take = min(remaining, BIG_DATA_SEGMENT_SIZE)
            if take > seg_length:
                raise self._cells.error("big data segment shorter than expected", segment)
            out += self._buf[seg_pos : seg_pos + take]
            remaining -= take
        if remaining:
            raise self._cells.error(f"big data holds {size - remaining} of its {size} bytes", at)
        return bytes(out)

    def _security_descriptor(self, sk: int) -> bytes:
        pos, length = self._cells.cell(sk, "key security")
        if length < KEY_SECURITY_SIZE or self._buf[pos : pos + 2] != SIG_KEY_SECURITY:
            raise self._cells.error("security cell is not an sk record", sk)
        (size,) = U32.unpack_from(self._buf, pos + 16)
        if KEY_SECURITY_SIZE + size > length:
            raise self._cells.error("security descriptor runs past its cell", sk)
        return bytes(self._buf[pos + KEY_SECURITY_SIZE : pos + KEY_SECURITY_SIZE + size])

    def security_items(self) -> list[tuple[int, int, bytes]]:
        """Every sk record on the list: (offset, reference count, security descriptor)."""
        start = self.root.security_offset
        items = []
        offset = start
        seen: set[int] = set()
        while True:
            if offset in seen:
                raise self._cells.error("security list loops without returning", offset)
            seen.add(offset)
            descriptor = self._security_descriptor(offset)
            pos = BASE_BLOCK_SIZE + offset + 4
            flink, _blink, refcount = struct.unpack_from("<III", self._buf, pos + SK_FLINK)
            items.append((offset, refcount, descriptor))
            offset = flink
            if offset == start:
                return items

    # === editing: path-based API =============================================================
    def create_key(self, path: str) -> Key:
        """The key at ``path``, created with any missing parents (new keys share their
        parent's security descriptor)."""
        key = self.root
        for part in split_path(path):
            child = key.subkey(part)
            key = child if child is not None else self._create_subkey(key, part)
        return key

    def set_value(self, key_path: str, name: str, value_type: int, data: ValueData) -> Value:
        """Set a value (``name`` ``""`` is the default value), creating the key if missing.

        ``data`` is bytes (stored as given) or a Python value matching the type: str for
        REG_SZ/REG_EXPAND_SZ/REG_LINK, a list of str for REG_MULTI_SZ, int for the numbers.
        """
        key = self.create_key(key_path)
        return self._set_value(key, name, value_type, encode_value(value_type, data))

    def delete_value(self, key_path: str, name: str) -> None:
        self._delete_value(self.key(key_path), name)

    def delete_key(self, path: str) -> None:
        """Delete the key at ``path`` with everything below it."""
        key = self.key(path)
        if key.is_root:
            raise UsageError("the root key cannot be deleted", path=self._source)
        self._delete_subtree(key)

    # === editing: records ====================================================================
    def _touch(self, nk: int) -> None:
        U64.pack_into(self._buf, BASE_BLOCK_SIZE + nk + 4 + NK_TIMESTAMP, self._now())
        self._touched.add(nk)

    def _new_key_node(
        self, raw_name: bytes, compressed: bool, *, parent: int, security: int, flags: int = 0
    ) -> int:
        offset = self._cells.alloc(KEY_NODE_SIZE + len(raw_name))
        pos = BASE_BLOCK_SIZE + offset + 4
        KEY_NODE.pack_into(
            self._buf,
            pos,
            SIG_KEY_NODE,
            flags | (KEY_COMP_NAME if compressed else 0),
            self._now(),
            0,
            parent,
            0,
            0,
            NIL,
            NIL,
            0,
            NIL,
            security,
            NIL,
            0,
            0,
            0,
            0,
            0,
            len(raw_name),
            0,
        )
        self._buf[pos + KEY_NODE_SIZE : pos + KEY_NODE_SIZE + len(raw_name)] = raw_name
        return offset

    def _create_subkey(self, parent: Key, name: str) -> Key:
        check_key_name(name)
        if parent.is_tombstone:
            raise UsageError(f"cannot create a key under the tombstone key {parent.path}")
        existing = self._find_subkey(parent.offset, name)
        if existing is not None:
            child = Key(self, existing)
            child._path = (parent.path + "\\" if not parent.is_root else "") + child.name
            return child
        security = parent.security_offset
        self._security_descriptor(security)  # the parent's sk must be valid to be shared
        raw, compressed = encode_name(name)
        offset = self._new_key_node(raw, compressed, parent=parent.offset, security=security)
        self._add_security_reference(security)
        self._insert_child(parent.offset, name, offset)
        child = Key(self, offset)
        child._path = (parent.path + "\\" if not parent.is_root else "") + name
        return child

    def _pending_list(self, nk: int) -> list[tuple[bytes, int]]:
        pending = self._pending.get(nk)
        if pending is None:
            pending = sorted((sort_key(self._key_name(o)), o) for o in self._subkey_offsets(nk))
            self._pending_old[nk] = self._on_disk_list_cells(nk)
            self._pending[nk] = pending
            self._lookup.pop(nk, None)
        return pending

    def _insert_child(self, nk: int, name: str, child: int) -> None:
        pending = self._pending_list(nk)
        bisect.insort(pending, (sort_key(name), child))
        self._touch(nk)

    def _remove_child(self, nk: int, child: int) -> None:
        pending = self._pending_list(nk)
        for i, (_key, offset) in enumerate(pending):
            if offset == child:
                del pending[i]
                break
        self._touch(nk)

    def _set_value(self, key: Key, name: str, value_type: int, data: bytes) -> Value:
        check_value_name(name)
        if not 0 <= value_type <= 0xFFFFFFFF:
            raise UsageError(f"value type {value_type} out of range")
        size_field, data_field = self._store_data(data)
        existing = key.value(name)
        if existing is not None:
            self._free_data(existing._size_raw, existing._data_offset, existing.offset)
            pos = BASE_BLOCK_SIZE + existing.offset + 4
            U32.pack_into(self._buf, pos + VK_DATA_SIZE, size_field)
            U32.pack_into(self._buf, pos + VK_DATA_OFFSET, data_field)
            U32.pack_into(self._buf, pos + VK_TYPE, value_type)
            flags = existing.flags & ~VALUE_TOMBSTONE
            U16.pack_into(self._buf, pos + VK_FLAGS, flags)
            self._touch(key.offset)
            return Value(self, existing.offset)
        raw, compressed = encode_name(name)
        vk = self._cells.alloc(KEY_VALUE_SIZE + len(raw))
        pos = BASE_BLOCK_SIZE + vk + 4
        KEY_VALUE.pack_into(
            self._buf,
            pos,
            SIG_KEY_VALUE,
            len(raw),
            size_field,
            data_field,
            value_type,
            VALUE_COMP_NAME if compressed else 0,
            0,
        )
        self._buf[pos + KEY_VALUE_SIZE : pos + KEY_VALUE_SIZE + len(raw)] = raw
        self._append_value(key.offset, vk)
        self._touch(key.offset)
        return Value(self, vk)

    def _append_value(self, nk: int, vk: int) -> None:
        nk_pos = BASE_BLOCK_SIZE + nk + 4
        count, list_offset = _NK_VALUES.unpack_from(self._buf, nk_pos + NK_VALUE_COUNT)
        if count == 0:
            new_list = self._cells.alloc(4)
        else:
            pos, length = self._cells.cell(list_offset, "value list")
            if 4 * (count + 1) <= length:
                U32.pack_into(self._buf, pos + 4 * count, vk)
                U32.pack_into(self._buf, nk_pos + NK_VALUE_COUNT, count + 1)
                return
            # grow by doubling so adding n values costs O(n) copies in total
            new_list = self._cells.alloc(4 * 2 * (count + 1))
            new_pos = BASE_BLOCK_SIZE + new_list + 4
            self._buf[new_pos : new_pos + 4 * count] = self._buf[pos : pos + 4 * count]
            self._cells.free(list_offset)
        U32.pack_into(self._buf, BASE_BLOCK_SIZE + new_list + 4 + 4 * count, vk)
        _NK_VALUES.pack_into(self._buf, nk_pos + NK_VALUE_COUNT, count + 1, new_list)

    def _delete_value(self, key: Key, name: str) -> None:
        value = key.value(name)
        if value is None:
            shown = name or "(default)"
            raise NotFoundError(f"value {shown!r} not found in {key.path or '<root>'}")
        offsets = self._value_offsets(key.offset)
        offsets.remove(value.offset)
        self._free_data(value._size_raw, value._data_offset, value.offset)
        self._cells.free(value.offset)
        nk_pos = BASE_BLOCK_SIZE + key.offset + 4
        (list_offset,) = U32.unpack_from(self._buf, nk_pos + NK_VALUE_LIST)
        if offsets:
            pos, _length = self._cells.cell(list_offset, "value list")
            struct.pack_into(f"<{len(offsets)}I", self._buf, pos, *offsets)
            U32.pack_into(self._buf, pos + 4 * len(offsets), 0)
            U32.pack_into(self._buf, nk_pos + NK_VALUE_COUNT, len(offsets))
        else:
            self._cells.free(list_offset)
            _NK_VALUES.pack_into(self._buf, nk_pos + NK_VALUE_COUNT, 0, NIL)
        self._touch(key.offset)

    def _store_data(self, data: bytes) -> tuple[int, int]:
        """(data size field, data offset field) for new value data."""
        size = len(data)
        if size <= MAX_INLINE_DATA:
            # Windows keeps up to 4 bytes in the offset field; empty data is stored the same way
            return size | DATA_INLINE_FLAG, int.from_bytes(data.ljust(4, b"\0"), "little")
        if size > 0x7FFFFFFF:
            raise UsageError("value data larger than 2 GiB")
        if size > BIG_DATA_SEGMENT_SIZE and self.minor_version >= MINOR_WITH_BIG_DATA:
            segments = []
            for start in range(0, size, BIG_DATA_SEGMENT_SIZE):
                chunk = data[start : start + BIG_DATA_SEGMENT_SIZE]
                # Windows gives every segment, the last one too, a full-size cell; hivex
                # relies on that when it reads big data
                segment = self._cells.alloc(BIG_DATA_SEGMENT_SIZE)
                pos = BASE_BLOCK_SIZE + segment + 4
                self._buf[pos : pos + len(chunk)] = chunk
                segments.append(segment)
            if len(segments) > 0xFFFF:
                raise UsageError("value data too large for a big-data record")
            seg_list = self._cells.alloc(4 * len(segments))
            struct.pack_into(
                f"<{len(segments)}I", self._buf, BASE_BLOCK_SIZE + seg_list + 4, *segments
            )
            record = self._cells.alloc(BIG_DATA.size)
            BIG_DATA.pack_into(
                self._buf, BASE_BLOCK_SIZE + record + 4, SIG_BIG_DATA, len(segments), seg_list
            )
            return size, record
        cell = self._cells.alloc(size)
        pos = BASE_BLOCK_SIZE + cell + 4
        self._buf[pos : pos + size] = data
        return size, cell

    def _data_cells(self, size_raw: int, data_offset: int, vk: int) -> list[int]:
        """The cells holding a value's data (validated; nothing is changed)."""
        if size_raw & DATA_INLINE_FLAG or size_raw == 0 or data_offset == NIL:
            return []
        pos, _length = self._cells.cell(data_offset, f"data of value {vk:#x}")
        if (
            size_raw > BIG_DATA_SEGMENT_SIZE
            and self.minor_version >= MINOR_WITH_BIG_DATA
            and self._buf[pos : pos + 2] == SIG_BIG_DATA
        ):
            _sig, segments, list_offset = BIG_DATA.unpack_from(self._buf, pos)
            list_pos, list_length = self._cells.cell(list_offset, "big data segment list")
            if 4 * segments > list_length:
                raise self._cells.error(f"big data claims {segments} segments", list_offset)
            cells = list(struct.unpack_from(f"<{segments}I", self._buf, list_pos))
            for segment in cells:
                self._cells.cell(segment, "big data segment")
            return [*cells, list_offset, data_offset]
        return [data_offset]

    def _free_data(self, size_raw: int, data_offset: int, vk: int) -> None:
        for cell in self._data_cells(size_raw, data_offset, vk):
            self._cells.free(cell)

    # --- security items ----------------------------------------------------------------------
    def _add_security_reference(self, sk: int) -> None:
        pos = BASE_BLOCK_SIZE + sk + 4 + SK_REFCOUNT
        (count,) = U32.unpack_from(self._buf, pos)
        U32.pack_into(self._buf, pos, count + 1)

    def _release_security(self, sk: int) -> None:
        self._security_descriptor(sk)
        pos = BASE_BLOCK_SIZE + sk + 4
        flink, blink, count = struct.unpack_from("<III", self._buf, pos + SK_FLINK)
        self._security_descriptor(flink)  # both neighbours must be sk records before relinking
        self._security_descriptor(blink)
        if count > 1:
            U32.pack_into(self._buf, pos + SK_REFCOUNT, count - 1)
            return
        if flink == sk:
            raise self._cells.error("cannot free the last security item of the hive", sk)
        U32.pack_into(self._buf, BASE_BLOCK_SIZE + blink + 4 + SK_FLINK, flink)
        U32.pack_into(self._buf, BASE_BLOCK_SIZE + flink + 4 + SK_BLINK, blink)
        if self._sk_by_descriptor is not None:
            self._sk_by_descriptor = {d: o for d, o in self._sk_by_descriptor.items() if o != sk}
        self._cells.free(sk)

    def _new_security(self, descriptor: bytes, *, first: bool = False) -> int:
        """Allocate an sk record with reference count 0, linked at the end of the list."""
        sk = self._cells.alloc(KEY_SECURITY_SIZE + len(descriptor))
        pos = BASE_BLOCK_SIZE + sk + 4
        if first:
            flink = blink = sk
        else:
            head = self.root.security_offset
            self._security_descriptor(head)
            (last,) = U32.unpack_from(self._buf, BASE_BLOCK_SIZE + head + 4 + SK_BLINK)
            self._security_descriptor(last)
            flink, blink = head, last
            U32.pack_into(self._buf, BASE_BLOCK_SIZE + last + 4 + SK_FLINK, sk)
            U32.pack_into(self._buf, BASE_BLOCK_SIZE + head + 4 + SK_BLINK, sk)
        KEY_SECURITY.pack_into(
            self._buf, pos, SIG_KEY_SECURITY, 0, flink, blink, 0, len(descriptor)
        )
        self._buf[pos + KEY_SECURITY_SIZE : pos + KEY_SECURITY_SIZE + len(descriptor)] = descriptor
        if self._sk_by_descriptor is not None:
            self._sk_by_descriptor.setdefault(descriptor, sk)
        return sk

    def set_security_descriptor(self, key: Key, descriptor: bytes) -> None:
        """Give ``key`` this self-relative security descriptor, sharing an identical sk."""
        if self._sk_by_descriptor is None:
            self._sk_by_descriptor = {}
            for offset, _count, existing in self.security_items():
                self._sk_by_descriptor.setdefault(existing, offset)
        old = key.security_offset
        new = self._sk_by_descriptor.get(descriptor)
        if new == old:
            return
        if new is None:
            new = self._new_security(descriptor)
        self._add_security_reference(new)
        U32.pack_into(self._buf, key._pos + NK_SECURITY, new)
        self._release_security(old)

    def set_class_name(self, key: Key, class_name: str | None) -> None:
        nk_pos = key._pos
        (old,) = U32.unpack_from(self._buf, nk_pos + NK_CLASS)
        if old != NIL and self._cells.is_allocated(old):
            self._cells.free(old)
        if not class_name:
            U32.pack_into(self._buf, nk_pos + NK_CLASS, NIL)
            U16.pack_into(self._buf, nk_pos + NK_CLASS_LENGTH, 0)
        else:
            raw = class_name.encode("utf-16-le", "surrogatepass")
            if len(raw) > 0xFFFF:
                raise UsageError("class name too long")
            cell = self._cells.alloc(len(raw))
            self._buf[BASE_BLOCK_SIZE + cell + 4 : BASE_BLOCK_SIZE + cell + 4 + len(raw)] = raw
            U32.pack_into(self._buf, nk_pos + NK_CLASS, cell)
            U16.pack_into(self._buf, nk_pos + NK_CLASS_LENGTH, len(raw))
        self._touch(key.offset)
        parent = key.parent
        if parent is not None:
            self._touched.add(parent.offset)

    def set_layer_semantics(
        self, key: Key, semantics: LayerSemantics, *, inherit_class: bool = False
    ) -> None:
        """Mark a key of a differencing hive (tombstone, supersede local/tree)."""
        bits = int(semantics) | (LAYER_INHERIT_CLASS if inherit_class else 0)
        self._buf[key._pos + NK_LAYERED_BITS] = bits

    def set_value_tombstone(self, key: Key, name: str) -> Value:
        """Add (or turn a value into) a tombstone value: REG_NONE, no data, flag 0x0002."""
        value = self._set_value(key, name, 0, b"")
        pos = BASE_BLOCK_SIZE + value.offset + 4
        U32.pack_into(self._buf, pos + VK_DATA_SIZE, 0)
        U32.pack_into(self._buf, pos + VK_DATA_OFFSET, NIL)
        U16.pack_into(self._buf, pos + VK_FLAGS, value.flags | VALUE_TOMBSTONE)
        return Value(self, value.offset)

    # --- deleting keys -----------------------------------------------------------------------
    def _delete_subtree(self, top: Key) -> None:
        """Free a key and everything below it (validated completely before anything changes)."""
        keys: list[Key] = list(self.walk(top))
        cells: list[int] = []
        releases: list[int] = []
        for key in keys:
            nk = key.offset
            nk_pos = key._pos
            for vk in self._value_offsets(nk):
                value = Value(self, vk)
                cells.extend(self._data_cells(value._size_raw, value._data_offset, vk))
                cells.append(vk)
            count, list_offset = _NK_VALUES.unpack_from(self._buf, nk_pos + NK_VALUE_COUNT)
            if count:
                cells.append(list_offset)
            cells.extend(self._on_disk_list_cells(nk))
            (class_offset,) = U32.unpack_from(self._buf, nk_pos + NK_CLASS)
            if class_offset != NIL and key.class_name is not None:
                cells.append(class_offset)
            self._security_descriptor(key.security_offset)
            releases.append(key.security_offset)
            cells.append(nk)
        parent = top.parent
        if parent is None:
            raise UsageError("the root key cannot be deleted")
        if len(set(cells)) != len(cells):
            raise self._cells.error(f"cells shared between records below {top.path}")
        self._remove_child(parent.offset, top.offset)
        for key in keys:
            self._pending.pop(key.offset, None)
            self._pending_old.pop(key.offset, None)
            self._lookup.pop(key.offset, None)
            self._touched.discard(key.offset)
        for sk in releases:
            self._release_security(sk)
        for cell in cells:
            self._cells.free(cell)

    def _on_disk_list_cells(self, nk: int) -> list[int]:
        """The cells of the subkey list written in the key node (validated, nothing changed)."""
        old = self._pending_old.get(nk)
        if old is not None:
            return old
        count, list_offset = _NK_COUNTS.unpack_from(
            self._buf, BASE_BLOCK_SIZE + nk + 4 + NK_SUBKEY_COUNT
        )
        if count == 0:
            return []
        pos, length = self._cells.cell(list_offset, "subkey list")
        sig, n = LIST_HEADER.unpack_from(self._buf, pos)
        cells = [list_offset]
        if sig == SIG_INDEX_ROOT and 4 + 4 * n <= length:
            for leaf in struct.unpack_from(f"<{n}I", self._buf, pos + 4):
                self._cells.cell(leaf, "subkey list leaf")
                cells.append(leaf)
        return cells

    # === saving ==============================================================================
    def flush(self) -> None:
        """Write pending subkey lists and recompute cached maxima of changed keys."""
        for nk, pending in list(self._pending.items()):
            old = self._pending_old.pop(nk)
            offsets = [offset for _key, offset in pending]
            new_list = self._write_subkey_list(pending) if offsets else NIL
            _NK_COUNTS.pack_into(
                self._buf, BASE_BLOCK_SIZE + nk + 4 + NK_SUBKEY_COUNT, len(offsets), new_list
            )
            for cell in old:
                self._cells.free(cell)
        self._pending.clear()
        for nk in self._touched:
            self._recompute_maxima(nk)
        self._touched.clear()

    def _write_subkey_list(self, entries: list[tuple[bytes, int]]) -> int:
        if len(entries) <= MAX_LEAF_ELEMENTS:
            return self._write_leaf(entries)
        leaves = -(-len(entries) // MAX_LEAF_ELEMENTS)
        per_leaf = -(-len(entries) // leaves)
        offsets = [
            self._write_leaf(entries[i : i + per_leaf]) for i in range(0, len(entries), per_leaf)
        ]
        root = self._cells.alloc(4 + 4 * len(offsets))
        pos = BASE_BLOCK_SIZE + root + 4
        LIST_HEADER.pack_into(self._buf, pos, SIG_INDEX_ROOT, len(offsets))
        struct.pack_into(f"<{len(offsets)}I", self._buf, pos + 4, *offsets)
        return root

    def _write_leaf(self, entries: list[tuple[bytes, int]]) -> int:
        leaf = self._cells.alloc(4 + 8 * len(entries))
        pos = BASE_BLOCK_SIZE + leaf + 4
        if self.minor_version >= MINOR_WITH_HASH_LEAF:
            LIST_HEADER.pack_into(self._buf, pos, SIG_HASH_LEAF, len(entries))
            for i, (key, offset) in enumerate(entries):
                _LEAF_PAIR.pack_into(self._buf, pos + 4 + 8 * i, offset, _hash_of_sort_key(key))
        else:
            LIST_HEADER.pack_into(self._buf, pos, SIG_FAST_LEAF, len(entries))
            for i, (_key, offset) in enumerate(entries):
                hint = name_hint(self._key_name(offset))
                U32.pack_into(self._buf, pos + 4 + 8 * i, offset)
                self._buf[pos + 8 + 8 * i : pos + 12 + 8 * i] = hint
        return leaf

    def _recompute_maxima(self, nk: int) -> None:
        buf = self._buf
        max_name = max_class = 0
        for child in self._subkey_offsets(nk):
            cpos = BASE_BLOCK_SIZE + child + 4
            (flags,) = U16.unpack_from(buf, cpos + NK_FLAGS)
            (length,) = U16.unpack_from(buf, cpos + NK_NAME_LENGTH)
            (class_length,) = U16.unpack_from(buf, cpos + NK_CLASS_LENGTH)
            units = length if flags & KEY_COMP_NAME else length // 2
            max_name = max(max_name, 2 * units)
            max_class = max(max_class, class_length)
        max_value_name = max_value_data = 0
        for vk in self._value_offsets(nk):
            vpos = BASE_BLOCK_SIZE + vk + 4
            _sig, name_length, size_raw, _o, _t, flags, _s = KEY_VALUE.unpack_from(buf, vpos)
            units = name_length if flags & VALUE_COMP_NAME else name_length // 2
            max_value_name = max(max_value_name, 2 * units)
            max_value_data = max(max_value_data, size_raw & ~DATA_INLINE_FLAG)
        pos = BASE_BLOCK_SIZE + nk + 4
        (packed,) = U32.unpack_from(buf, pos + NK_MAX_SUBKEY_NAME)
        U32.pack_into(buf, pos + NK_MAX_SUBKEY_NAME, (packed & 0xFFFF0000) | max_name)
        U32.pack_into(buf, pos + NK_MAX_SUBKEY_CLASS, max_class)
        U32.pack_into(buf, pos + NK_MAX_VALUE_NAME, max_value_name)
        U32.pack_into(buf, pos + NK_MAX_VALUE_DATA, max_value_data)

    def to_bytes(self) -> bytes:
        """The hive as a clean primary file (pending changes flushed, sequence numbers bumped,
        hive bins size and checksum updated)."""
        self.flush()
        buf = self._buf
        seq = (max(self.sequence_numbers) + 1) & 0xFFFFFFFF
        # the last-written timestamp stays as it is: Windows stopped updating it in 8.1
        struct.pack_into("<II", buf, 4, seq, seq)
        U32.pack_into(buf, 28, FILE_TYPE_PRIMARY)
        U32.pack_into(buf, 36, self._root_offset)
        U32.pack_into(buf, 40, self._cells.hbins_size)
        U32.pack_into(buf, CHECKSUM_OFFSET, checksum(buf))
        self.dirty = False
        return bytes(buf)

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write the hive to ``path`` (default: where it was opened) crash-safely.

        The bytes go to a temporary file in the destination directory, are fsynced, and the
        file is renamed over the destination; on failure the temporary file is removed.
        """
        target = Path(path) if path is not None else self.path
        if target is None:
            raise UsageError("this hive has no file yet: give save() a path")
        data = self.to_bytes()
        _write_atomically(target, data)
        self.path = target
        return target

    # === statistics ==========================================================================
    def check(self) -> list[str]:
        """Consistency problems a writer must not leave behind (empty list = consistent).

        Checks sk reference counts and links, subkey order and hashes, and cached maxima.
        """
        problems: list[str] = []
        references: dict[int, int] = {}
        for key in self.walk():
            references[key.security_offset] = references.get(key.security_offset, 0) + 1
            children = key.subkeys()
            keys = [sort_key(child.name) for child in children]
            if keys != sorted(keys) or len(set(keys)) != len(keys):
                problems.append(f"subkeys of {key.path or '<root>'} are not strictly sorted")
        items = self.security_items()
        for offset, count, _descriptor in items:
            if references.get(offset, 0) != count:
                problems.append(
                    f"sk {offset:#x} has reference count {count}, "
                    f"{references.get(offset, 0)} keys use it"
                )
        listed = {offset for offset, _c, _d in items}
        for offset in references:
            if offset not in listed:
                problems.append(f"sk {offset:#x} is used but not on the security list")
        return problems


def _hash_of_sort_key(key: bytes) -> int:
    h = 0
    for i in range(0, len(key), 2):
        h = (h * 37 + ((key[i] << 8) | key[i + 1])) & 0xFFFFFFFF
    return h


def _set_file_name(image: bytearray, name: str) -> None:
    units = name.encode("utf-16-le", "surrogatepass")[-(BASE_FILE_NAME_SIZE - 2) :]
    field = units.ljust(BASE_FILE_NAME_SIZE, b"\0")
    image[BASE_FILE_NAME_OFFSET : BASE_FILE_NAME_OFFSET + BASE_FILE_NAME_SIZE] = field


def _write_atomically(target: Path, data: bytes) -> None:
    directory = target.parent if str(target.parent) else Path(".")
    fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_atomically(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``target``, fsync, rename over ``target``."""
    _write_atomically(Path(target), data)
