"""The NTFS 3.1 formatter: a complete, empty volume written into any block device.

Writes what a Windows 10 format leaves on a volume (system files 0-11, reserved records 12-15,
$Extend's $Quota/$ObjId/$Reparse at 24-26; records, descriptors and $LogFile layout compared
field by field with a Windows-made volume in the tests) plus the two hidden+system directories of
a container scratch, "System Volume Information" and "WcSandboxState", touching only the
clusters that hold metadata.  With ``zeroed=True`` (a new VHDX or sparse file) even all-zero
parts of the metadata are skipped, so a 10 GiB volume costs about 250 KiB of writes.

Layout chosen (compact, so the metadata shares as few VHDX blocks as possible):

    cluster 0-1   $Boot (boot sector; its copy goes to the partition's last sector)
    then          $MFTMirr (cluster 2, as on Windows), $AttrDef, $MFT (256 records, unused
                  ones unwritten, as on Windows), $MFT:$BITMAP, index blocks, $UpCase,
                  $Secure:$SDS, $Bitmap, $LogFile

Windows itself places $MFT at cluster 786432 on large volumes; NTFS does not care where system
files live (the boot sector points at $MFT and $MFTMirr), and both ntfs-3g and Windows grow the
MFT wherever there is space.  docs/ntfs-vs-mkntfs.md lists every difference from Windows and
from mkntfs.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cimsnap.formats.blockdev import BlockDevice
from cimsnap.formats.ntfs import constants as c
from cimsnap.formats.ntfs.bitmaps import set_bits
from cimsnap.formats.ntfs.boot import BootSector
from cimsnap.formats.ntfs.errors import NtfsError
from cimsnap.formats.ntfs.index import file_name_entry, plan_index, protect_block, view_entry
from cimsnap.formats.ntfs.logfile import LOG_PAGE_SIZE, default_log_size, restart_page
from cimsnap.formats.ntfs.records import (
    Run,
    build_file_record,
    file_reference,
    nonresident_attribute,
    resident_attribute,
)
from cimsnap.formats.ntfs.security import (
    SD_ROOT,
    SD_SYSTEM_READONLY,
    SD_SYSTEM_READWRITE,
    SID_ADMINISTRATORS,
    VOLUME_DESCRIPTORS,
    build_secure,
)
from cimsnap.formats.ntfs.values import (
    FileName,
    StandardInformation,
    attrdef_table,
    filetime_now,
    upcase_info,
    volume_information,
)
from cimsnap.formats.upcase import name_key, upcase_table_bytes

MFT_RECORD_SIZE = 1024
INDEX_BLOCK_SIZE = 4096
BOOT_BYTES = 8192
MFT_MIRROR_RECORDS = 4
DEFAULT_MFT_RECORDS = 256  # 256 KiB, what Windows 10 gives a new volume
WRITE_CHUNK = 1 << 20

# Security ids of VOLUME_DESCRIPTORS (assigned from 0x100 in order).
SEC_SYSTEM_READONLY = c.FIRST_SECURITY_ID
SEC_SYSTEM_READWRITE = c.FIRST_SECURITY_ID + 1
SEC_SYSTEM_ONLY_DIRECTORY = c.FIRST_SECURITY_ID + 2

# The directories a container scratch volume carries (hidden + system, SYSTEM-only ACL).
SCRATCH_DIRECTORIES = ("System Volume Information", "WcSandboxState")

HIDDEN_SYSTEM = c.FILE_ATTRIBUTE_HIDDEN | c.FILE_ATTRIBUTE_SYSTEM
LEGACY_SI_SIZE = 48  # NTFS 1.2 $STANDARD_INFORMATION: times, attributes, versions, class id
DIRECTORY_NAME = c.FILE_NAME_INDEX_PRESENT  # a directory's $FILE_NAME attributes carry this
DIRECTORY_RECORD = c.RECORD_IN_USE | c.RECORD_IS_DIRECTORY


@dataclass(frozen=True)
class NtfsLayout:
    """Where the formatter put things (cluster numbers are volume-relative)."""

    sector_size: int
    cluster_size: int
    total_sectors: int
    total_clusters: int
    mft_lcn: int
    mftmirr_lcn: int
    bitmap_lcn: int
    logfile_lcn: int
    logfile_size: int
    used_clusters: int
    serial: int
    bytes_written: int


@dataclass
class _Writer:
    dev: BlockDevice
    zeroed: bool
    written: int = 0

    def write(self, offset: int, data: bytes) -> None:
        """Write ``data``; on a zeroed device skip the all-zero 4 KiB pieces."""
        if not self.zeroed:
            self.dev.write_at(offset, data)
            self.written += len(data)
            return
        view = memoryview(data)
        page = 4096
        start = None
        for pos in range(0, len(data), page):
            nonzero = any(view[pos : pos + page])
            if nonzero and start is None:
                start = pos
            elif not nonzero and start is not None:
                self._put(offset + start, view[start:pos])
                start = None
        if start is not None:
            self._put(offset + start, view[start:])

    def zero(self, offset: int, length: int) -> None:
        if self.zeroed:
            return
        chunk = bytes(min(length, WRITE_CHUNK))
        while length > 0:
            n = min(length, len(chunk))
            self.dev.write_at(offset, chunk[:n])
            self.written += n
            offset += n
            length -= n

    def _put(self, offset: int, data: memoryview) -> None:
        self.dev.write_at(offset, bytes(data))
        self.written += len(data)


@dataclass
class _Allocator:
    clusters: int
    next: int = 0
    extents: list[tuple[int, int]] = field(default_factory=list)

    def take(self, count: int) -> int:
        if self.next + count > self.clusters:
            raise NtfsError(f"the volume ({self.clusters} clusters) is too small for its metadata")
        lcn = self.next
        self.next += count
        self.extents.append((lcn, count))
        return lcn


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def format_volume(
    dev: BlockDevice,
    *,
    sector_size: int = 512,
    cluster_size: int = 4096,
    hidden_sectors: int = 0,
    label: str = "",
    serial: int | None = None,
    timestamp: int | None = None,
    log_size: int | None = None,
    mft_records: int = DEFAULT_MFT_RECORDS,
    scratch_directories: bool = True,
    zeroed: bool = False,
    fill_log: bool = False,
) -> NtfsLayout:
    """Format the whole of ``dev`` (a partition) as an empty NTFS 3.1 volume.

    ``hidden_sectors`` is the partition's first LBA (recorded in the boot sector).  ``zeroed``
    promises that the device reads as zeros (a new disk), so zero-filled metadata is not written.
    ``fill_log`` writes 0xFF into the $LogFile's record pages (what Windows keeps in unused log
    pages) instead of leaving them unwritten; see :mod:`cimsnap.formats.ntfs.logfile`.
    """
    if sector_size not in (512, 1024, 2048, 4096):
        raise NtfsError(f"unsupported sector size {sector_size}")
    if cluster_size not in (512, 1024, 2048, 4096) or cluster_size < sector_size:
        raise NtfsError(f"unsupported cluster size {cluster_size} (sector size {sector_size})")
    if mft_records < 32 or mft_records * MFT_RECORD_SIZE % cluster_size:
        raise NtfsError(f"invalid initial MFT size of {mft_records} records")
    if len(label.encode("utf-16-le")) > 2 * 128:
        raise NtfsError("volume label is longer than 128 characters")
    total_sectors = dev.size // sector_size - 1  # the last sector holds the backup boot sector
    clusters = total_sectors // (cluster_size // sector_size)
    if clusters < 256:
        raise NtfsError(f"a volume of {dev.size} bytes is too small for NTFS")
    log_bytes = log_size if log_size is not None else default_log_size(dev.size, cluster_size)
    if log_bytes % max(cluster_size, LOG_PAGE_SIZE):
        raise NtfsError(f"$LogFile size {log_bytes} is not a whole number of pages")
    builder = _VolumeBuilder(
        sector_size=sector_size,
        cluster_size=cluster_size,
        clusters=clusters,
        mft_records=mft_records,
        log_bytes=log_bytes,
        now=timestamp if timestamp is not None else filetime_now(),
        label=label,
    )
    builder.build(scratch_directories=scratch_directories)
    boot = BootSector(
        bytes_per_sector=sector_size,
        sectors_per_cluster=cluster_size // sector_size,
        hidden_sectors=hidden_sectors,
        total_sectors=total_sectors,
        mft_lcn=builder.mft_lcn,
        mftmirr_lcn=builder.mirr_lcn,
        mft_record_size=MFT_RECORD_SIZE,
        index_block_size=INDEX_BLOCK_SIZE,
        serial=serial if serial is not None else int.from_bytes(os.urandom(8), "little"),
    )
    writer = _Writer(dev, zeroed)
    builder.write(writer, boot, fill_log=fill_log)
    dev.flush()
    return NtfsLayout(
        sector_size=sector_size,
        cluster_size=cluster_size,
        total_sectors=total_sectors,
        total_clusters=clusters,
        mft_lcn=builder.mft_lcn,
        mftmirr_lcn=builder.mirr_lcn,
        bitmap_lcn=builder.bitmap_lcn,
        logfile_lcn=builder.log_lcn,
        logfile_size=log_bytes,
        used_clusters=builder.alloc.next,
        serial=boot.serial,
        bytes_written=writer.written,
    )


# A directory's entries while it is being built: (name, file reference, $FILE_NAME value).
_DirEntries = list[tuple[str, int, bytes]]
# A view index of a record: (attribute name, sorted entries, collation rule).
_ViewIndex = tuple[str, list[bytes], int]


class _VolumeBuilder:
    """Plans the clusters and builds every MFT record of a new volume, then writes them.

    Cluster order: $Boot, $MFTMirr, $AttrDef, $MFT, $MFT:$BITMAP, $UpCase, $Secure:$SDS, index
    blocks as indexes need them, then $Bitmap and $LogFile (sized last, once all else is placed).
    """

    def __init__(
        self,
        *,
        sector_size: int,
        cluster_size: int,
        clusters: int,
        mft_records: int,
        log_bytes: int,
        now: int,
        label: str,
    ) -> None:
        self.sector_size = sector_size
        self.cs = cluster_size
        self.clusters = clusters
        self.mft_records = mft_records
        self.log_bytes = log_bytes
        self.now = now
        self.label = label
        self.alloc = _Allocator(clusters)
        self.records: dict[int, bytes] = {}
        self.index_blocks: list[tuple[int, bytes]] = []  # (LCN, protected INDX block)
        self.root_entries: _DirEntries = []
        self.root_ref = file_reference(c.ROOT, c.ROOT)
        self.block_clusters = _ceil_div(INDEX_BLOCK_SIZE, cluster_size)

        self.boot_clusters = _ceil_div(BOOT_BYTES, cluster_size)
        self.boot_lcn = self.alloc.take(self.boot_clusters)
        self.mirr_clusters = _ceil_div(MFT_MIRROR_RECORDS * MFT_RECORD_SIZE, cluster_size)
        self.mirr_lcn = self.alloc.take(self.mirr_clusters)
        self.attrdef = attrdef_table()
        self.attrdef_clusters = _ceil_div(len(self.attrdef), cluster_size)
        self.attrdef_lcn = self.alloc.take(self.attrdef_clusters)
        self.mft_clusters = mft_records * MFT_RECORD_SIZE // cluster_size
        self.mft_lcn = self.alloc.take(self.mft_clusters)
        self.mft_bitmap_size = _ceil_div(_ceil_div(mft_records, 8), 8) * 8
        self.mft_bitmap_clusters = _ceil_div(self.mft_bitmap_size, cluster_size)
        self.mft_bitmap_lcn = self.alloc.take(self.mft_bitmap_clusters)
        self.upcase = upcase_table_bytes()
        self.upcase_clusters = _ceil_div(len(self.upcase), cluster_size)
        self.upcase_lcn = self.alloc.take(self.upcase_clusters)
        self.secure = build_secure(VOLUME_DESCRIPTORS)
        self.sds_clusters = _ceil_div(self.secure.data_size, cluster_size)
        self.sds_lcn = self.alloc.take(self.sds_clusters)
        self.bitmap_size = _ceil_div(_ceil_div(clusters, 8), 8) * 8
        self.bitmap_clusters = _ceil_div(self.bitmap_size, cluster_size)
        self.bitmap_lcn = -1  # placed by build()
        self.log_lcn = -1

    # --- building blocks -----------------------------------------------------------------------
    @staticmethod
    def seq(number: int) -> int:
        """Sequence numbers: system records carry their own number ($MFT 1), the rest 1."""
        return number if 0 < number < c.FIRST_MFT_EXTENSION else 1

    def standard_information(self, attributes: int, security_id: int) -> bytes:
        value = StandardInformation(attributes, security_id, self.now).pack()
        return resident_attribute(c.AT_STANDARD_INFORMATION, value, instance=0)

    def own_security(self, attributes: int, descriptor: bytes) -> list[bytes]:
        """An NTFS 1.2 standard information (48 bytes, no security id) and the file's own
        $SECURITY_DESCRIPTOR, as Windows writes them for the root, $Boot and records 12-15."""
        legacy = StandardInformation(attributes, 0, self.now).pack()[:LEGACY_SI_SIZE]
        return [
            resident_attribute(c.AT_STANDARD_INFORMATION, legacy, instance=0),
            resident_attribute(c.AT_SECURITY_DESCRIPTOR, descriptor, instance=0),
        ]

    def file_name(
        self,
        parent: int,
        name: str,
        attributes: int,
        alloc_size: int = 0,
        size: int = 0,
        namespace: int = c.NAMESPACE_WIN32_AND_DOS,
    ) -> FileName:
        return FileName(parent, name, namespace, attributes, self.now, alloc_size, size)

    def data(self, lcn: int, count: int, size: int, name: str = "") -> bytes:
        return nonresident_attribute(
            c.AT_DATA,
            [Run(lcn, count)],
            instance=0,
            name=name,
            data_size=size,
            cluster_size=self.cs,
        )

    def index(
        self, entries: list[bytes], indexed_type: int, collation: int, name: str, root_space: int
    ) -> list[bytes]:
        """The $INDEX_ROOT (+ $INDEX_ALLOCATION and $BITMAP when large) of one index."""
        plan = plan_index(
            entries,
            indexed_type=indexed_type,
            collation=collation,
            block_size=INDEX_BLOCK_SIZE,
            cluster_size=self.cs,
            root_space=root_space,
        )
        attrs = [resident_attribute(c.AT_INDEX_ROOT, plan.root_value, instance=0, name=name)]
        if plan.large:
            count = len(plan.blocks)
            lcn = self.alloc.take(self.block_clusters * count)
            for i, block in enumerate(plan.blocks):
                self.index_blocks.append((lcn + i * self.block_clusters, protect_block(block)))
            run = Run(lcn, count * self.block_clusters)
            attrs.append(
                nonresident_attribute(
                    c.AT_INDEX_ALLOCATION,
                    [run],
                    instance=0,
                    name=name,
                    data_size=count * INDEX_BLOCK_SIZE,
                    cluster_size=self.cs,
                )
            )
            in_use = bytes([(1 << count) - 1]) + bytes(7)
            attrs.append(resident_attribute(c.AT_BITMAP, in_use, instance=0, name=name))
        return attrs

    def view_indexes(self, indexes: list[_ViewIndex], fixed_bytes: int) -> list[bytes]:
        return _fit_indexes(
            indexes,
            fixed_bytes=fixed_bytes,
            lay_out=lambda entries, coll, name, space: self.index(entries, 0, coll, name, space),
        )

    def add_record(
        self,
        number: int,
        attrs: list[bytes],
        *,
        flags: int = c.RECORD_IN_USE,
        link_count: int = 1,
    ) -> None:
        """Assemble a record from attributes in type order, numbering their instances."""
        numbered = [_with_instance(a, i) for i, a in enumerate(attrs)]
        self.records[number] = build_file_record(
            number,
            numbered,
            record_size=MFT_RECORD_SIZE,
            sequence=self.seq(number),
            flags=flags,
            link_count=link_count,
        )

    def named_file(
        self,
        number: int,
        name_attr: FileName,
        attrs: list[bytes],
        *,
        security_id: int = 0,
        si_attributes: int = HIDDEN_SYSTEM,
        own_descriptor: bytes | None = None,
        flags: int = c.RECORD_IN_USE,
        directory: _DirEntries | None = None,
    ) -> None:
        """A record with standard information, one $FILE_NAME and ``attrs``; its name goes into
        ``directory`` (None: not indexed anywhere yet)."""
        fn_attr = resident_attribute(
            c.AT_FILE_NAME, name_attr.pack(), instance=0, resident_flags=c.RESIDENT_INDEXED
        )
        if own_descriptor is None:
            head = [self.standard_information(si_attributes, security_id), fn_attr]
        else:
            legacy_si, descriptor = self.own_security(si_attributes, own_descriptor)
            head = [legacy_si, fn_attr, descriptor]
        self.add_record(number, [*head, *attrs], flags=flags)
        if directory is not None:
            ref = file_reference(number, self.seq(number))
            directory.append((name_attr.name, ref, name_attr.pack()))

    def system_file(
        self,
        number: int,
        name: str,
        attrs: list[bytes],
        *,
        security_id: int = SEC_SYSTEM_READONLY,
        attributes: int = HIDDEN_SYSTEM,
        alloc_size: int = 0,
        size: int = 0,
        **options: Any,
    ) -> None:
        """A metadata file in the root directory (its $STANDARD_INFORMATION and $FILE_NAME both
        carry ``attributes``)."""
        name_attr = self.file_name(self.root_ref, name, attributes, alloc_size, size)
        self.named_file(
            number,
            name_attr,
            attrs,
            security_id=security_id,
            si_attributes=attributes,
            directory=self.root_entries,
            **options,
        )

    # --- the volume ----------------------------------------------------------------------------
    def build(self, *, scratch_directories: bool) -> None:
        self.build_system_files()
        self.build_secure_file()
        next_record = self.build_extend()
        self.build_reserved_records()
        if scratch_directories:
            for name in SCRATCH_DIRECTORIES:
                self.build_scratch_directory(next_record, name)
                next_record += 1
        if next_record > self.mft_records:
            raise NtfsError("the initial MFT is too small")
        self.build_root_bitmap_and_log()

    def build_system_files(self) -> None:
        cs = self.cs
        mft_size = self.mft_records * MFT_RECORD_SIZE
        mft_bitmap = nonresident_attribute(
            c.AT_BITMAP,
            [Run(self.mft_bitmap_lcn, self.mft_bitmap_clusters)],
            instance=0,
            data_size=self.mft_bitmap_size,
            cluster_size=cs,
        )
        self.system_file(
            c.MFT,
            "$MFT",
            [self.data(self.mft_lcn, self.mft_clusters, mft_size), mft_bitmap],
            alloc_size=self.mft_clusters * cs,
            size=mft_size,
        )
        mirr_size = MFT_MIRROR_RECORDS * MFT_RECORD_SIZE
        self.system_file(
            c.MFTMIRR,
            "$MFTMirr",
            [self.data(self.mirr_lcn, self.mirr_clusters, mirr_size)],
            alloc_size=self.mirr_clusters * cs,
            size=mirr_size,
        )
        volume = [
            resident_attribute(c.AT_VOLUME_NAME, self.label.encode("utf-16-le"), instance=0),
            resident_attribute(c.AT_VOLUME_INFORMATION, volume_information(3, 1, 0), instance=0),
            resident_attribute(c.AT_DATA, b"", instance=0),
        ]
        self.system_file(c.VOLUME, "$Volume", volume, security_id=SEC_SYSTEM_READWRITE)
        n = len(self.attrdef)
        self.system_file(
            c.ATTRDEF,
            "$AttrDef",
            [self.data(self.attrdef_lcn, self.attrdef_clusters, n)],
            alloc_size=self.attrdef_clusters * cs,
            size=n,
        )
        boot_size = self.boot_clusters * cs
        self.system_file(
            c.BOOT,
            "$Boot",
            [self.data(self.boot_lcn, self.boot_clusters, boot_size)],
            alloc_size=boot_size,
            size=boot_size,
            own_descriptor=SD_SYSTEM_READONLY,
        )
        bad = nonresident_attribute(
            c.AT_DATA,
            [Run(None, self.clusters)],
            instance=0,
            name="$Bad",
            data_size=self.clusters * cs,
            cluster_size=cs,
            initialized_size=0,
        )
        self.system_file(
            c.BADCLUS, "$BadClus", [resident_attribute(c.AT_DATA, b"", instance=0), bad]
        )
        info = resident_attribute(c.AT_DATA, upcase_info(self.upcase), instance=0, name="$Info")
        n = len(self.upcase)
        self.system_file(
            c.UPCASE,
            "$UpCase",
            [self.data(self.upcase_lcn, self.upcase_clusters, n), info],
            alloc_size=self.upcase_clusters * cs,
            size=n,
        )

    def build_secure_file(self) -> None:
        """$Secure: the $SDS stream and the $SDH/$SII view indexes."""
        sds = [self.data(self.sds_lcn, self.sds_clusters, self.secure.data_size, "$SDS")]
        indexes: list[_ViewIndex] = [
            ("$SDH", self.secure.sdh_entries, c.COLLATION_NTOFS_SECURITY_HASH),
            ("$SII", self.secure.sii_entries, c.COLLATION_NTOFS_ULONG),
        ]
        self.system_file(
            c.SECURE,
            "$Secure",
            sds + self.view_indexes(indexes, _fixed_size(["$Secure"], sds)),
            security_id=SEC_SYSTEM_READWRITE,
            attributes=HIDDEN_SYSTEM | c.VIEW_INDEX_PRESENT,
            flags=c.RECORD_IN_USE | c.RECORD_IS_VIEW_INDEX,
        )

    def build_extend(self) -> int:
        """$Extend and its children $Quota, $ObjId, $Reparse; returns the next free record."""
        extend_ref = file_reference(c.EXTEND, c.EXTEND)
        entries: _DirEntries = []
        view_attrs = HIDDEN_SYSTEM | c.VIEW_INDEX_PRESENT  # Windows 10: no archive bit
        quota_o = [view_entry(SID_ADMINISTRATORS, struct.pack("<I", c.FIRST_SECURITY_ID))]
        quota_q = [
            view_entry(struct.pack("<I", owner), _quota_control(self.now, owner_sid))
            for owner, owner_sid in (
                (c.QUOTA_DEFAULTS_ID, b""),
                (c.FIRST_SECURITY_ID, SID_ADMINISTRATORS),
            )
        ]
        children: list[tuple[str, list[_ViewIndex]]] = [
            (
                "$Quota",
                [("$O", quota_o, c.COLLATION_NTOFS_SID), ("$Q", quota_q, c.COLLATION_NTOFS_ULONG)],
            ),
            ("$ObjId", [("$O", [], c.COLLATION_NTOFS_ULONGS)]),
            ("$Reparse", [("$R", [], c.COLLATION_NTOFS_ULONGS)]),
        ]
        for number, (name, indexes) in enumerate(children, start=c.FIRST_NORMAL):
            # Windows names $Extend's children in the POSIX namespace.
            name_attr = self.file_name(extend_ref, name, view_attrs, namespace=c.NAMESPACE_POSIX)
            self.named_file(
                number,
                name_attr,
                self.view_indexes(indexes, _fixed_size([name], [])),
                security_id=SEC_SYSTEM_READWRITE,
                si_attributes=view_attrs,
                flags=c.RECORD_IN_USE | c.RECORD_IN_EXTEND | c.RECORD_IS_VIEW_INDEX,
                directory=entries,
            )
        extend_index = self.index(
            _sorted_dir_entries(entries),
            c.AT_FILE_NAME,
            c.COLLATION_FILE_NAME,
            "$I30",
            _root_space(_fixed_size(["$Extend"], [])),
        )
        name_attr = self.file_name(self.root_ref, "$Extend", HIDDEN_SYSTEM | DIRECTORY_NAME)
        self.named_file(
            c.EXTEND,
            name_attr,
            extend_index,
            security_id=SEC_SYSTEM_READWRITE,
            flags=DIRECTORY_RECORD,
            directory=self.root_entries,
        )
        return c.FIRST_NORMAL + len(children)

    def build_reserved_records(self) -> None:
        """Records 12-15: in use, no name (what Windows and mkntfs leave there)."""
        for number in range(c.FIRST_RESERVED, c.FIRST_MFT_EXTENSION):
            attrs = [
                *self.own_security(HIDDEN_SYSTEM, SD_SYSTEM_READWRITE),
                resident_attribute(c.AT_DATA, b"", instance=0),
            ]
            self.add_record(number, attrs, link_count=0)

    def build_scratch_directory(self, number: int, name: str) -> None:
        """An empty hidden + system directory with a SYSTEM-only descriptor, Win32 name only."""
        name_attr = self.file_name(
            self.root_ref, name, HIDDEN_SYSTEM | DIRECTORY_NAME, namespace=c.NAMESPACE_WIN32
        )
        empty = self.index([], c.AT_FILE_NAME, c.COLLATION_FILE_NAME, "$I30", MFT_RECORD_SIZE)
        self.named_file(
            number,
            name_attr,
            empty,
            security_id=SEC_SYSTEM_ONLY_DIRECTORY,
            flags=DIRECTORY_RECORD,
            directory=self.root_entries,
        )

    def build_root_bitmap_and_log(self) -> None:
        """The root's index (its block is allocated before the bitmap is), then $Bitmap and
        $LogFile, whose entries go in the root index with their final sizes."""
        cs = self.cs
        names = {
            c.BITMAP: ("$Bitmap", self.bitmap_clusters * cs, self.bitmap_size),
            c.LOGFILE: ("$LogFile", self.log_bytes, self.log_bytes),
        }
        last_files: dict[int, FileName] = {}
        for number, (name, alloc_size, size) in names.items():
            last_files[number] = self.file_name(
                self.root_ref, name, HIDDEN_SYSTEM, alloc_size, size
            )
            ref = file_reference(number, self.seq(number))
            self.root_entries.append((name, ref, last_files[number].pack()))
        root_name = self.file_name(self.root_ref, ".", HIDDEN_SYSTEM | DIRECTORY_NAME)
        self.root_entries.append((".", self.root_ref, root_name.pack()))
        own_sd = resident_attribute(c.AT_SECURITY_DESCRIPTOR, SD_ROOT, instance=0)
        root_index = self.index(
            _sorted_dir_entries(self.root_entries),
            c.AT_FILE_NAME,
            c.COLLATION_FILE_NAME,
            "$I30",
            _root_space(_fixed_size(["."], [own_sd])),
        )
        self.bitmap_lcn = self.alloc.take(self.bitmap_clusters)
        self.log_lcn = self.alloc.take(self.log_bytes // cs)
        self.named_file(
            c.BITMAP,
            last_files[c.BITMAP],
            [self.data(self.bitmap_lcn, self.bitmap_clusters, self.bitmap_size)],
            security_id=SEC_SYSTEM_READONLY,
        )
        self.named_file(
            c.LOGFILE,
            last_files[c.LOGFILE],
            [self.data(self.log_lcn, self.log_bytes // cs, self.log_bytes)],
            security_id=SEC_SYSTEM_READONLY,
        )
        self.named_file(
            c.ROOT, root_name, root_index, own_descriptor=SD_ROOT, flags=DIRECTORY_RECORD
        )

    # --- writing -------------------------------------------------------------------------------
    def write(self, writer: _Writer, boot: BootSector, *, fill_log: bool) -> None:
        cs = self.cs
        boot_area = bytearray(self.boot_clusters * cs)
        boot_area[: self.sector_size] = boot.pack()
        writer.write(self.boot_lcn * cs, bytes(boot_area))
        # The backup boot sector: the partition's last sector, just past the volume's sectors.
        writer.write(boot.total_sectors * self.sector_size, boot.pack())

        # Only records in use are written; Windows leaves the others unformatted (zero) too, and
        # NTFS formats a record when it first hands it out.
        mft = bytearray(self.mft_records * MFT_RECORD_SIZE)
        for number, record in self.records.items():
            mft[number * MFT_RECORD_SIZE : (number + 1) * MFT_RECORD_SIZE] = record
        writer.write(self.mft_lcn * cs, bytes(mft))
        writer.write(self.mirr_lcn * cs, bytes(mft[: self.mirr_clusters * cs]))
        mft_bitmap = bytearray(self.mft_bitmap_clusters * cs)
        for number in self.records:
            mft_bitmap[number // 8] |= 1 << (number % 8)
        writer.write(self.mft_bitmap_lcn * cs, bytes(mft_bitmap))
        writer.write(self.attrdef_lcn * cs, self.attrdef.ljust(self.attrdef_clusters * cs, b"\0"))
        writer.write(self.upcase_lcn * cs, self.upcase)
        writer.zero(self.sds_lcn * cs, self.sds_clusters * cs)
        for offset, chunk in self.secure.chunks:
            writer.write(self.sds_lcn * cs + offset, chunk)
        for lcn, block in self.index_blocks:
            writer.write(lcn * cs, block)

        bitmap = _cluster_bitmap(self.alloc.extents, self.clusters, self.bitmap_size)
        writer.zero(self.bitmap_lcn * cs, self.bitmap_clusters * cs)
        writer.write(self.bitmap_lcn * cs, bytes(bitmap))

        log = self.log_lcn * cs
        if fill_log:
            ff = b"\xff" * min(self.log_bytes, WRITE_CHUNK)
            for pos in range(2 * LOG_PAGE_SIZE, self.log_bytes, len(ff)):
                writer.write(log + pos, ff[: self.log_bytes - pos])
        else:
            writer.zero(log, self.log_bytes)
        page = restart_page(self.log_bytes, open_count=int.from_bytes(os.urandom(4), "little"))
        writer.write(log, page)
        writer.write(log + LOG_PAGE_SIZE, page)


# --- helpers -------------------------------------------------------------------------------------

_ATTR_INSTANCE_OFFSET = 14


def _with_instance(attr: bytes, instance: int) -> bytes:
    out = bytearray(attr)
    struct.pack_into("<H", out, _ATTR_INSTANCE_OFFSET, instance)
    return bytes(out)


def _fixed_size(names: list[str], attrs: list[bytes]) -> int:
    """Bytes a record spends before its indexes: header, SI, FN (longest name), ``attrs``."""
    longest = max(len(n) for n in names)
    header = 0x38  # FILE header + USA for 1 KiB records
    si_attr = 24 + 72
    fn_attr = 24 + ((66 + 2 * longest + 7) & ~7)
    return header + si_attr + fn_attr + sum(len(a) for a in attrs) + 8


def _root_space(fixed: int) -> int:
    """$INDEX_ROOT value bytes left in a record after ``fixed`` bytes and the index's own
    attribute headers ($INDEX_ROOT named $I30; $INDEX_ALLOCATION and $BITMAP if it grows)."""
    return MFT_RECORD_SIZE - fixed - (24 + 8)


def _fit_indexes(
    indexes: list[tuple[str, list[bytes], int]],
    *,
    fixed_bytes: int,
    lay_out: Callable[[list[bytes], int, str, int], list[bytes]],
) -> list[bytes]:
    """Attributes for several view indexes of one record: small while they all fit, the largest
    ones moved to index blocks otherwise.  Returned in attribute order (roots, then allocations,
    then bitmaps)."""
    budget = MFT_RECORD_SIZE - fixed_bytes
    large: set[str] = set()
    by_size = sorted(indexes, key=lambda t: -sum(len(e) for e in t[1]))
    while True:
        need = 0
        for name, entries, _coll in indexes:
            body = 16 if name in large else sum(len(e) for e in entries) + 16
            need += 24 + 8 + 32 + body
            if name in large:
                need += 64 + 8 + 8 + 24 + 8 + 8
        if need <= budget or len(large) == len(indexes):
            break
        large.add(next(n for n, _e, _c in by_size if n not in large))
    attrs: list[bytes] = []
    for name, entries, coll in indexes:
        space = 0 if name in large else MFT_RECORD_SIZE
        attrs += lay_out(entries, coll, name, space)
    return sorted(attrs, key=lambda a: struct.unpack_from("<I", a)[0])  # stable: names in order


def _sorted_dir_entries(entries: list[tuple[str, int, bytes]]) -> list[bytes]:
    ordered = sorted(entries, key=lambda e: name_key(e[0]))
    return [file_name_entry(ref, value) for _name, ref, value in ordered]


def _quota_control(now: int, owner_sid: bytes) -> bytes:
    """QUOTA_CONTROL_ENTRY: version 2, default-limits flag, nothing used, no limits (-1)."""
    return struct.pack("<IIQqqqq", 2, c.QUOTA_FLAG_DEFAULT_LIMITS, 0, now, -1, -1, 0) + owner_sid


def _cluster_bitmap(extents: list[tuple[int, int]], clusters: int, size: int) -> bytearray:
    bitmap = bytearray(size)
    for lcn, count in extents:
        set_bits(bitmap, lcn, count)
    set_bits(bitmap, clusters, size * 8 - clusters)  # past the end: never allocatable
    return bitmap
