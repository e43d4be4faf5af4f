"""Write CimFS images with the Windows API's semantics: create, fork, add, link, delete, commit.

Mirrors ``CimCreateImage`` (new image, or a fork of an existing one: the parent stays intact and
the child's header lists the parent's region sets so its objects can point into them),
``CimCreateFile`` + ``CimWriteStream`` (:meth:`CimWriter.add`), ``CimCreateAlternateStream``
(:meth:`CimWriter.add_stream`), ``CimCreateHardLink`` (:meth:`CimWriter.add_link`),
``CimDeletePath`` (:meth:`CimWriter.delete`) and ``CimCommitImage`` (:meth:`CimWriter.commit`).
Reference sections: all of "Objects", "Region files", "Object-ID files".

Layout choices (public sources are silent; see the package docstring for the list):

* Every image owns three regions: 0 metadata, 1 data, 2 small data (as the Windows samples).
* Streams shorter than :data:`SMALL_DATA_LIMIT` go to the small-data region (8-aligned), longer
  ones to the data region (4 KiB-aligned); all-zero 4 KiB blocks are not written, so region files
  stay sparse on the host.
* Every object goes through the object-ID index (digest rule of the reference), including the
  parents' indices, so identical objects are stored once across a fork chain.  A hit in a parent
  region is re-verified against the parent's bytes before it is used.
* A fork hides a parent's entry by writing its own link table for the directory concerned; there
  are no tombstones.  FileIDs of the parent are kept, so unchanged directories and file tables of
  the parent are reused in place; a parent file that is deleted keeps its (now unreachable) slot.
* Files are written under temporary names and renamed at commit; the ``.cim`` is renamed last,
  so a crash or :meth:`CimWriter.abort` never leaves a half-written image behind.

Performance: data objects go through :mod:`.datapipe` (a shared ring; SHA-512 and region
writes in a helper process once an image has some size), metadata and small-data objects are
written in batches, and :meth:`CimWriter.add` is kept lean (it runs once per file).  Objects
are placed in call order whatever runs where, so output is identical in every configuration
(``tests/formats/cim/test_golden.py`` pins it).
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import os
import secrets
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cimsnap.errors import AlreadyExistsError, FailedPreconditionError, NotFoundError, UsageError
from cimsnap.formats.cim.datahelper import DIGEST_PREFIX, pwrite_all, write_nonzero_at
from cimsnap.formats.cim.datapipe import DataPipe, Job, Slot
from cimsnap.formats.cim.errors import CimFormatError
from cimsnap.formats.cim.format import (
    COUNTED_LENGTH,
    DIGEST_LENGTH,
    FILE_ATTRIBUTE_DIRECTORY,
    FILE_ATTRIBUTE_SPARSE_FILE,
    FILE_ID,
    FILE_TABLE_DIRECTORY_ENTRY,
    FILES_PER_TABLE,
    FILESYSTEM_HEADER_RESERVED,
    FILESYSTEM_OBJECT,
    FLAG_SPARSE,
    IMAGE_HEADER_RESERVED3,
    IMAGE_HEADER_RESERVED_BYTE,
    MAX_REGIONS,
    MAX_STREAM_LENGTH,
    METADATA_ALIGNMENT,
    PAGE_SIZE,
    WRITER_FORMAT_VERSION,
    CommonHeader,
    FileEntry,
    FilesystemHeader,
    FileType,
    RegionHeader,
    RegionSet,
    RegionType,
    Stream,
    StreamType,
    entry_size_for_version,
    flags_from_attributes,
    pack_link_table,
    region_offset,
    split_region_offset,
)
from cimsnap.formats.cim.metadata import FileMetadata, reparse_tag
from cimsnap.formats.cim.names import (
    Collation,
    check_name,
    check_path,
    encode_name,
    split_leaf,
    split_path,
)
from cimsnap.formats.cim.objectid import (
    ObjectId,
    digest_from_hash,
    object_digest,
    pack_objectid_file,
    read_objectid_file,
)
from cimsnap.formats.cim.reader import CimImage, find_image_file, read_image_header

# Streams shorter than this go to the small-data region.  A guess: in the Windows samples the
# largest small-data object is 890 bytes and the smallest data-region object 1046 bytes.
SMALL_DATA_LIMIT = 1024
# Region types of an image's own regions, by index within its region set (as in the samples).
OWN_REGION_TYPES = (RegionType.METADATA, RegionType.DATA, RegionType.SMALL_DATA)
# RegionHeader.index as Windows writes it: the samples carry 0 in every region file (while
# their object-ID files carry the real index), so the writer does the same.
REGION_HEADER_INDEX = 0
# ParentFileId of the root directory (version >= 2; Windows' value is not public).
ROOT_PARENT_FILE_ID = 0
COPY_CHUNK = 1 << 20  # longest data object read whole; longer ones are streamed in chunks
# Objects read into the ring are hashed in batches of about this many bytes (and placed and
# written in batches): fewer, larger commands to the data helper.
HASH_BATCH = 512 << 10
POLL_BYTES = 256 << 10
# Metadata and small-data objects are collected in memory and written in pieces this big.
REGION_WRITE_BATCH = 256 << 10
# A durable commit fsyncs the data region; a GiB of dirty pages takes most of a second to write
# then.  So the data region's pages are handed to the kernel's writeback as the image grows
# (sync_file_range(SYNC_FILE_RANGE_WRITE): start writing, don't wait, keep the page cache),
# every WRITEBACK_STEP bytes, lagging WRITEBACK_LAG bytes behind the placement end so the data
# pipe has written them.  Only a hint: pages not yet written are simply left for the fsync.
WRITEBACK_STEP = 32 << 20
WRITEBACK_LAG = 32 << 20
_PADDING = bytes(METADATA_ALIGNMENT)
_DETERMINISTIC_NAMESPACE = uuid.UUID("5f1e0c1a-7d0b-4c52-9c55-63696d736e61")
_DATA_REGION = OWN_REGION_TYPES.index(RegionType.DATA)
if DIGEST_PREFIX != DIGEST_LENGTH:  # the data helper computes object-ID digests too
    raise ImportError("the data helper's digest length differs from the object-ID digest's")
# Kinds of metadata object in the writer's cache of stored SDs, EAs and reparse buffers.
_SD_OBJECT, _EA_OBJECT, _REPARSE_OBJECT = 0, 1, 2
_METADATA_CACHE_ENTRIES = 4096
_FLAGS: dict[int, int] = {}  # FILE_ATTRIBUTE_* -> file entry flags, as met


def default_collation() -> Collation:
    """The upcase table a new image gets (the generated NTFS-style table)."""
    from cimsnap.formats.upcase import upcase_table_bytes  # shared with the NTFS formatter

    return Collation.from_bytes(upcase_table_bytes())


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's sync_file_range (Linux; the os module has no wrapper), or None."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start (not wait for) writing a file range's dirty pages; a no-op where unsupported."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # (failure: a missed hint)


def _align(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


class _Region:
    """One region file being written (under a temporary name) and its object-ID entries.

    Metadata and small-data regions collect their (8-aligned) objects in memory and write
    them in batches; the data region is written by the :class:`DataPipe` workers."""

    def __init__(
        self, tmp_path: Path, set_index: int, global_index: int, region_type: RegionType
    ) -> None:
        self.tmp_path = tmp_path
        self.set_index = set_index
        self.global_index = global_index
        self.region_type = region_type
        self.alignment = PAGE_SIZE if region_type == RegionType.DATA else METADATA_ALIGNMENT
        self.fd = os.open(tmp_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        common = CommonHeader(RegionHeader.SIZE, FileType.REGION, *WRITER_FORMAT_VERSION)
        header = RegionHeader(common, REGION_HEADER_INDEX, region_type).pack()
        os.pwrite(self.fd, header, 0)
        self.end = len(header)
        self.objects: list[ObjectId] = []
        self._batch = bytearray()  # bytes from file offset self._batch_at on, not written yet
        self._batch_at = self.end
        self._writeback_from = 0  # where the next early writeback starts
        self._writeback: threading.Thread | None = None

    def start_writeback(self) -> None:
        """Hand the written part of the file to the kernel's writeback (see WRITEBACK_STEP).

        In a thread of its own: sync_file_range waits while the device queue is full (tens of
        milliseconds), and ctypes calls run without the interpreter lock.  One at a time; a
        range skipped while one runs goes with the next.
        """
        upto = self.end - WRITEBACK_LAG
        if upto - self._writeback_from < WRITEBACK_STEP:
            return
        if self._writeback is not None and self._writeback.is_alive():
            return
        offset, length = self._writeback_from, upto - self._writeback_from
        self._writeback = threading.Thread(
            target=start_writeback, args=(self.fd, offset, length), name="cim-writeback"
        )
        self._writeback.start()
        self._writeback_from = upto

    def _end_writeback(self) -> None:
        if self._writeback is not None:
            self._writeback.join()
            self._writeback = None

    def next_offset(self) -> int:
        return _align(self.end, self.alignment)

    def append(self, data: bytes, digest: bytes) -> int:
        """Add an object of a metadata or small-data region; returns its byte offset."""
        end = self.end
        pad = -end % METADATA_ALIGNMENT
        offset = end + pad
        batch = self._batch
        if pad:
            batch += _PADDING[:pad]
        batch += data
        self.end = offset + len(data)
        self.objects.append(ObjectId(len(data), digest, offset))
        if len(batch) >= REGION_WRITE_BATCH:
            self.flush()
        return offset

    def flush(self) -> None:
        if self._batch:
            pwrite_all(self.fd, self._batch, self._batch_at)
            self._batch_at += len(self._batch)
            self._batch.clear()

    def finish(self, durable: bool) -> None:
        self._end_writeback()
        self.flush()
        final = _align(self.end, PAGE_SIZE) if self.region_type == RegionType.DATA else self.end
        os.ftruncate(self.fd, final)
        if durable:
            os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1

    def close(self) -> None:
        self._end_writeback()  # (its descriptor must stay open until it is done)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass(eq=False, slots=True)
class _Node:
    """A file or directory of the image being written."""

    file_id: int
    entry: FileEntry
    is_dir: bool
    own: bool  # created by this writer (else inherited from the parent image)
    links: int = 0  # directory entries naming an own node; it is freed at 0
    children: dict[bytes, tuple[str, int]] | None = None  # None: parent's, not loaded yet
    children_dirty: bool = False
    streams: dict[bytes, tuple[str, Stream]] | None = None  # None: unchanged from the parent


@dataclass(eq=False, slots=True)
class _PendingObject:
    """A data-region object read into a ring slot, being hashed, not yet placed."""

    slot: Slot
    length: int
    provisional: Stream  # the placeholder the file got; replaced once the object is placed
    batch: Job | None = None  # the hash job of its batch (None: not asked yet)
    index: int = 0  # its place in that batch
    target: tuple[_Node, bytes | None] | None = None  # (file, stream key or None: default)
    final: Stream | None = None  # once placed


class CimWriter:
    """Builds one image.  Create with :meth:`create`; finish with :meth:`commit` or :meth:`abort`.

    Used as a context manager it commits on a normal exit and aborts on an exception.
    """

    def __init__(
        self,
        image_path: Path,
        parent: CimImage | None,
        deterministic: bool,
        overwrite: bool,
        collation: Collation | None,
        durable: bool = True,
    ) -> None:
        self.image_path = image_path
        self.durable = durable
        self.directory = image_path.parent
        self.deterministic = deterministic
        self.overwrite = overwrite
        self._parent = parent
        self._entry_size = entry_size_for_version(WRITER_FORMAT_VERSION[0])
        self._done = False
        self._regions: list[_Region] = []
        self._dedup: dict[tuple[int, int, bytes], int] = {}
        self._verified_parent_objects: set[int] = set()
        self._metadata_objects: dict[tuple[int, bytes], int] = {}
        self._nodes: dict[int, _Node] = {}
        self._free_ids: list[int] = []
        self._dirty_tables: set[int] = set()
        self._directories: dict[str, _Node] = {}  # resolved parent paths, until an unlink
        self._tmp_tag = f".{image_path.name}.{secrets.token_hex(6)}"
        self._temp_files: list[Path] = []
        # Data objects wait in ring slots while they are hashed; they are placed (dedup
        # decision, offset, write) in call order, so the output is a sequential writer's.
        self._pipe: DataPipe | None = None
        self._queue: deque[_PendingObject] = deque()
        self._last_pending: _PendingObject | None = None
        self._unhashed: list[_PendingObject] = []  # queued, not yet in a hash batch
        self._unhashed_bytes = 0
        self._unpolled_bytes = 0  # read since the helper's replies were last taken in
        self._guid = uuid.uuid4()
        if parent is not None:
            self.collation = parent.collation
            self._parent_sets: tuple[RegionSet, ...] = (
                *parent.parent_region_sets,
                parent.region_set,
            )
            self._parent_file_count = parent.file_count
            self._next_id = parent.file_count + 1
            self._root_id = parent.root_id
        else:
            self.collation = collation if collation is not None else default_collation()
            self._parent_sets = ()
            self._parent_file_count = 0
            self._next_id = 1
            self._root_id = 0
        first_own = sum(rs.count for rs in self._parent_sets)
        if first_own + len(OWN_REGION_TYPES) > MAX_REGIONS:
            raise UsageError("fork chain too long: more than 65536 regions", path=image_path)
        try:
            for i, region_type in enumerate(OWN_REGION_TYPES):
                tmp = self._temp(f"region_{i}")
                self._regions.append(_Region(tmp, i, first_own + i, region_type))
            if parent is not None:
                self._load_parent_object_ids(parent)
            else:
                root = FileMetadata.directory()
                self._root_id = self._allocate_id()
                self._nodes[self._root_id] = _Node(
                    self._root_id,
                    self._entry_from(
                        root, ROOT_PARENT_FILE_ID, Stream(0, 0, StreamType.LINK_TABLE)
                    ),
                    is_dir=True,
                    own=True,
                    links=1,
                    children={},
                    children_dirty=True,
                    streams={},
                )
        except BaseException:
            self._cleanup()
            raise

    # --- creation ---------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        image_path: str | os.PathLike[str],
        parent: str | os.PathLike[str] | None = None,
        *,
        deterministic: bool = False,
        overwrite: bool = False,
        collation: Collation | None = None,
        durable: bool = True,
    ) -> CimWriter:
        """Start a new image at ``image_path`` (a ``.cim`` path), or a fork of ``parent``.

        A fork must live in its parent's directory (the child refers to the parent's region
        files by name).  ``deterministic`` makes identical input give byte-identical files
        (the region-set GUID is derived from the content and the image name instead of random).
        ``durable=False`` skips the fsyncs at commit (the rename order still guarantees that a
        crash leaves either the old state or the complete image, minus what the page cache
        lost); for bulk jobs that sync the filesystem themselves.
        """
        image_path = Path(image_path)
        if not image_path.parent.is_dir():
            raise NotFoundError("directory does not exist", path=image_path.parent)
        if image_path.exists() and not overwrite:
            raise AlreadyExistsError("image already exists", path=image_path)
        parent_image = None
        if parent is not None:
            parent_path = Path(parent)
            if parent_path.resolve().parent != image_path.resolve().parent:
                raise UsageError(
                    f"a fork must be created in its parent's directory ({parent_path.parent})",
                    path=image_path,
                )
            parent_image = CimImage.open(parent_path)
        try:
            return cls(image_path, parent_image, deterministic, overwrite, collation, durable)
        except BaseException:
            if parent_image is not None:
                parent_image.close()
            raise

    def __enter__(self) -> CimWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._done:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    # --- the API ----------------------------------------------------------------------------

    def add(
        self,
        path: str,
        meta: FileMetadata,
        data: BinaryIO | None = None,
        *,
        size: int | None = None,
    ) -> int:
        """Create (or replace) the file or directory ``path``; returns its FileID.

        A directory is made when ``meta`` has FILE_ATTRIBUTE_DIRECTORY; re-adding an existing
        directory updates its metadata and keeps its contents.  For a file, ``data`` is read to
        its end (or exactly ``size`` bytes when ``size`` is given) in constant memory; with no
        ``data``, the file has ``size`` bytes that read as zeros (a sparse stream).  The parent
        directory must exist.  Replacing a path unlinks what was there (other hard links to
        it keep the old file).
        """
        # The hot path of image creation (once per file of a layer): kept lean on purpose.
        if self._done:
            self._check_open()
        meta.validate()
        parent_path, name = split_leaf(path)
        is_dir = bool(meta.attributes & FILE_ATTRIBUTE_DIRECTORY)
        if not name:
            if not is_dir:
                raise UsageError("the root must be a directory", path=self.image_path, inner=path)
            self._update_directory(self._node(self._root_id), meta)
            return self._root_id
        parent = self._directories.get(parent_path)  # files arrive directory by directory
        if parent is None:
            parent = self._resolve_directory(parent_path, path)
        key = self.collation.key(name)
        children = parent.children
        if children is None:
            children = self._children(parent)
        existing = children.get(key)
        if existing is not None:
            old = self._node(existing[1])
            if old.is_dir and is_dir:
                self._update_directory(old, meta)
                return old.file_id
            if old.is_dir and self._children(old):
                raise FailedPreconditionError(
                    "directory not empty", path=self.image_path, inner=path
                )
        if is_dir:
            if data is not None or size:
                raise UsageError("a directory has no data", path=self.image_path, inner=path)
            stream = Stream(0, 0, StreamType.LINK_TABLE)
        else:
            stream = self._write_stream(data, size, meta.attributes, path)
        if existing is not None:
            self._unlink(parent, key)
        file_id = self._allocate_id()
        # streams None: none (a new node has no stream table to inherit).
        node = _Node(
            file_id,
            self._entry_from(meta, parent.file_id, stream),
            is_dir,
            True,
            1,
            {} if is_dir else None,
            is_dir,
            None,
        )
        self._nodes[file_id] = node
        if self._last_pending is not None:
            self._claim_pending(stream, node, None)
        children[key] = (name, file_id)
        if not parent.children_dirty:
            parent.children_dirty = True
            self._touch(parent)
        return file_id

    def add_stream(
        self, path: str, name: str, data: BinaryIO | None = None, *, size: int | None = None
    ) -> None:
        """Add (or replace) the alternate data stream ``name`` of the existing file ``path``."""
        self._check_open()
        check_name(name, what="stream name")
        node = self._resolve(path)
        streams = self._streams(node)
        attributes = FILE_ATTRIBUTE_SPARSE_FILE if node.entry.flags & FLAG_SPARSE else 0
        stream = self._write_stream(data, size, attributes, f"{path}:{name}")
        key = self.collation.key(name)
        old = streams.get(key)
        streams[key] = (old[0] if old else name, stream)
        self._claim_pending(stream, node, key)
        self._touch(node)

    def add_link(self, new: str, existing: str) -> None:
        """Make ``new`` another name of the (non-directory) file ``existing``."""
        self._check_open()
        target = self._resolve(existing)
        if target.is_dir:
            raise UsageError("cannot hard-link a directory", path=self.image_path, inner=existing)
        parts = check_path(new)
        if not parts:
            raise UsageError("cannot link over the root", path=self.image_path, inner=new)
        parent = self._resolve_directory("\\".join(parts[:-1]), new)
        key = self.collation.key(parts[-1])
        current = self._children(parent).get(key)
        if current is not None:
            if current[1] == target.file_id:
                return
            old = self._node(current[1])
            if old.is_dir and self._children(old):
                raise FailedPreconditionError(
                    "directory not empty", path=self.image_path, inner=new
                )
            self._unlink(parent, key)
        if target.own:
            target.links += 1
        self._link(parent, key, parts[-1], target.file_id)

    def delete(self, path: str) -> None:
        """Remove ``path`` (a directory with everything under it).  In a fork, this hides what
        the parent has at ``path``: the fork's own link table of the directory omits it."""
        self._check_open()
        parts = check_path(path)
        if not parts:
            raise UsageError("cannot delete the root", path=self.image_path, inner=path)
        parent = self._resolve_directory("\\".join(parts[:-1]), path)
        key = self.collation.key(parts[-1])
        if key not in self._children(parent):
            raise NotFoundError("no such file or directory", path=self.image_path, inner=path)
        self._unlink(parent, key)

    def exists(self, path: str) -> bool:
        try:
            self._resolve(path)
        except NotFoundError:
            return False
        return True

    def commit(self) -> Path:
        """Write the metadata, object-ID files and the ``.cim``; returns the image path."""
        self._check_open()
        try:
            self._place_all()
            upcase = self._put(RegionType.METADATA, self.collation.to_bytes())
            self._write_directories()
            self._write_stream_tables()
            ftd = self._write_file_tables()
            ftd_offset = self._put(RegionType.METADATA, b"".join(ftd))
            fs_offset = self._put(
                RegionType.METADATA,
                FILESYSTEM_OBJECT.pack(upcase, ftd_offset, len(ftd), self._root_id),
            )
            self._publish(fs_offset)
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._stop_pool()
        self._close_parent()
        return self.image_path

    def abort(self) -> None:
        """Remove everything this writer wrote; the directory is as it was before."""
        if self._done:
            return
        self._done = True
        self._cleanup()
        self._close_parent()

    # --- tree -------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._done:
            raise UsageError(
                "the image writer is already committed or aborted", path=self.image_path
            )

    def _node(self, file_id: int) -> _Node:
        node = self._nodes.get(file_id)
        if node is None:
            if self._parent is None or not 1 <= file_id <= self._parent_file_count:
                raise CimFormatError(f"FileID {file_id} does not exist", path=self.image_path)
            entry = self._parent.entry(file_id)
            node = _Node(file_id, entry, entry.is_directory, own=False)
            self._nodes[file_id] = node
        return node

    def _children(self, node: _Node) -> dict[bytes, tuple[str, int]]:
        if node.children is None:
            assert self._parent is not None and node.is_dir
            node.children = {
                self.collation.key(entry.name): (entry.name, entry.file_id)
                for entry in self._parent.scandir(node.file_id)
            }
        return node.children

    def _streams(self, node: _Node) -> dict[bytes, tuple[str, Stream]]:
        if node.streams is None:
            node.streams = {}
            if self._parent is not None and node.entry.stream_table_offset:
                for name, stream in self._parent._stream_table(
                    node.entry, f"FileID {node.file_id}"
                ):
                    node.streams[self.collation.key(name)] = (name, stream)
        return node.streams

    def _resolve(self, path: str) -> _Node:
        node = self._node(self._root_id)
        for part in split_path(path):
            if not node.is_dir:
                raise NotFoundError("not a directory", path=self.image_path, inner=path)
            child = self._children(node).get(self.collation.key(part))
            if child is None:
                raise NotFoundError("no such file or directory", path=self.image_path, inner=path)
            node = self._node(child[1])
        return node

    def _resolve_directory(self, path: str, shown: str) -> _Node:
        """The directory ``path`` (cached by its spelling until something is unlinked)."""
        node = self._directories.get(path)  # files arrive directory by directory
        if node is None:
            node = self._resolve(path)
            if not node.is_dir:
                raise NotFoundError("parent is not a directory", path=self.image_path, inner=shown)
            if len(self._directories) > 1024:
                self._directories.clear()
            self._directories[path] = node
        return node

    def _touch(self, node: _Node) -> None:
        self._dirty_tables.add((node.file_id - 1) // FILES_PER_TABLE)

    def _link(self, parent: _Node, key: bytes, name: str, file_id: int) -> None:
        self._children(parent)[key] = (name, file_id)
        parent.children_dirty = True
        self._touch(parent)

    def _unlink(self, parent: _Node, key: bytes) -> None:
        self._directories.clear()  # a path may lead elsewhere (or nowhere) now
        _, file_id = self._children(parent).pop(key)
        parent.children_dirty = True
        self._touch(parent)
        self._release(self._node(file_id))

    def _release(self, node: _Node, seen: set[int] | None = None) -> None:
        """One name of ``node`` is gone.  An own node with no names left is freed (its FileID
        is reused); an inherited node keeps its slot.  Either way, what a released directory
        contains loses a name too (directories have exactly one)."""
        if node.own:
            node.links -= 1
            if node.links > 0:
                return
        seen = set() if seen is None else seen
        if node.is_dir and node.children is not None and node.file_id not in seen:
            seen.add(node.file_id)  # a malformed parent could contain a directory cycle
            for _, child_id in list(node.children.values()):
                self._release(self._node(child_id), seen)
        if node.own:
            del self._nodes[node.file_id]
            heapq.heappush(self._free_ids, node.file_id)
            self._touch(node)

    def _allocate_id(self) -> int:
        if self._free_ids:
            file_id = heapq.heappop(self._free_ids)
        else:
            file_id = self._next_id
            self._next_id += 1
        self._dirty_tables.add((file_id - 1) // FILES_PER_TABLE)
        return file_id

    def _update_directory(self, node: _Node, meta: FileMetadata) -> None:
        parent_id = node.entry.parent_file_id
        node.entry = self._entry_from(meta, parent_id, node.entry.default_stream, node.entry)
        self._touch(node)

    def _entry_from(
        self,
        meta: FileMetadata,
        parent_id: int,
        stream: Stream,
        previous: FileEntry | None = None,
    ) -> FileEntry:
        sd = ea = reparse = 0
        tag = 0
        security_descriptor = meta.security_descriptor
        if security_descriptor is not None:
            sd = self._put_metadata(_SD_OBJECT, security_descriptor)
        eas = meta.extended_attributes
        if eas:
            ea = self._put_metadata(_EA_OBJECT, eas)
        if meta.reparse_buffer is not None:
            tag = reparse_tag(meta.reparse_buffer)
            reparse = self._put_metadata(_REPARSE_OBJECT, meta.reparse_buffer)
        attributes = meta.attributes
        flags = _FLAGS.get(attributes)
        if flags is None:
            flags = flags_from_attributes(attributes)
            if len(_FLAGS) < 4096:
                _FLAGS[attributes] = flags
        return FileEntry(  # positional: this runs once per file (field order of FileEntry)
            flags,
            len(eas),
            tag,
            meta.creation_time,
            meta.last_write_time,
            meta.change_time,
            meta.last_access_time,
            stream,
            sd,
            ea,
            reparse,
            previous.stream_table_offset if previous else 0,
            parent_id,
            0,  # base_region_index
        )

    def _put_metadata(self, kind: int, value: bytes) -> int:
        """Store an SD, EA chain or reparse buffer (:meth:`_put` with a cache: layers
        repeat a handful of security descriptors thousands of times).  A cached answer is
        what :meth:`_put` would give again: an object once stored or verified stays usable."""
        cache = self._metadata_objects
        found = cache.get((kind, value))
        if found is None:
            payload = value if kind == _EA_OBJECT else COUNTED_LENGTH.pack(len(value)) + value
            found = self._put(RegionType.METADATA, payload)
            if len(cache) >= _METADATA_CACHE_ENTRIES:
                cache.clear()
            cache[(kind, value)] = found
        return found

    # --- objects ----------------------------------------------------------------------------

    def _put(self, region_type: RegionType, data: bytes) -> int:
        """Store an object once; returns its RegionOffset (possibly in a parent's region)."""
        digest = object_digest(data)
        key = (int(region_type), len(data), digest)
        found = self._dedup.get(key)
        if found is not None and self._usable(found, len(data), digest):
            return found
        region = self._regions[OWN_REGION_TYPES.index(region_type)]
        offset = region_offset(region.global_index, region.append(data, digest))
        self._dedup[key] = offset
        return offset

    def _usable(self, offset_value: int, length: int, digest: bytes) -> bool:
        """True unless a parent's object-ID entry turns out not to match the parent's bytes."""
        index, _ = split_region_offset(offset_value)
        if self._parent is None or index >= self._regions[0].global_index:
            return True
        if offset_value in self._verified_parent_objects:
            return True
        hasher = hashlib.sha512()
        head = b""
        done = 0
        try:
            while done < length:
                chunk = self._parent._pread(offset_value, done, min(COPY_CHUNK, length - done), "")
                if not done:
                    head = chunk[:32]
                hasher.update(chunk)
                done += len(chunk)
        except CimFormatError:
            return False
        if digest_from_hash(length, hasher.digest(), head) != digest:
            return False
        self._verified_parent_objects.add(offset_value)
        return True

    def _load_parent_object_ids(self, parent: CimImage) -> None:
        """Feed every parent region's object-ID table into the dedup index (missing or
        malformed tables only cost deduplication, never correctness: hits are verified)."""
        first = 0
        for region_set in self._parent_sets:
            for i in range(region_set.count):
                path = find_image_file(self.directory, region_set.objectid_name(i))
                global_index = first + i
                if path is None:
                    continue
                try:
                    _, entries = read_objectid_file(path)
                except (CimFormatError, OSError):
                    continue
                region_type = parent.region_type(global_index)
                for entry in entries:
                    key = (region_type, entry.length, entry.digest)
                    if entry.offset and key not in self._dedup:
                        try:
                            self._dedup[key] = region_offset(global_index, entry.offset)
                        except ValueError:
                            continue
            first += region_set.count

    def _write_stream(
        self, data: BinaryIO | None, size: int | None, attributes: int, shown: str
    ) -> Stream:
        """Store one stream's bytes (constant memory); returns its descriptor."""
        if size is not None and not 0 <= size <= MAX_STREAM_LENGTH:
            raise UsageError(f"invalid stream size {size}", path=self.image_path, inner=shown)
        sparse_ok = bool(attributes & FILE_ATTRIBUTE_SPARSE_FILE)
        if data is None:
            length = size or 0
            return Stream(0, length, StreamType.DATA, sparse=length > 0)
        if size is not None and size >= SMALL_DATA_LIMIT:
            return self._write_large(data, size, b"", sparse_ok, shown)  # read into the ring
        want = SMALL_DATA_LIMIT if size is None else size
        head = _read_exactly(data, want)
        if len(head) < want and size is not None:
            raise UsageError(
                f"data ended after {len(head)} of {size} bytes", path=self.image_path, inner=shown
            )
        small = size < SMALL_DATA_LIMIT if size is not None else len(head) < SMALL_DATA_LIMIT
        if small:
            if not head:
                return Stream(0, 0)
            if sparse_ok and head.count(0) == len(head):
                return Stream(0, len(head), StreamType.DATA, sparse=True)
            return Stream(self._put(RegionType.SMALL_DATA, head), len(head))
        return self._write_large(data, size, head, sparse_ok, shown)

    def _write_large(
        self, data: BinaryIO, size: int | None, head: bytes, sparse_ok: bool, shown: str
    ) -> Stream:
        """A data-region stream.  One that fits in :data:`COPY_CHUNK` is read whole into a
        ring slot and hashed (with its neighbours, see :data:`HASH_BATCH`) while the caller
        goes on with the next files; it is placed (deduplicated or written) later, in call
        order (see :meth:`_place_ready`).  Longer streams are written chunk by chunk while they
        are hashed and truncated away again if the object turns out to be stored already."""
        queue = self._queue
        pipe = self._data_pipe()
        if queue and self._unpolled_bytes >= POLL_BYTES:
            # Place what was hashed meanwhile.  (Taking in the helper's replies costs a
            # system call: not once per small file.)
            self._unpolled_bytes = 0
            pipe.poll()
            job = queue[0].batch
            if job is not None and job.done:
                self._place_ready()
        limit = COPY_CHUNK if size is None else min(size, COPY_CHUNK)
        slot = self._alloc(limit)
        start = slot.start
        try:
            ring = pipe.view
            have = len(head)
            ring[start : start + have] = head
            got = have + _readinto(data, ring[start + have : start + limit])
            if size is not None and got < limit:
                raise UsageError(
                    f"data ended after {got} of {size} bytes", path=self.image_path, inner=shown
                )
            complete = got == size if size is not None else got < COPY_CHUNK
            if complete and sparse_ok and pipe.ring[start : start + got].count(0) == got:
                pipe.release(slot)
                return Stream(0, got, StreamType.DATA, sparse=True)
        except BaseException:
            pipe.release(slot)
            raise
        if not complete:
            return self._write_streamed(data, size, slot, got, sparse_ok, shown)
        pipe.shrink(slot, got)
        provisional = Stream(0, got)
        pending = _PendingObject(slot, got, provisional)
        queue.append(pending)
        self._last_pending = pending
        self._unhashed.append(pending)
        self._unhashed_bytes += got
        self._unpolled_bytes += got
        if self._unhashed_bytes >= HASH_BATCH:
            self._submit_hashes()
        return provisional

    def _submit_hashes(self) -> None:
        """Ask for the digests of the objects read since the last call, as one batch."""
        batch = self._unhashed
        if not batch:
            return
        job = self._data_pipe().hash_batch([(p.slot, p.length) for p in batch])
        for index, pending in enumerate(batch):
            pending.batch = job
            pending.index = index
        self._unhashed = []
        self._unhashed_bytes = 0

    def _data_pipe(self) -> DataPipe:
        if self._pipe is None:
            self._pipe = DataPipe(self._regions[_DATA_REGION].fd)
        return self._pipe

    def _alloc(self, n: int) -> Slot:
        """A ring slot of ``n`` bytes; places hashed objects (or waits) while the ring is full."""
        pipe = self._data_pipe()
        stuck = False
        while True:
            slot = pipe.try_alloc(n)
            if slot is not None:
                return slot
            self._submit_hashes()  # whatever is waiting for space must be able to finish
            pipe.poll()
            if self._place_ready():
                stuck = False
            elif pipe.outstanding:
                pipe.wait_one()
                stuck = False
            elif stuck:  # nothing placed, nothing in flight, still no room: a bug
                raise RuntimeError(f"no room for {n} bytes in the data ring")
            else:
                stuck = True  # (replies taken in above may have freed slots: try again)

    def _place_ready(self, *, everything: bool = False) -> int:
        """Place the queued objects whose digest is known (all of them, waiting, with
        ``everything``), oldest first, and have them written as one batch; returns how many."""
        if everything:
            self._submit_hashes()
        queue = self._queue
        pipe = self._pipe
        placed = 0
        writes: list[tuple[Slot, int, int]] = []
        try:
            while queue:
                pending = queue[0]
                job = pending.batch
                if job is None or (not job.done and not everything):
                    break
                assert pipe is not None
                digests = pipe.wait(job)
                queue.popleft()
                position = self._place(pending, digests[pending.index])
                if position is None:
                    pipe.release(pending.slot)
                else:
                    writes.append((pending.slot, pending.length, position))
                placed += 1
        finally:
            if writes:
                assert pipe is not None
                pipe.write_batch(writes)
                for slot, _, _ in writes:
                    pipe.release(slot)
                self._regions[_DATA_REGION].start_writeback()
        return placed

    def _place_all(self) -> None:
        """Place every queued object and wait until everything is written."""
        self._place_ready(everything=True)
        if self._pipe is not None:
            self._pipe.drain()

    def _place(self, pending: _PendingObject, digest: bytes) -> int | None:
        """Decide where a hashed object goes and point its file at it; returns the byte
        offset to write it at, or None when it is stored already."""
        length = pending.length
        key = (int(RegionType.DATA), length, digest)
        found = self._dedup.get(key)
        position = None
        if found is None or not self._usable(found, length, digest):
            region = self._regions[_DATA_REGION]
            position = region.next_offset()
            region.end = position + length
            region.objects.append(ObjectId(length, digest, position))
            found = region_offset(region.global_index, position)
            self._dedup[key] = found
        stream = Stream(found, length)
        pending.final = stream
        if pending.target is not None:
            self._point(pending, stream)
        return position

    def _point(self, pending: _PendingObject, stream: Stream) -> None:
        """Replace the placeholder of ``pending``'s file by ``stream`` (if it still has it)."""
        assert pending.target is not None
        node, stream_key = pending.target
        if stream_key is None:
            if node.entry.default_stream is pending.provisional:
                node.entry = node.entry._replace(default_stream=stream)
        elif node.streams is not None:
            current = node.streams.get(stream_key)
            if current is not None and current[1] is pending.provisional:
                node.streams[stream_key] = (current[0], stream)

    def _claim_pending(self, stream: Stream, node: _Node, stream_key: bytes | None) -> None:
        """Tell the queued object (if ``stream`` is its placeholder) whose stream it is."""
        pending = self._last_pending
        if pending is not None and pending.provisional is stream:
            self._last_pending = None
            pending.target = (node, stream_key)
            if pending.final is not None:  # placed already
                self._point(pending, pending.final)

    def _write_streamed(
        self,
        data: BinaryIO,
        size: int | None,
        first: Slot,
        first_length: int,
        sparse_ok: bool,
        shown: str,
    ) -> Stream:
        """A stream longer than :data:`COPY_CHUNK`: its chunks are hashed (in order) and
        written while the next chunk is read."""
        pipe = self._data_pipe()
        ring = pipe.view
        try:
            self._place_ready(everything=True)  # its offset follows every queued object
        except BaseException:
            pipe.release(first)
            raise
        region = self._regions[_DATA_REGION]
        start = region.next_offset()
        position = start
        remaining = size
        slot: Slot | None = first
        got = first_length
        chunks: deque[Job] = deque()  # chunk hashes not yet seen finished
        all_zero = True
        try:
            while True:
                assert slot is not None
                if got == 0:
                    pipe.release(slot)
                    slot = None
                    if remaining:
                        raise UsageError(
                            f"data ended after {position - start} of {size} bytes",
                            path=self.image_path,
                            inner=shown,
                        )
                    break
                job, wrote = pipe.stream_chunk(slot, got, position, size or 0)
                chunks.append(job)
                if wrote:
                    all_zero = False
                pipe.release(slot)
                slot = None
                while chunks and chunks[0].done:
                    pipe.wait(chunks.popleft())
                position += got
                if remaining is not None:
                    remaining -= got
                    if remaining == 0:
                        break
                want = COPY_CHUNK if remaining is None else min(COPY_CHUNK, remaining)
                slot = self._alloc(want)
                got = _readinto(data, ring[slot.start : slot.start + want])
            while chunks:
                pipe.wait(chunks.popleft())
            digest = pipe.wait(pipe.stream_end())
            length = position - start
            if length > MAX_STREAM_LENGTH:
                raise UsageError("stream longer than 2^48 bytes", path=self.image_path, inner=shown)
        except BaseException:
            if slot is not None:
                pipe.release(slot)
            with contextlib.suppress(Exception):  # nothing of it may land after the truncation
                for job in chunks:
                    pipe.settle(job)
                pipe.settle(pipe.stream_end())  # the next stream starts afresh
            os.ftruncate(region.fd, region.end)
            raise
        if sparse_ok and all_zero:
            os.ftruncate(region.fd, region.end)
            return Stream(0, length, StreamType.DATA, sparse=True)
        key = (int(RegionType.DATA), length, digest)
        found = self._dedup.get(key)
        if found is not None and self._usable(found, length, digest):
            os.ftruncate(region.fd, region.end)
            return Stream(found, length)
        region.end = start + length
        region.objects.append(ObjectId(length, digest, start))
        region.start_writeback()
        offset = region_offset(region.global_index, start)
        self._dedup[key] = offset
        return Stream(offset, length)

    # --- commit -----------------------------------------------------------------------------

    def _link_table(self, children: dict[bytes, tuple[str, int]]) -> bytes:
        return pack_link_table(
            [(encode_name(name), FILE_ID.pack(fid)) for _, (name, fid) in sorted(children.items())]
        )

    def _write_directories(self) -> None:
        """New link tables for changed directories, deepest first (like the Windows samples)."""
        order: list[_Node] = []
        stack = [self._node(self._root_id)]
        seen: set[int] = set()
        while stack:
            node = stack.pop()
            if node.file_id in seen:
                raise CimFormatError(
                    f"directory FileID {node.file_id} is reachable twice (directory cycle)",
                    path=self.image_path,
                )
            seen.add(node.file_id)
            order.append(node)
            if node.children is not None:
                stack.extend(
                    self._nodes[fid]
                    for _, fid in reversed(list(node.children.values()))
                    if fid in self._nodes and self._nodes[fid].is_dir
                )
        for node in reversed(order):
            if not node.children_dirty:
                continue
            assert node.children is not None
            table = self._link_table(node.children)
            offset = self._put(RegionType.METADATA, table)
            node.entry = node.entry._replace(
                default_stream=Stream(offset, len(table), StreamType.LINK_TABLE)
            )
            node.children_dirty = False
            self._touch(node)

    def _write_stream_tables(self) -> None:
        for node in self._nodes.values():
            if node.streams is None or (not node.streams and not node.entry.stream_table_offset):
                continue
            offset = 0
            if node.streams:
                table = pack_link_table(
                    [
                        (encode_name(name), stream.pack())
                        for _, (name, stream) in sorted(node.streams.items())
                    ]
                )
                offset = self._put(RegionType.METADATA, table)
            if offset != node.entry.stream_table_offset:
                node.entry = node.entry._replace(stream_table_offset=offset)
                self._touch(node)

    def _write_file_tables(self) -> list[bytes]:
        live_own = [fid for fid, node in self._nodes.items() if node.own]
        max_id = max([self._parent_file_count, *live_own])
        parent_tables = self._parent._tables if self._parent is not None else []
        ftd: list[bytes] = []
        for table in range(_align(max_id, FILES_PER_TABLE) // FILES_PER_TABLE):
            first = table * FILES_PER_TABLE + 1
            count = min(FILES_PER_TABLE, max_id - first + 1)
            if table not in self._dirty_tables and table < len(parent_tables):
                parent_offset, parent_count, parent_size = parent_tables[table]
                if parent_count == count:
                    ftd.append(
                        FILE_TABLE_DIRECTORY_ENTRY.pack(parent_offset, count, parent_size, 0)
                    )
                    continue
            raw = bytearray()
            for file_id in range(first, first + count):
                node = self._nodes.get(file_id)
                if node is not None:
                    raw += node.entry.pack(self._entry_size)
                elif file_id <= self._parent_file_count and self._parent_has_slot(file_id):
                    assert self._parent is not None  # inherited, untouched
                    raw += self._parent.entry(file_id).pack(self._entry_size)
                else:
                    raw += bytes(self._entry_size)  # a free slot, referenced by no directory
            offset = self._put(RegionType.METADATA, bytes(raw))
            ftd.append(FILE_TABLE_DIRECTORY_ENTRY.pack(offset, count, self._entry_size, 0))
        return ftd

    def _parent_has_slot(self, file_id: int) -> bool:
        assert self._parent is not None
        table, slot = divmod(file_id - 1, FILES_PER_TABLE)
        return slot < self._parent._tables[table][1]

    def _region_set_guid(self, fs_offset: int) -> uuid.UUID:
        if not self.deterministic:
            return self._guid
        hasher = hashlib.sha256(b"cimsnap deterministic region set\0")
        hasher.update(self.image_path.name.casefold().encode("utf-8", "surrogatepass"))
        for region_set in self._parent_sets:
            hasher.update(region_set.pack())
        hasher.update(fs_offset.to_bytes(8, "little"))
        for region in self._regions:
            hasher.update(region.end.to_bytes(8, "little"))
            for entry in region.objects:
                hasher.update(entry.pack())
        return uuid.uuid5(_DETERMINISTIC_NAMESPACE, hasher.hexdigest())

    def _publish(self, fs_offset: int) -> None:
        guid = self._region_set_guid(fs_offset)
        own = RegionSet(guid, len(self._regions))
        if any(rs.guid == guid for rs in self._parent_sets):
            raise UsageError("region set GUID collides with a parent's", path=self.image_path)
        objectid_tmps = []
        for region in self._regions:
            region.finish(self.durable)
            tmp = self._temp(f"objectid_{region.set_index}")
            _write_file(
                self.durable,
                tmp,
                pack_objectid_file(
                    region.set_index, region.region_type, region.objects, WRITER_FORMAT_VERSION
                ),
            )
            objectid_tmps.append(tmp)
        old_header = None
        if self.image_path.exists():
            with contextlib.suppress(CimFormatError, OSError):
                old_header = read_image_header(self.image_path)
        for region, tmp in zip(self._regions, objectid_tmps, strict=True):
            for source, name in (
                (region.tmp_path, own.region_name(region.set_index)),
                (tmp, own.objectid_name(region.set_index)),
            ):
                final = self.directory / name
                if not final.exists():  # (a deterministic rewrite may meet its own files)
                    self._temp_files.append(final)  # removed on failure until the .cim is in
                os.replace(source, final)
        common = CommonHeader(
            FilesystemHeader.SIZE,
            FileType.IMAGE,
            *WRITER_FORMAT_VERSION,
            reserved=IMAGE_HEADER_RESERVED_BYTE,
            reserved3=IMAGE_HEADER_RESERVED3,
        )
        header = FilesystemHeader(
            common, own, fs_offset, self._parent_sets, FILESYSTEM_HEADER_RESERVED
        )
        cim_tmp = self._temp("cim")
        _write_file(self.durable, cim_tmp, header.pack())
        os.replace(cim_tmp, self.image_path)
        self._temp_files.clear()  # committed: the files belong to the image now
        if self.durable:
            _fsync_directory(self.directory)
        if old_header is not None and old_header.regions.guid != guid:
            # The overwritten image's regions go unless another image still refers to them.
            from cimsnap.formats.cim.destroy import remove_region_set_if_unused

            remove_region_set_if_unused(self.directory, old_header.regions)

    def _cleanup(self) -> None:
        self._queue.clear()
        self._unhashed = []
        self._last_pending = None
        self._stop_pool()  # waits for the workers' tasks still running on the ring
        for region in self._regions:
            region.close()
        for leftover in self._temp_files:
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()

    def _temp(self, what: str) -> Path:
        """A temporary name in the image's directory, removed by :meth:`abort`."""
        path = self.directory / f"{self._tmp_tag}.{what}.tmp"
        self._temp_files.append(path)
        return path

    def _stop_pool(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None

    def _close_parent(self) -> None:
        if self._parent is not None:
            self._parent.close()
            self._parent = None


def _read_exactly(data: BinaryIO, n: int) -> bytes:
    parts = []
    got = 0
    while got < n:
        chunk = data.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _readinto(data: BinaryIO, view: memoryview) -> int:
    readinto: Callable[[memoryview], int | None] | None = getattr(data, "readinto", None)
    if readinto is not None:
        total = 0
        while total < len(view):
            got = readinto(view[total:])
            if not got:
                break
            total += got
        return total
    chunk = _read_exactly(data, len(view))
    view[: len(chunk)] = chunk
    return len(chunk)


def write_nonzero(fd: int, buffer: bytes | bytearray, length: int, position: int) -> bool:
    """Write ``buffer[:length]`` at ``position`` except its all-zero pages; False if all zero.

    Everything past the file's current end reads as zeros already, so zero pages are left as
    holes: files stay as sparse as the data.
    """
    return write_nonzero_at(fd, buffer, 0, length, position)


def _write_file(durable: bool, path: Path, payload: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
