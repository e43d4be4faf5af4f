"""An in-memory model of an image's tree, how to write it, and how to compare an image with it.

Hard links are the same :class:`MNode` object under several names; names in a directory are
unique case-insensitively (through the generated upcase table), as in an image.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from hypothesis import strategies as st

from cimsnap.formats.cim import CimImage, CimWriter, FileMetadata
from cimsnap.formats.cim.format import (
    FILE_ATTRIBUTE_ARCHIVE,
    FILE_ATTRIBUTE_DIRECTORY,
    FILE_ATTRIBUTE_HIDDEN,
    FILE_ATTRIBUTE_READONLY,
    FILE_ATTRIBUTE_SPARSE_FILE,
    FILE_ATTRIBUTE_SYSTEM,
)
from cimsnap.formats.cim.metadata import (
    REPARSE_HEADER,
    ExtendedAttribute,
    encode_eas,
    symlink_reparse_buffer,
)
from cimsnap.formats.cim.names import Collation
from cimsnap.formats.upcase import upcase_table

COLLATION = Collation(upcase_table())


@dataclass(eq=False)
class MNode:
    is_dir: bool
    meta: FileMetadata
    data: bytes = b""
    sparse_size: int | None = None  # a file with no data written: reads as zeros
    streams: dict[str, bytes] = field(default_factory=dict)
    children: dict[str, MNode] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.sparse_size if self.sparse_size is not None else len(self.data)

    def content(self) -> bytes:
        return bytes(self.sparse_size) if self.sparse_size is not None else self.data

    def child(self, name: str) -> tuple[str, MNode] | None:
        key = COLLATION.key(name)
        for existing, node in self.children.items():
            if COLLATION.key(existing) == key:
                return existing, node
        return None


def new_root() -> MNode:
    return MNode(True, FileMetadata.directory())


def iter_tree(root: MNode, path: str = "") -> list[tuple[str, MNode]]:
    """(image path, node) for every name below ``root``, parents before children."""
    out = []
    for name, node in root.children.items():
        child = f"{path}\\{name}"
        out.append((child, node))
        if node.is_dir:
            out.extend(iter_tree(node, child))
    return out


def write_model(writer: CimWriter, root: MNode) -> None:
    """Add every node of the model (hard links as links, streams after their file)."""
    writer.add("\\", root.meta)
    for name, data in root.streams.items():
        writer.add_stream("\\", name, io.BytesIO(data))
    first: dict[int, str] = {}
    for path, node in iter_tree(root):
        if id(node) in first:
            writer.add_link(path, first[id(node)])
            continue
        first[id(node)] = path
        if node.is_dir:
            writer.add(path, node.meta)
        elif node.sparse_size is not None:
            writer.add(path, node.meta, size=node.sparse_size)
        else:
            writer.add(path, node.meta, io.BytesIO(node.data))
        for name, data in node.streams.items():
            writer.add_stream(path, name, io.BytesIO(data))


def assert_matches(image: CimImage, root: MNode) -> None:
    """The image reads exactly as the model: names, order, data, metadata, streams, links."""
    ids: dict[int, int] = {}

    def check(path: str, node: MNode) -> None:
        st = image.stat(path or "\\")
        assert ids.setdefault(id(node), st.file_id) == st.file_id, f"{path}: hard link identity"
        meta = node.meta
        assert st.attributes == meta.stored_attributes(), path
        assert (st.creation_time, st.last_write_time, st.change_time, st.last_access_time) == (
            meta.creation_time,
            meta.last_write_time,
            meta.change_time,
            meta.last_access_time,
        ), path
        assert st.security_descriptor == meta.security_descriptor, path
        assert st.extended_attributes == meta.extended_attributes, path
        assert st.reparse_buffer == meta.reparse_buffer, path
        assert {s.name: s.size for s in st.streams} == {
            k: len(v) for k, v in node.streams.items()
        }, path
        for name, data in node.streams.items():
            assert image.read(path or "\\", name) == data, f"{path}:{name}"
        if node.is_dir:
            assert st.is_dir, path
            expected = sorted(node.children, key=COLLATION.key)
            assert image.listdir(path or "\\") == expected, path
            for name, child in node.children.items():
                check(f"{path}\\{name}", child)
        else:
            assert not st.is_dir, path
            assert st.size == node.size, path
            if node.sparse_size is not None:  # may be huge: no data stored, reads as zeros
                assert st.sparse, path
                with image.open(path) as handle:
                    assert handle.pread(5000, 0) == bytes(min(5000, node.size))
                    assert handle.pread(5000, node.size - 100) == bytes(100)
            else:
                assert image.read(path) == node.data, path

    check("", root)
    assert len(set(ids.values())) == len(ids), "distinct files share a FileID"


# --- hypothesis strategies ------------------------------------------------------------------

# Name characters: ASCII, Latin/Greek/Cyrillic (case pairs), CJK, and non-BMP characters
# (surrogate pairs in UTF-16); never a separator, ':' or NUL.
NAME_CHARS = st.characters(
    codec="utf-8",
    exclude_characters="\\/:\0",
    exclude_categories=("Cs", "Cc"),
)
names = st.text(NAME_CHARS, min_size=1, max_size=24).filter(lambda n: n not in (".", ".."))
filetimes = st.integers(min_value=0, max_value=2**64 - 1)
attribute_sets = st.sets(
    st.sampled_from(
        [
            FILE_ATTRIBUTE_READONLY,
            FILE_ATTRIBUTE_HIDDEN,
            FILE_ATTRIBUTE_SYSTEM,
            FILE_ATTRIBUTE_ARCHIVE,
        ]
    )
).map(sum)
security_descriptors = st.one_of(
    st.none(),
    st.just(b"\x01\x00\x04\x80" + bytes(16)),  # hcsshim's minimal SD
    st.binary(min_size=20, max_size=160),
)
eas = st.one_of(
    st.just(b""),
    st.lists(
        st.builds(
            ExtendedAttribute,
            st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ$._0123456789", min_size=1, max_size=30).map(
                str.encode
            ),
            st.binary(max_size=60),
            st.sampled_from([0, 0x80]),
        ),
        min_size=1,
        max_size=3,
        unique_by=lambda ea: ea.name,
    ).map(encode_eas),
)


@st.composite
def reparse_buffers(draw: st.DrawFn) -> bytes | None:
    kind = draw(st.sampled_from(["none", "none", "symlink", "other"]))
    if kind == "none":
        return None
    if kind == "symlink":
        target = draw(st.text(NAME_CHARS, min_size=1, max_size=30))
        return symlink_reparse_buffer(target, relative=draw(st.booleans()))
    tag = draw(st.integers(min_value=0x80000001, max_value=0xFFFFFFFF))
    data = draw(st.binary(max_size=80))
    return REPARSE_HEADER.pack(tag, len(data), 0) + data


@st.composite
def metadata(draw: st.DrawFn, *, is_dir: bool) -> FileMetadata:
    attributes = draw(attribute_sets) | (FILE_ATTRIBUTE_DIRECTORY if is_dir else 0)
    return FileMetadata(
        attributes=attributes,
        creation_time=draw(filetimes),
        last_write_time=draw(filetimes),
        change_time=draw(filetimes),
        last_access_time=draw(filetimes),
        security_descriptor=draw(security_descriptors),
        extended_attributes=draw(eas),
        reparse_buffer=draw(reparse_buffers()),
    )


stream_maps = st.dictionaries(names, st.binary(max_size=3000), max_size=2, dict_class=dict).map(
    lambda d: _case_unique(d)
)


def _case_unique(mapping: dict[str, bytes]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    seen = set()
    for name, value in mapping.items():
        key = COLLATION.key(name)
        if key not in seen:
            seen.add(key)
            out[name] = value
    return out


@st.composite
def file_nodes(draw: st.DrawFn) -> MNode:
    meta = draw(metadata(is_dir=False))
    kind = draw(st.sampled_from(["empty", "small", "small", "medium", "sparse", "holes"]))
    node = MNode(False, meta, streams=draw(stream_maps))
    if kind == "small":
        node.data = draw(st.binary(min_size=1, max_size=1023))
    elif kind == "medium":
        node.data = draw(st.binary(min_size=1024, max_size=9000))
    elif kind == "sparse":
        meta.attributes |= FILE_ATTRIBUTE_SPARSE_FILE
        node.sparse_size = draw(st.integers(min_value=1, max_value=1 << 40))
    elif kind == "holes":  # data with zero pages in the middle
        meta.attributes |= FILE_ATTRIBUTE_SPARSE_FILE
        node.data = b"head" + bytes(3 * 4096 + draw(st.integers(0, 5000))) + b"tail"
    return node


@st.composite
def trees(draw: st.DrawFn, max_entries: int = 25) -> MNode:
    """A random tree: directories (incl. one deep chain), files, hard links, streams."""
    root = MNode(True, draw(metadata(is_dir=True)), streams=draw(stream_maps))
    dirs = [root]
    files: list[MNode] = []
    depth = draw(st.integers(min_value=0, max_value=40))
    chain = root
    for _ in range(depth):  # a deep path
        node = MNode(True, draw(metadata(is_dir=True)))
        if _attach(chain, draw(names), node):
            dirs.append(node)
            chain = node
    for _ in range(draw(st.integers(min_value=0, max_value=max_entries))):
        parent = draw(st.sampled_from(dirs))
        what = draw(st.sampled_from(["dir", "file", "file", "file", "link"]))
        if what == "dir":
            node = MNode(True, draw(metadata(is_dir=True)), streams=draw(stream_maps))
            if _attach(parent, draw(names), node):
                dirs.append(node)
        elif what == "link" and files:
            _attach(parent, draw(names), draw(st.sampled_from(files)))
        else:
            node = draw(file_nodes())
            if _attach(parent, draw(names), node):
                files.append(node)
    return root


def _attach(parent: MNode, name: str, node: MNode) -> bool:
    if parent.child(name) is not None:
        return False
    parent.children[name] = node
    return True
