"""Merging a base hive with differencing (delta) hives, as offreg's ORMergeHives + ORSaveHive do.

hcsshim merges a parent layer's ``Hives/<X>_BASE`` with a layer's ``Hives/<X>_DELTA`` through
``ORMergeHives([base, delta])`` and saves the result.  Microsoft does not document the merge
rules; they follow from the layered-key semantics in the spec ("Layered keys"; "Key value" flag
IsTombstone), with the base as the upper ("parent") layer and the delta as the lower layer that
holds the modifications:

* a delta key with semantics 0 merges with the base key of the same name (created if missing):
  delta values are added or replace base values of the same name (case-insensitive), subkeys
  merge recursively;
* a tombstone value (vk flag 0x0002) deletes the base value of that name;
* a tombstone key (IsTombstone) deletes the base key and its subtree;
* IsSupersedeLocal: the key's own values (and class) come only from the delta, its subkeys
  still merge with the base's;
* IsSupersedeTree: the base key and its whole subtree are replaced by the delta's subtree.

Our choices where the sources are silent (listed in the README): a key the delta creates or
supersedes takes the delta key's security descriptor, a key that only merges keeps the base's;
a merged key's last-written time is the later of the two; key flags kept from the delta are the
symbolic-link and virtualization bits; the result is a normal hive (no layered bits) with the
base's version and root name.
"""

from __future__ import annotations

import os
from pathlib import Path

from .hive import Hive
from .records import Key
from .structures import (
    BASE_BLOCK_SIZE,
    NK_FLAGS,
    NK_MAX_SUBKEY_NAME,
    NK_TIMESTAMP,
    U16,
    U32,
    U64,
    LayerSemantics,
)

# nk flags a merged key takes from the delta: KEY_SYM_LINK and VirtualSource/Target/Store
_COPIED_KEY_FLAGS = 0x0010 | 0x0080 | 0x0100 | 0x0200


def merge_hives(
    base_path: str | os.PathLike[str],
    delta_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *more_deltas: str | os.PathLike[str],
) -> Path:
    """Merge ``base`` with one or more deltas (applied in order) and save to ``out_path``."""
    merged = Hive.open(base_path)
    for delta_file in (delta_path, *more_deltas):
        merge_into(merged, Hive.open(delta_file))
    return merged.save(out_path)


def merge_into(base: Hive, delta: Hive) -> None:
    """Apply the differencing hive ``delta`` on top of ``base`` (in memory)."""
    timestamps: dict[int, int] = {}
    # (merged key, delta key, the merged key's time before the merge or 0 for a new key)
    stack: list[tuple[Key, Key, int]] = [(base.root, delta.root, base.root.timestamp)]
    seen: set[int] = {delta.root.offset}
    while stack:
        target, source, before = stack.pop()
        _merge_values(base, target, source)
        if not source.inherit_class and source.class_name is not None:
            base.set_class_name(target, source.class_name)
        timestamps[target.offset] = max(before, source.timestamp)
        for child in source.subkeys():
            if child.offset in seen:
                raise delta._cells.error(
                    f"key {child.offset:#x} reached twice (cycle in subkey lists)", child.offset
                )
            seen.add(child.offset)
            semantics = child.layer_semantics
            existing = target.subkey(child.name)
            existing_time = existing.timestamp if existing is not None else 0
            if semantics == LayerSemantics.TOMBSTONE:
                if existing is not None:
                    base._delete_subtree(existing)
                continue
            if semantics == LayerSemantics.SUPERSEDE_TREE and existing is not None:
                base._delete_subtree(existing)
                existing = None
                existing_time = 0
            if existing is None:
                existing = base._create_subkey(target, child.name)
                base.set_security_descriptor(existing, child.security_descriptor)
                _copy_key_flags(base, existing, child)
            elif semantics == LayerSemantics.SUPERSEDE_LOCAL:
                for value in existing.values():
                    base._delete_value(existing, value.name)
                base.set_class_name(existing, None)
                base.set_security_descriptor(existing, child.security_descriptor)
                _copy_key_flags(base, existing, child)
            stack.append((existing, child, existing_time))
    base.flush()
    for offset, filetime in timestamps.items():
        U64.pack_into(base._buf, BASE_BLOCK_SIZE + offset + 4 + NK_TIMESTAMP, filetime)


def _merge_values(base: Hive, target: Key, source: Key) -> None:
    for value in source.values():
        if value.is_tombstone:
            if target.value(value.name) is not None:
                base._delete_value(target, value.name)
        else:
            base._set_value(target, value.name, value.type, value.data)


def _copy_key_flags(base: Hive, target: Key, source: Key) -> None:
    buf = base._buf
    (flags,) = U16.unpack_from(buf, target._pos + NK_FLAGS)
    flags = (flags & ~_COPIED_KEY_FLAGS) | (source.flags & _COPIED_KEY_FLAGS)
    U16.pack_into(buf, target._pos + NK_FLAGS, flags)
    # the high 16 bits of "largest subkey name length": virtualization, user and debug flags
    (packed,) = U32.unpack_from(source.hive._buf, source._pos + NK_MAX_SUBKEY_NAME)
    (mine,) = U32.unpack_from(buf, target._pos + NK_MAX_SUBKEY_NAME)
    U32.pack_into(buf, target._pos + NK_MAX_SUBKEY_NAME, (mine & 0xFFFF) | (packed & 0xFFFF0000))
