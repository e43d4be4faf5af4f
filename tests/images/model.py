"""The tree an image's layers should produce, and a comparison of a CIM with it.

The model applies :class:`~tests.images.builder.LayerSpec` operations with the layer semantics
of Windows images (later layers replace files, whiteouts remove a path and all below it, hard
links share one file), independently of the importer.  :func:`assert_cim_matches` walks a CIM
with the CIM reader and checks every path, its kind, stored attributes, four times, security
descriptor, EAs, reparse point, data, alternate streams and hard-link identity.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cimsnap.formats.cim import CimImage
from cimsnap.formats.wintar import WinMetadata, decode_ea_buffer, encode_reparse_point
from tests.images.builder import LayerSpec, Op, RepeatReader

DIRECTORY = 0x10
REPARSE_POINT = 0x400
# What a CIM keeps of the attributes: READONLY, HIDDEN, SYSTEM, ARCHIVE, SPARSE_FILE.
CIM_STORABLE = 0x1 | 0x2 | 0x4 | 0x20 | 0x200


def fold(path: str) -> str:
    return path.casefold()


@dataclass(eq=False)
class Node:
    kind: str  # dir, file, symlink
    meta: WinMetadata
    data: bytes = b""
    streams: dict[str, bytes] = field(default_factory=dict)
    target: str | None = None
    mount_point: bool = False

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir" or bool(
            self.kind == "symlink" and self.meta.attributes & DIRECTORY
        )


def _content(op: Op) -> bytes:
    if op.size is None:
        return op.data
    reader = RepeatReader(op.data, op.size)
    buffer = bytearray(op.size)
    reader.readinto(memoryview(buffer))
    return bytes(buffer)


@dataclass
class Tree:
    """Folded path -> (path as written, node)."""

    nodes: dict[str, tuple[str, Node]] = field(default_factory=dict)

    def copy(self) -> Tree:
        return Tree(dict(self.nodes))

    def _remove(self, path: str) -> None:
        key = fold(path)
        prefix = key + "\\"
        for other in [k for k in self.nodes if k == key or k.startswith(prefix)]:
            del self.nodes[other]

    def apply(self, layer: LayerSpec) -> Tree:
        for op in layer.ops:
            key = fold(op.path)
            if op.kind == "dir":
                assert op.meta is not None
                existing = self.nodes.get(key)
                if existing is not None and existing[1].kind == "dir":
                    existing[1].meta = op.meta
                    self.nodes[key] = (existing[0], existing[1])
                else:
                    self._remove(op.path)
                    self.nodes[key] = (op.path, Node("dir", op.meta))
            elif op.kind in ("file", "symlink"):
                assert op.meta is not None
                self._remove(op.path)
                self.nodes[key] = (
                    op.path,
                    Node(
                        op.kind, op.meta, _content(op), dict(op.streams), op.target, op.mount_point
                    ),
                )
            elif op.kind == "link":
                assert op.target is not None
                self._remove(op.path)
                self.nodes[key] = (op.path, self.nodes[fold(op.target)][1])
            elif op.kind == "whiteout":
                self._remove(op.path)
            else:  # opaque: drop what earlier layers had below the directory
                prefix = key + "\\"
                for other in [k for k in self.nodes if k.startswith(prefix)]:
                    del self.nodes[other]
        return self


def expected_trees(layers: list[LayerSpec]) -> list[Tree]:
    """The merged tree after each layer (a new directory node object per layer)."""
    trees = []
    tree = Tree()
    for layer in layers:
        tree = Tree({k: (p, _clone_dirs(n)) for k, (p, n) in tree.nodes.items()})
        tree.apply(layer)
        trees.append(tree)
    return trees


def _clone_dirs(node: Node) -> Node:
    # Directory metadata changes in a later layer must not leak into an earlier tree.
    if node.kind == "dir":
        return Node("dir", node.meta)
    return node


def expected_attributes(node: Node) -> int:
    attributes = node.meta.attributes & CIM_STORABLE
    if node.is_dir:
        attributes |= DIRECTORY
    if node.kind == "symlink":
        attributes |= REPARSE_POINT
    return attributes


def assert_cim_matches(
    image: CimImage,
    tree: Tree,
    *,
    ignore: set[str] = frozenset(),  # type: ignore[assignment]
    ignore_content: set[str] = frozenset(),  # type: ignore[assignment]
) -> None:
    """Every path of the CIM is in the model and vice versa, with the model's properties.

    ``ignore`` (folded paths) are left out of both sides; ``ignore_content`` are checked for
    existence only (files the import rewrites, like the utility VM's BCD).
    """
    actual: dict[str, tuple[str, int, bool]] = {}
    for _top, dirs, files in image.walk("\\"):
        for entry in [*dirs, *files]:
            path = entry.path.lstrip("\\")
            actual[fold(path)] = (path, entry.file_id, entry.is_dir)
    expected_keys = {k for k in tree.nodes if k not in ignore}
    actual_keys = {k for k in actual if k not in ignore}
    missing = sorted(expected_keys - actual_keys)
    extra = sorted(actual_keys - expected_keys)
    assert not missing and not extra, f"missing from CIM: {missing}; unexpected in CIM: {extra}"
    ids_by_node: dict[int, int] = {}
    for key in sorted(expected_keys):
        path, node = tree.nodes[key]
        _, file_id, is_dir = actual[key]
        assert is_dir == node.is_dir, f"{path}: is_dir {is_dir}, expected {node.is_dir}"
        if key in ignore_content:
            continue
        stat = image.stat(file_id)
        assert stat.attributes == expected_attributes(node), (
            f"{path}: attributes {stat.attributes:#x}, expected {expected_attributes(node):#x}"
        )
        times = node.meta.times
        assert (
            stat.creation_time,
            stat.last_write_time,
            stat.change_time,
            stat.last_access_time,
        ) == (times.creation, times.last_write, times.change, times.last_access), (
            f"{path}: times differ"
        )
        assert stat.security_descriptor == node.meta.security_descriptor, f"{path}: SD differs"
        eas = decode_ea_buffer(stat.extended_attributes) if stat.extended_attributes else []
        assert [(e.name, e.value) for e in eas] == [(e.name, e.value) for e in node.meta.eas], (
            f"{path}: EAs differ"
        )
        if node.kind == "symlink":
            assert node.target is not None
            assert stat.reparse_buffer == encode_reparse_point(node.target, node.mount_point), (
                f"{path}: reparse buffer differs"
            )
        else:
            assert stat.reparse_buffer is None, f"{path}: unexpected reparse point"
        if node.kind == "file":
            assert image.read(file_id) == node.data, f"{path}: data differs"
            streams = {s.name: image.read(file_id, s.name) for s in stat.streams}
            assert streams == node.streams, f"{path}: alternate streams differ"
        previous = ids_by_node.setdefault(id(node), file_id)
        assert previous == file_id, f"{path}: should be a hard link of FileID {previous}"
    # Different model nodes must be different files.
    assert len(set(ids_by_node.values())) == len(ids_by_node), "two files share a FileID"


def cim_listing(image: CimImage) -> dict[str, int]:
    """Folded path -> FileID of every entry below the root."""
    out = {}
    for _top, dirs, files in image.walk("\\"):
        for entry in [*dirs, *files]:
            out[fold(entry.path.lstrip("\\"))] = entry.file_id
    return out


def assert_same_cims(
    a: CimImage,
    b: CimImage,
    *,
    ignore: set[str] = frozenset(),  # type: ignore[assignment]
    ignore_content: set[str] = frozenset(),  # type: ignore[assignment]
) -> None:
    """Two images hold the same tree: names, metadata, data, streams and hard-link structure."""
    left, right = cim_listing(a), cim_listing(b)
    keys = set(left) - ignore
    assert keys == set(right) - ignore, (
        f"only in first: {sorted(keys - set(right))}; only in second: "
        f"{sorted(set(right) - ignore - keys)}"
    )
    pairs: dict[int, int] = {}
    for key in sorted(keys):
        sa, sb = a.stat(left[key]), b.stat(right[key])
        assert sa.is_dir == sb.is_dir, key
        if key in ignore_content:
            continue
        fields = (
            "attributes",
            "creation_time",
            "last_write_time",
            "change_time",
            "last_access_time",
            "security_descriptor",
            "extended_attributes",
            "reparse_buffer",
            "size",
        )
        for name in fields:
            assert getattr(sa, name) == getattr(sb, name), f"{key}: {name} differs"
        assert [(s.name, s.size) for s in sa.streams] == [(s.name, s.size) for s in sb.streams]
        if not sa.is_dir:
            assert a.read(left[key]) == b.read(right[key]), f"{key}: data differs"
            for s in sa.streams:
                assert a.read(left[key], s.name) == b.read(right[key], s.name)
            assert pairs.setdefault(left[key], right[key]) == right[key], (
                f"{key}: hard-link structure differs"
            )
    assert len(set(pairs.values())) == len(pairs), "hard-link structure differs"
