"""CimFS ("composite image file system") images: read, write, fork, destroy, mount.

Implements ``../shared/reference/cimfs-format.md`` in pure Python.  Modules:

* :mod:`.format` - every on-disk structure (headers, objects, link tables) and the writer's
  format version (:data:`~.format.WRITER_FORMAT_VERSION`);
* :mod:`.reader` - :class:`CimImage` (versions 1, 2, 3; forks with parents' region sets);
* :mod:`.writer` - :class:`CimWriter` (create, fork, add, link, delete, commit, abort);
* :mod:`.objectid` / :mod:`.check` - object-ID (dedup) tables and their rule checker;
* :mod:`.destroy` - removing an image unless a known fork needs it;
* :mod:`.hostfs` - host directory trees <-> images (``cim create`` / ``cim extract``);
* :mod:`.mount` - read-only FUSE mount;  :mod:`.names`, :mod:`.metadata` - paths, collation,
  Windows metadata codecs;
* :mod:`.datapipe` / :mod:`.datahelper` - the writer's data path: a shared-memory ring and a
  helper process that hashes (SHA-512) and writes data objects while the writer goes on.

Reading::

    with CimImage.open("layer.cim") as image:        # + its parents' region files, same dir
        image.lookup("Windows\\\\System32")          # FileID; case-insensitive, '/' accepted
        image.listdir("\\\\")  /  image.scandir(path)   # names in image (upcase) order
        image.stat(path)                           # CimStat: attributes, 4 FILETIMEs, size,
                                                   #   SD, EAs, reparse buffer, streams
        image.open(path) / image.open("f:stream")  # CimFile: seekable, pread(n, offset)
        image.read(path, stream=None)              # whole stream as bytes
        image.walk(top)                            # like os.walk, detects directory cycles
        image.usage()                              # CimUsage; .total is GetCimUsage's value

Writing (the Windows CimFS API's semantics; paths as above)::

    with CimWriter.create(path, parent=None, deterministic=False, overwrite=False,
                          durable=True) as writer:   # commits on exit, aborts on exception
        writer.add("dir", FileMetadata.directory(security_descriptor=sd))
        writer.add("dir\\\\f", FileMetadata(attributes=..., last_write_time=...), data, size=n)
        writer.add("sparse", FileMetadata(attributes=FILE_ATTRIBUTE_SPARSE_FILE), size=1 << 40)
        writer.add_stream("dir\\\\f", "Zone.Identifier", data)
        writer.add_link("dir\\\\g", "dir\\\\f")
        writer.delete("dir\\\\old")                    # in a fork: hides the parent's entry
        writer.commit()  /  writer.abort()           # abort removes everything it wrote

``add`` streams ``data`` (any binary file object) in constant memory, reading it to EOF or
exactly ``size`` bytes; without ``data`` the file has ``size`` bytes of zeros stored as a sparse
stream.  Parents must exist.  Re-adding a file path replaces it (other hard links keep the old
file); re-adding a directory updates its metadata and keeps its contents; a non-empty directory
cannot be replaced by a file.  Once an image has more than 8 MiB of data, hashing and writing
it moves to a helper process (``python -I -S datahelper.py``, ended by commit or abort) that
shares an 8 MiB ring with the writer; the output is the same byte for byte wherever the work
runs.  ``destroy_image(path, force=False)`` removes an image and refuses
while a sibling ``.cim`` lists its region set as a parent.

Choices where public sources are silent (the README's compatibility notes):

* The writer emits version 2.0 (:data:`~.format.WRITER_FORMAT_VERSION`): the newest version
  whose complete structure is public (hcsshim e86001a), and within hcsshim's accepted range
  (MinSupportedVersion 2.0 .. CurrentVersion 3.0; its GetCimUsage/DestroyCim reject 1.0).
  The reader accepts 1.x, 2.x and 3.x alike (no public source shows a 3.0 structure change).
* Reserved header values are written as the Windows samples carry them (``.cim`` reserved
  byte 1, reserved3 7, filesystem-header reserved 7; region headers carry index 0 while
  object-ID files carry the real index); the ``.cim`` header length is the fixed 72 bytes.
* Every image owns three regions: 0 metadata, 1 data (4 KiB-aligned, file padded to 4 KiB,
  first object at 0x1000), 2 small data (8-aligned); streams under 1024 bytes
  (:data:`~.writer.SMALL_DATA_LIMIT`) are small data.  Objects are written in the samples'
  order: SDs/EAs/reparse buffers as files arrive, then the upcase table, link tables deepest
  first, stream tables, file tables, the file table directory, the filesystem object.
* Alternate stream tables are whole link tables at ``stream_table_offset`` (first u32 = whole
  length, values are Streams), names without ``:$DATA``.  Empty directories get an 8-byte empty
  link table.  A stream is sparse (bit 56, no data) when nothing was written for it, or when the
  file is FILE_ATTRIBUTE_SPARSE_FILE and its data is all zeros; other zero pages are holes in
  the host's region file.  PE images are never expanded by the writer (Windows' "do not expand
  PE images" behaviour); the reader handles expanded PE-image streams.
* Forks list the parent's parent region sets then the parent's own set, so every parent offset
  stays valid.  A fork keeps the parent's FileIDs, reuses the parent's unchanged file tables and
  link tables in place, and hides deleted entries by writing its own link table of the directory
  (no tombstones); a deleted parent file keeps its unreachable slot.  Freed own FileIDs are
  reused lowest first; free slots are zero-filled.  Objects are deduplicated against the
  parents' object-ID tables too (hits are re-verified against the parent's bytes).
* Version-2 fields: ParentFileId is the directory that first named the file (0 for the root),
  BaseRegionIndex 0; the reader ignores both.
* Deterministic mode derives the region-set GUID (uuid5) from the object-ID tables, the parent
  sets and the image's file name; otherwise it is a random uuid4.
* Destroy: a fork must live in its parent's directory; "known forks" are the sibling ``.cim``
  files.  An image overwritten while a fork needed its regions leaves them until that fork goes.

Host trees and the FUSE mount keep Windows metadata in ``user.cimfs.*`` extended attributes
(:data:`~.hostfs.XATTRS`; see :mod:`.hostfs` and :mod:`.mount`) and alternate streams as
``FILE:STREAM`` sibling files (extract/create) or ``user.cimfs.stream.NAME`` (mount).
"""

from cimsnap.formats.cim.destroy import dependent_forks, destroy_image
from cimsnap.formats.cim.errors import CimFormatError
from cimsnap.formats.cim.metadata import ExtendedAttribute, FileMetadata, decode_eas, encode_eas
from cimsnap.formats.cim.reader import CimDirEntry, CimFile, CimImage, CimStat, CimUsage, StreamInfo
from cimsnap.formats.cim.writer import CimWriter

__all__ = [
    "CimDirEntry",
    "CimFile",
    "CimFormatError",
    "CimImage",
    "CimStat",
    "CimUsage",
    "CimWriter",
    "ExtendedAttribute",
    "FileMetadata",
    "StreamInfo",
    "decode_eas",
    "dependent_forks",
    "destroy_image",
    "encode_eas",
]
