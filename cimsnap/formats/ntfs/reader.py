"""A small NTFS reader: enough for ``scratch info``, volume extension and self-checks.

Reads the boot sector, MFT records (following $MFT's own runlist), resident and non-resident
attribute data, directory indexes (root and INDX blocks, with loop protection), security
descriptors through $Secure:$SII/$SDS, the cluster bitmap and the $LogFile restart pages.  Every
offset, size and count read from the disk is checked before use, so a damaged or hostile volume
yields an :class:`NtfsError` naming the record, never an exception from deep inside.  Files with
an $ATTRIBUTE_LIST (heavily fragmented ones) are refused with a clear error: independent readers
(ntfs-3g, dissect.ntfs) do the full checking in the tests.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cimsnap.formats.blockdev import BlockDevice
from cimsnap.formats.ntfs import constants as c
from cimsnap.formats.ntfs.bitmaps import count_set
from cimsnap.formats.ntfs.boot import BootSector
from cimsnap.formats.ntfs.errors import NtfsError
from cimsnap.formats.ntfs.index import IndexEntry, parse_index_block, parse_index_root
from cimsnap.formats.ntfs.logfile import RestartArea, parse_restart_page
from cimsnap.formats.ntfs.records import (
    Attribute,
    FileRecordHeader,
    Run,
    parse_attributes,
    parse_file_record,
)
from cimsnap.formats.ntfs.security import SDS_HEADER_SIZE, parse_sds_header
from cimsnap.formats.ntfs.values import FileName, StandardInformation, parse_volume_information
from cimsnap.formats.upcase import names_equal

# Reads of attribute data larger than this are refused (the reader is for metadata).
MAX_READ = 64 << 20
MAX_INDEX_BLOCKS = 4096


@dataclass
class MftRecord:
    number: int
    header: FileRecordHeader
    attributes: list[Attribute]
    raw: bytes  # fixed-up record bytes

    @property
    def in_use(self) -> bool:
        return bool(self.header.flags & c.RECORD_IN_USE)

    @property
    def is_directory(self) -> bool:
        return bool(self.header.flags & c.RECORD_IS_DIRECTORY)

    def find(self, attr_type: int, name: str = "") -> Attribute | None:
        for attr in self.attributes:
            if attr.type == attr_type and attr.name == name:
                return attr
        return None

    def require(self, attr_type: int, name: str = "") -> Attribute:
        attr = self.find(attr_type, name)
        if attr is None:
            label = f"{attr_type:#x}" + (f":{name}" if name else "")
            raise NtfsError(f"MFT record {self.number} has no attribute {label}")
        return attr

    @property
    def standard_information(self) -> StandardInformation:
        return StandardInformation.unpack(self.require(c.AT_STANDARD_INFORMATION).value)

    @property
    def file_names(self) -> list[FileName]:
        return [FileName.unpack(a.value) for a in self.attributes if a.type == c.AT_FILE_NAME]


@dataclass(frozen=True)
class DirectoryEntry:
    name: str
    record: int
    sequence: int
    file_name: FileName


@dataclass(frozen=True)
class VolumeInfo:
    label: str
    version: tuple[int, int]
    flags: int
    serial: int
    sector_size: int
    cluster_size: int
    total_clusters: int
    free_clusters: int
    mft_record_size: int

    @property
    def size(self) -> int:
        return self.total_clusters * self.cluster_size


class NtfsVolume:
    """Read access to the NTFS volume that fills ``dev``."""

    def __init__(self, dev: BlockDevice) -> None:
        self.dev = dev
        if dev.size < 512:
            raise NtfsError("the volume is smaller than one sector")
        self.boot = BootSector.unpack(dev.read_at(0, 512), offset=0)
        self.cluster_size = self.boot.cluster_size
        self.record_size = self.boot.mft_record_size
        self.total_clusters = self.boot.total_clusters
        if self.boot.total_sectors * self.boot.bytes_per_sector > dev.size:
            raise NtfsError(
                f"the boot sector describes {self.boot.total_sectors} sectors; the device holds "
                f"{dev.size // self.boot.bytes_per_sector}"
            )
        mft0 = self._record_at(self.boot.mft_lcn * self.cluster_size, 0)
        data = mft0.require(c.AT_DATA)
        if data.resident or not data.runs:
            raise NtfsError("$MFT's data attribute is not a valid non-resident attribute")
        self._mft_runs = data.runs
        self._mft_size = data.data_size

    # --- records ---------------------------------------------------------------------------
    @property
    def record_count(self) -> int:
        return self._mft_size // self.record_size

    def _record_at(self, offset: int, number: int) -> MftRecord:
        raw = self.dev.read_at(offset, self.record_size)
        header, record = parse_file_record(
            raw, number=number, record_size=self.record_size, offset=offset
        )
        attrs = parse_attributes(
            bytes(record),
            header.attrs_offset,
            header.bytes_in_use,
            what=f"MFT record {number}",
            max_lcn=self.total_clusters,
        )
        return MftRecord(number, header, attrs, bytes(record))

    def record_offset(self, number: int) -> int:
        """Byte offset on the device of MFT record ``number``."""
        if not 0 <= number < self.record_count:
            raise NtfsError(f"MFT record {number} is outside the MFT ({self.record_count})")
        return self._vcn_offset(self._mft_runs, number * self.record_size, "$MFT")

    def record(self, number: int) -> MftRecord:
        rec = self._record_at(self.record_offset(number), number)
        if rec.header.base_record:
            raise NtfsError(f"MFT record {number} is an extension record")
        if rec.find(c.AT_ATTRIBUTE_LIST) is not None:
            raise NtfsError(f"MFT record {number} has an attribute list (not supported here)")
        return rec

    def _vcn_offset(self, runs: list[Run], byte_offset: int, what: str) -> int:
        vcn, within = divmod(byte_offset, self.cluster_size)
        pos = 0
        for run in runs:
            if vcn < pos + run.length:
                if run.lcn is None:
                    raise NtfsError(f"{what}: offset {byte_offset} falls in a sparse run")
                return (run.lcn + vcn - pos) * self.cluster_size + within
            pos += run.length
        raise NtfsError(f"{what}: offset {byte_offset} lies past its runlist")

    # --- attribute data ----------------------------------------------------------------------
    def read_attribute(self, attr: Attribute, *, limit: int = MAX_READ) -> bytes:
        if attr.resident:
            return attr.value
        size = attr.data_size
        if size > limit:
            raise NtfsError(f"attribute {attr.type:#x} is {size} bytes; refusing to read it all")
        out = bytearray()
        cs = self.cluster_size
        for run in attr.runs:
            if len(out) >= size:
                break
            length = min(run.length * cs, size - len(out))
            if run.lcn is None:
                out += bytes(length)
            else:
                out += self.dev.read_at(run.lcn * cs, length)
        if len(out) < size:
            raise NtfsError(f"attribute {attr.type:#x} runlist is shorter than its data size")
        initialized = attr.initialized_size
        if initialized < size:
            out[initialized:] = bytes(size - initialized)
        return bytes(out)

    # --- directories ---------------------------------------------------------------------------
    def index_entries(self, rec: MftRecord, name: str, *, view: bool) -> list[IndexEntry]:
        what = f"MFT record {rec.number} index {name}"
        root = parse_index_root(rec.require(c.AT_INDEX_ROOT, name).value, view=view, what=what)
        allocation = rec.find(c.AT_INDEX_ALLOCATION, name)
        block_size = root.block_size
        if block_size < 512 or block_size & (block_size - 1) or block_size > 64 << 10:
            raise NtfsError(f"{what}: invalid index block size {block_size}")
        out: list[IndexEntry] = []
        seen: set[int] = set()

        def walk(entries: list[IndexEntry], depth: int) -> None:
            if depth > 32:
                raise NtfsError(f"{what}: index is nested too deeply")
            for entry in entries:
                if entry.subnode_vcn is not None:
                    vcn = entry.subnode_vcn
                    if allocation is None:
                        raise NtfsError(f"{what}: subnode without $INDEX_ALLOCATION")
                    if vcn in seen or len(seen) >= MAX_INDEX_BLOCKS:
                        raise NtfsError(f"{what}: index blocks form a loop")
                    seen.add(vcn)
                    units = self.cluster_size if block_size >= self.cluster_size else 512
                    byte_off = vcn * units
                    if byte_off + block_size > allocation.data_size:
                        raise NtfsError(f"{what}: subnode VCN {vcn} lies past the allocation")
                    offset = self._vcn_offset(allocation.runs, byte_off, what)
                    raw = self.dev.read_at(offset, block_size)
                    walk(
                        parse_index_block(raw, vcn=vcn, view=view, what=what, offset=offset),
                        depth + 1,
                    )
                if entry.key or entry.data:
                    out.append(entry)

        walk(root.entries, 0)
        return out

    def list_directory(self, number: int) -> list[DirectoryEntry]:
        rec = self.record(number)
        if not rec.is_directory:
            raise NtfsError(f"MFT record {number} is not a directory")
        entries = []
        for entry in self.index_entries(rec, "$I30", view=False):
            fn = FileName.unpack(entry.key)
            if fn.namespace == c.NAMESPACE_DOS:
                continue
            ref = entry.file_reference
            entries.append(DirectoryEntry(fn.name, ref & ((1 << 48) - 1), ref >> 48, fn))
        return entries

    def lookup(self, path: str) -> int:
        """MFT record number of ``path`` (``\\`` or ``/`` separated, case-insensitive)."""
        number = c.ROOT
        for part in [p for p in path.replace("\\", "/").split("/") if p]:
            for entry in self.list_directory(number):
                if names_equal(entry.name, part):
                    number = entry.record
                    break
            else:
                raise NtfsError(f"{path!r}: {part!r} not found")
        return number

    # --- security -------------------------------------------------------------------------------
    def security_descriptor(self, number: int) -> bytes:
        """The self-relative descriptor of a file (via its security id, or its own attribute)."""
        rec = self.record(number)
        own = rec.find(c.AT_SECURITY_DESCRIPTOR)
        if own is not None:
            return self.read_attribute(own, limit=1 << 20)
        sec_id = rec.standard_information.security_id
        secure = self.record(c.SECURE)
        for entry in self.index_entries(secure, "$SII", view=True):
            if len(entry.key) == 4 and struct.unpack("<I", entry.key)[0] == sec_id:
                if len(entry.data) < SDS_HEADER_SIZE:
                    raise NtfsError(f"$SII entry {sec_id:#x} is truncated")
                _h, _id, offset, length = parse_sds_header(entry.data)
                if length < SDS_HEADER_SIZE:
                    raise NtfsError(f"$SII entry {sec_id:#x} has an invalid length")
                sds_attr = secure.require(c.AT_DATA, "$SDS")
                if offset + length > sds_attr.data_size:
                    raise NtfsError(f"$SII entry {sec_id:#x} points outside $SDS")
                sds = self.read_range(sds_attr, offset, length)
                _h, stored_id, stored_offset, stored_length = parse_sds_header(sds)
                if (stored_id, stored_offset, stored_length) != (sec_id, offset, length):
                    raise NtfsError(f"$SDS entry for security id {sec_id:#x} is malformed")
                return sds[SDS_HEADER_SIZE:]
        raise NtfsError(f"security id {sec_id:#x} of MFT record {number} is not in $Secure")

    def read_range(self, attr: Attribute, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` of a non-resident attribute (sparse runs read as
        zeros), reading each run's part in one go."""
        if attr.resident:
            return attr.value[offset : offset + length]
        if offset < 0 or offset + length > attr.allocated_size:
            raise NtfsError(f"read of {length} bytes at {offset} is outside the attribute")
        cs = self.cluster_size
        out = bytearray()
        run_start = 0  # in bytes
        for run in attr.runs:
            run_end = run_start + run.length * cs
            pos = offset + len(out)
            if pos < run_end and len(out) < length:
                n = min(length - len(out), run_end - pos)
                if run.lcn is None:
                    out += bytes(n)
                else:
                    out += self.dev.read_at(run.lcn * cs + (pos - run_start), n)
            run_start = run_end
            if len(out) == length:
                break
        if len(out) != length:
            raise NtfsError("attribute runlist is shorter than its allocated size")
        return bytes(out)

    # --- volume ---------------------------------------------------------------------------------
    def cluster_bitmap(self) -> bytes:
        return self.read_attribute(self.record(c.BITMAP).require(c.AT_DATA))

    def used_clusters(self) -> int:
        """Clusters marked in use in $Bitmap, counted a window at a time (bounded memory)."""
        attr = self.record(c.BITMAP).require(c.AT_DATA)
        if attr.resident:
            return count_set(attr.value, min(self.total_clusters, len(attr.value) * 8))
        if attr.data_size * 8 < self.total_clusters:
            raise NtfsError("$Bitmap is smaller than the volume")
        used = 0
        window = 1 << 20
        for start in range(0, -(-self.total_clusters // 8), window):
            chunk = self.read_range(attr, start, min(window, attr.data_size - start))
            used += count_set(chunk, min(len(chunk) * 8, self.total_clusters - start * 8))
        return used

    def volume_flags(self) -> int:
        value = self.record(c.VOLUME).require(c.AT_VOLUME_INFORMATION).value
        return parse_volume_information(value)[2]

    def info(self) -> VolumeInfo:
        volume = self.record(c.VOLUME)
        label_attr = volume.find(c.AT_VOLUME_NAME)
        label = label_attr.value.decode("utf-16-le", "replace") if label_attr else ""
        major, minor, flags = parse_volume_information(
            volume.require(c.AT_VOLUME_INFORMATION).value
        )
        used = self.used_clusters()
        return VolumeInfo(
            label,
            (major, minor),
            flags,
            self.boot.serial,
            self.boot.bytes_per_sector,
            self.cluster_size,
            self.total_clusters,
            self.total_clusters - used,
            self.record_size,
        )

    def logfile_state(self) -> RestartArea | None:
        """The restart area, or None for an "empty" log (first page all 0xFF, as mkntfs and
        ntfs-3g leave it), which every NTFS implementation treats as clean."""
        log = self.record(c.LOGFILE).require(c.AT_DATA)
        if not log.resident and log.data_size >= 4096:
            first = self.read_range(log, 0, 512)
            if first == b"\xff" * 512:
                return None
        return self.logfile_restart()

    def logfile_restart(self) -> RestartArea:
        """Both restart pages checked and compared, as ntfs-3g does before mounting."""
        log = self.record(c.LOGFILE).require(c.AT_DATA)
        if log.resident or log.data_size < 2 * 4096:
            raise NtfsError("$LogFile is too small")
        first = self.read_range(log, 0, 4096)
        second = self.read_range(log, 4096, 4096)
        a = parse_restart_page(first)
        b = parse_restart_page(second)
        if a != b:
            raise NtfsError("the two $LogFile restart areas differ")
        return a
