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
    partition_sectors = dev.size // sector_size
    total_sectors = partition_sectors - 1  # the last sector holds the backup boot sector
    spc = cluster_size // sector_size
    clusters = total_sectors // spc
    if clusters < 256:
        raise NtfsError(f"a volume of {dev.size} bytes is too small for NTFS")
    now = timestamp if timestamp is not None else filetime_now()
    serial = serial if serial is not None else int.from_bytes(os.urandom(8), "little")
    log_bytes = log_size if log_size is not None else default_log_size(dev.size, cluster_size)
    if log_bytes % max(cluster_size, LOG_PAGE_SIZE):
        raise NtfsError(f"$LogFile size {log_bytes} is not a whole number of pages")

    alloc = _Allocator(clusters)
    boot_clusters = _ceil_div(BOOT_BYTES, cluster_size)
    boot_lcn = alloc.take(boot_clusters)
    mirr_clusters = _ceil_div(MFT_MIRROR_RECORDS * MFT_RECORD_SIZE, cluster_size)
    mirr_lcn = alloc.take(mirr_clusters)
    attrdef = attrdef_table()
    attrdef_clusters = _ceil_div(len(attrdef), cluster_size)
    attrdef_lcn = alloc.take(attrdef_clusters)
    mft_clusters = mft_records * MFT_RECORD_SIZE // cluster_size
    mft_lcn = alloc.take(mft_clusters)
    mft_bitmap_size = _ceil_div(_ceil_div(mft_records, 8), 8) * 8
    mft_bitmap_clusters = _ceil_div(mft_bitmap_size, cluster_size)
    mft_bitmap_lcn = alloc.take(mft_bitmap_clusters)
    upcase = upcase_table_bytes()
    upcase_clusters = _ceil_div(len(upcase), cluster_size)
    upcase_lcn = alloc.take(upcase_clusters)
    secure = build_secure(VOLUME_DESCRIPTORS)
    sds_clusters = _ceil_div(secure.data_size, cluster_size)
    sds_lcn = alloc.take(sds_clusters)

    writer = _Writer(dev, zeroed)
    block_clusters = _ceil_div(INDEX_BLOCK_SIZE, cluster_size)
    index_blocks: list[tuple[int, bytes]] = []  # (lcn, protected block)

    def lay_out_index(
        entries: list[bytes], indexed_type: int, collation: int, name: str, root_space: int
    ) -> list[bytes]:
        """The $INDEX_ROOT (+ $INDEX_ALLOCATION and $BITMAP when large) of one index."""
        plan = plan_index(
            entries,
            indexed_type=indexed_type,
            collation=collation,
            block_size=INDEX_BLOCK_SIZE,
            cluster_size=cluster_size,
            root_space=root_space,
        )
        attrs = [resident_attribute(c.AT_INDEX_ROOT, plan.root_value, instance=0, name=name)]
        if plan.large:
            count = len(plan.blocks)
            lcn = alloc.take(block_clusters * count)
            for i, block in enumerate(plan.blocks):
                index_blocks.append((lcn + i * block_clusters, protect_block(block)))
            attrs.append(
                nonresident_attribute(
                    c.AT_INDEX_ALLOCATION,
                    [Run(lcn, count * block_clusters)],
                    instance=0,
                    name=name,
                    data_size=count * INDEX_BLOCK_SIZE,
                    cluster_size=cluster_size,
                )
            )
            in_use = bytes([(1 << count) - 1]) + bytes(7)
            attrs.append(resident_attribute(c.AT_BITMAP, in_use, instance=0, name=name))
        return attrs

    # --- records ------------------------------------------------------------------------------
    root_ref = file_reference(c.ROOT, c.ROOT)
    extend_ref = file_reference(c.EXTEND, c.EXTEND)

    def seq(number: int) -> int:
        return number if 0 < number < c.FIRST_MFT_EXTENSION else 1

    def si(attributes: int, security_id: int) -> bytes:
        return StandardInformation(attributes, security_id, now).pack()

    def own_security(attributes: int, descriptor: bytes) -> list[bytes]:
        """An NTFS 1.2 standard information (48 bytes, no security id) and the file's own
        $SECURITY_DESCRIPTOR, as Windows writes them for the root, $Boot and records 12-15."""
        legacy = StandardInformation(attributes, 0, now).pack()[:LEGACY_SI_SIZE]
        return [
            resident_attribute(c.AT_STANDARD_INFORMATION, legacy, instance=0),
            resident_attribute(c.AT_SECURITY_DESCRIPTOR, descriptor, instance=0),
        ]

    def fn(parent: int, name: str, attributes: int, alloc_size: int = 0, size: int = 0,
           namespace: int = c.NAMESPACE_WIN32_AND_DOS) -> FileName:  # fmt: skip
        return FileName(parent, name, namespace, attributes, now, alloc_size, size)

    def data_runs(lcn: int, count: int) -> list[Run]:
        return [Run(lcn, count)]

    records: dict[int, bytes] = {}
    root_entries: list[tuple[str, int, bytes]] = []  # (name, file reference, FN value)

    def add_record(
        number: int,
        attrs: list[bytes],
        *,
        flags: int = c.RECORD_IN_USE,
        file_name: FileName | None = None,
        index_in: list[tuple[str, int, bytes]] | None = None,
        link_count: int = 1,
    ) -> None:
        """Assemble a record from attributes in type order, numbering their instances."""
        numbered = [_with_instance(a, i) for i, a in enumerate(attrs)]
        records[number] = build_file_record(
            number,
            numbered,
            record_size=MFT_RECORD_SIZE,
            sequence=seq(number),
            flags=flags,
            link_count=link_count,
        )
        if file_name is not None and index_in is not None:
            ref = file_reference(number, seq(number))
            index_in.append((file_name.name, ref, file_name.pack()))

    def system_file(
        number: int,
        name: str,
        security_id: int,
        data_attrs: list[bytes],
        *,
        si_attributes: int = HIDDEN_SYSTEM,
        fn_attributes: int | None = None,
        record_flags: int = c.RECORD_IN_USE,
        alloc_size: int = 0,
        size: int = 0,
        parent: int = root_ref,
        index_in: list[tuple[str, int, bytes]] | None = None,
        namespace: int = c.NAMESPACE_WIN32_AND_DOS,
        own_descriptor: bytes | None = None,
    ) -> None:
        fn_attrs = si_attributes if fn_attributes is None else fn_attributes
        name_attr = fn(parent, name, fn_attrs, alloc_size, size, namespace)
        file_name = resident_attribute(
            c.AT_FILE_NAME, name_attr.pack(), instance=0, resident_flags=c.RESIDENT_INDEXED
        )
        if own_descriptor is None:
            info = resident_attribute(
                c.AT_STANDARD_INFORMATION, si(si_attributes, security_id), instance=0
            )
            attrs = [info, file_name, *data_attrs]
        else:
            legacy_si, descriptor = own_security(si_attributes, own_descriptor)
            attrs = [legacy_si, file_name, descriptor, *data_attrs]
        add_record(
            number,
            attrs,
            flags=record_flags,
            file_name=name_attr,
            index_in=root_entries if index_in is None else index_in,
        )

    def nonres_data(lcn: int, count: int, size: int, name: str = "") -> bytes:
        return nonresident_attribute(
            c.AT_DATA,
            data_runs(lcn, count),
            instance=0,
            name=name,
            data_size=size,
            cluster_size=cluster_size,
        )

    mft_data_size = mft_records * MFT_RECORD_SIZE
    system_file(
        c.MFT,
        "$MFT",
        SEC_SYSTEM_READONLY,
        [
            nonres_data(mft_lcn, mft_clusters, mft_data_size),
            nonresident_attribute(
                c.AT_BITMAP,
                data_runs(mft_bitmap_lcn, mft_bitmap_clusters),
                instance=0,
                data_size=mft_bitmap_size,
                cluster_size=cluster_size,
            ),
        ],
        alloc_size=mft_clusters * cluster_size,
        size=mft_data_size,
    )
    mirr_size = MFT_MIRROR_RECORDS * MFT_RECORD_SIZE
    system_file(
        c.MFTMIRR,
        "$MFTMirr",
        SEC_SYSTEM_READONLY,
        [nonres_data(mirr_lcn, mirr_clusters, mirr_size)],
        alloc_size=mirr_clusters * cluster_size,
        size=mirr_size,
    )
    # $LogFile and $Bitmap are placed last (after every index block is known).
    volume_attrs = [
        resident_attribute(c.AT_VOLUME_NAME, label.encode("utf-16-le"), instance=0),
        resident_attribute(c.AT_VOLUME_INFORMATION, volume_information(3, 1, 0), instance=0),
        resident_attribute(c.AT_DATA, b"", instance=0),
    ]
    system_file(c.VOLUME, "$Volume", SEC_SYSTEM_READWRITE, volume_attrs)
    system_file(
        c.ATTRDEF,
        "$AttrDef",
        SEC_SYSTEM_READONLY,
        [nonres_data(attrdef_lcn, attrdef_clusters, len(attrdef))],
        alloc_size=attrdef_clusters * cluster_size,
        size=len(attrdef),
    )
    system_file(
        c.BOOT,
        "$Boot",
        0,
        [nonres_data(boot_lcn, boot_clusters, boot_clusters * cluster_size)],
        alloc_size=boot_clusters * cluster_size,
        size=boot_clusters * cluster_size,
        own_descriptor=SD_SYSTEM_READONLY,
    )
    system_file(
        c.BADCLUS,
        "$BadClus",
        SEC_SYSTEM_READONLY,
        [
            resident_attribute(c.AT_DATA, b"", instance=0),
            nonresident_attribute(
                c.AT_DATA,
                [Run(None, clusters)],
                instance=0,
                name="$Bad",
                data_size=clusters * cluster_size,
                cluster_size=cluster_size,
                initialized_size=0,
            ),
        ],
    )
    system_file(
        c.UPCASE,
        "$UpCase",
        SEC_SYSTEM_READONLY,
        [
            nonres_data(upcase_lcn, upcase_clusters, len(upcase)),
            resident_attribute(c.AT_DATA, upcase_info(upcase), instance=0, name="$Info"),
        ],
        alloc_size=upcase_clusters * cluster_size,
        size=len(upcase),
    )

    # $Secure: $SDS stream and the $SDH/$SII view indexes.
    view_attrs = HIDDEN_SYSTEM | c.VIEW_INDEX_PRESENT
    secure_fixed = [nonres_data(sds_lcn, sds_clusters, secure.data_size, "$SDS")]
    secure_index = _fit_indexes(
        [
            ("$SDH", secure.sdh_entries, c.COLLATION_NTOFS_SECURITY_HASH),
            ("$SII", secure.sii_entries, c.COLLATION_NTOFS_ULONG),
        ],
        fixed_bytes=_fixed_size(["$Secure"], secure_fixed),
        lay_out=lambda entries, coll, name, space: lay_out_index(entries, 0, coll, name, space),
    )
    system_file(
        c.SECURE,
        "$Secure",
        SEC_SYSTEM_READWRITE,
        secure_fixed + secure_index,
        si_attributes=view_attrs,
        record_flags=c.RECORD_IN_USE | c.RECORD_IS_VIEW_INDEX,
    )

    # $Extend and its children.
    extend_entries: list[tuple[str, int, bytes]] = []
    extend_children_attrs = view_attrs  # Windows 10: no archive bit (mkntfs sets it)
    child_flags = c.RECORD_IN_USE | c.RECORD_IN_EXTEND | c.RECORD_IS_VIEW_INDEX
    quota_o = [view_entry(SID_ADMINISTRATORS, struct.pack("<I", c.FIRST_SECURITY_ID))]
    quota_q = [
        view_entry(struct.pack("<I", owner), _quota_control(now, sid))
        for owner, sid in ((c.QUOTA_DEFAULTS_ID, b""), (c.FIRST_SECURITY_ID, SID_ADMINISTRATORS))
    ]
    children: tuple[tuple[int, str, list[tuple[str, list[bytes], int]]], ...] = (
        (c.FIRST_NORMAL, "$Quota", [("$O", quota_o, c.COLLATION_NTOFS_SID),
                                    ("$Q", quota_q, c.COLLATION_NTOFS_ULONG)]),
        (c.FIRST_NORMAL + 1, "$ObjId", [("$O", [], c.COLLATION_NTOFS_ULONGS)]),
        (c.FIRST_NORMAL + 2, "$Reparse", [("$R", [], c.COLLATION_NTOFS_ULONGS)]),
    )  # fmt: skip
    for number, name, indexes in children:
        system_file(
            number,
            name,
            SEC_SYSTEM_READWRITE,
            _fit_indexes(
                indexes,
                fixed_bytes=_fixed_size([name], []),
                lay_out=lambda e, coll, n, space: lay_out_index(e, 0, coll, n, space),
            ),
            si_attributes=extend_children_attrs,
            record_flags=child_flags,
            parent=extend_ref,
            index_in=extend_entries,
            namespace=c.NAMESPACE_POSIX,  # as Windows names $Extend's children
        )
    directory_flags = c.RECORD_IN_USE | c.RECORD_IS_DIRECTORY
    system_file(
        c.EXTEND,
        "$Extend",
        SEC_SYSTEM_READWRITE,
        lay_out_index(
            _sorted_dir_entries(extend_entries),
            c.AT_FILE_NAME,
            c.COLLATION_FILE_NAME,
            "$I30",
            _root_space(_fixed_size(["$Extend"], [])),
        ),
        fn_attributes=HIDDEN_SYSTEM | c.FILE_NAME_INDEX_PRESENT,
        record_flags=directory_flags,
    )

    # Reserved records 12-15: in use, no name (what Windows and mkntfs leave there).
    for number in range(c.FIRST_RESERVED, c.FIRST_MFT_EXTENSION):
        add_record(
            number,
            [
                *own_security(HIDDEN_SYSTEM, SD_SYSTEM_READWRITE),
                resident_attribute(c.AT_DATA, b"", instance=0),
            ],
            link_count=0,
        )

    # The scratch directories.
    next_record = c.FIRST_NORMAL + len(children)
    if scratch_directories:
        for name in SCRATCH_DIRECTORIES:
            name_attr = fn(
                root_ref,
                name,
                HIDDEN_SYSTEM | c.FILE_NAME_INDEX_PRESENT,
                namespace=c.NAMESPACE_WIN32,
            )
            attrs = [
                resident_attribute(
                    c.AT_STANDARD_INFORMATION,
                    si(HIDDEN_SYSTEM, SEC_SYSTEM_ONLY_DIRECTORY),
                    instance=0,
                ),
                resident_attribute(
                    c.AT_FILE_NAME, name_attr.pack(), instance=0, resident_flags=c.RESIDENT_INDEXED
                ),
                *lay_out_index([], c.AT_FILE_NAME, c.COLLATION_FILE_NAME, "$I30", 4096),
            ]
            add_record(
                next_record,
                attrs,
                flags=directory_flags,
                file_name=name_attr,
                index_in=root_entries,
            )
            next_record += 1
    if next_record > mft_records:
        raise NtfsError("the initial MFT is too small")

    # $Bitmap and $LogFile sizes are known now; place them last.
    bitmap_size = _ceil_div(_ceil_div(clusters, 8), 8) * 8
    bitmap_clusters = _ceil_div(bitmap_size, cluster_size)
    # The root's index block must be allocated before the bitmap is built: reserve it now.
    root_fixed = _fixed_size(
        ["."], [resident_attribute(c.AT_SECURITY_DESCRIPTOR, SD_ROOT, instance=0)]
    )
    root_name = fn(root_ref, ".", HIDDEN_SYSTEM | c.FILE_NAME_INDEX_PRESENT)
    root_entries.append((".", root_ref, root_name.pack()))
    system_file_names = {
        c.BITMAP: ("$Bitmap", bitmap_clusters * cluster_size, bitmap_size),
        c.LOGFILE: ("$LogFile", log_bytes, log_bytes),
    }
    for number, (name, alloc_size, size) in system_file_names.items():
        placeholder = fn(root_ref, name, HIDDEN_SYSTEM, alloc_size, size)
        root_entries.append((name, file_reference(number, seq(number)), placeholder.pack()))
    root_index = lay_out_index(
        _sorted_dir_entries(root_entries),
        c.AT_FILE_NAME,
        c.COLLATION_FILE_NAME,
        "$I30",
        _root_space(root_fixed),
    )
    bitmap_lcn = alloc.take(bitmap_clusters)
    log_clusters = log_bytes // cluster_size
    log_lcn = alloc.take(log_clusters)
    system_file(
        c.BITMAP,
        "$Bitmap",
        SEC_SYSTEM_READONLY,
        [nonres_data(bitmap_lcn, bitmap_clusters, bitmap_size)],
        alloc_size=bitmap_clusters * cluster_size,
        size=bitmap_size,
        index_in=[],
    )
    system_file(
        c.LOGFILE,
        "$LogFile",
        SEC_SYSTEM_READONLY,
        [nonres_data(log_lcn, log_clusters, log_bytes)],
        alloc_size=log_bytes,
        size=log_bytes,
        index_in=[],
    )
    root_si, root_sd = own_security(HIDDEN_SYSTEM, SD_ROOT)
    root_attrs = [
        root_si,
        resident_attribute(
            c.AT_FILE_NAME, root_name.pack(), instance=0, resident_flags=c.RESIDENT_INDEXED
        ),
        root_sd,
        *root_index,
    ]
    add_record(c.ROOT, root_attrs, flags=directory_flags)

    # --- write ----------------------------------------------------------------------------------
    boot = BootSector(
        bytes_per_sector=sector_size,
        sectors_per_cluster=spc,
        hidden_sectors=hidden_sectors,
        total_sectors=total_sectors,
        mft_lcn=mft_lcn,
        mftmirr_lcn=mirr_lcn,
        mft_record_size=MFT_RECORD_SIZE,
        index_block_size=INDEX_BLOCK_SIZE,
        serial=serial,
    )
    cs = cluster_size
    boot_area = bytearray(boot_clusters * cs)
    boot_area[:sector_size] = boot.pack()
    writer.write(boot_lcn * cs, bytes(boot_area))
    writer.write(partition_sectors * sector_size - sector_size, boot.pack())

    # Only records in use are written; Windows leaves the others unformatted (zero) too, and
    # NTFS formats a record when it first hands it out.
    mft = bytearray(mft_records * MFT_RECORD_SIZE)
    for number, record in records.items():
        mft[number * MFT_RECORD_SIZE : (number + 1) * MFT_RECORD_SIZE] = record
    writer.write(mft_lcn * cs, bytes(mft))
    writer.write(mirr_lcn * cs, bytes(mft[: mirr_clusters * cs]))
    mft_bitmap = bytearray(mft_bitmap_clusters * cs)
    for number in records:
        mft_bitmap[number // 8] |= 1 << (number % 8)
    writer.write(mft_bitmap_lcn * cs, bytes(mft_bitmap))
    writer.write(attrdef_lcn * cs, attrdef.ljust(attrdef_clusters * cs, b"\0"))
    writer.write(upcase_lcn * cs, upcase)
    writer.zero(sds_lcn * cs, sds_clusters * cs)
    for offset, chunk in secure.chunks:
        writer.write(sds_lcn * cs + offset, chunk)
    for lcn, block in index_blocks:
        writer.write(lcn * cs, block)

    bitmap = _cluster_bitmap(alloc.extents, clusters, bitmap_size)
    writer.zero(bitmap_lcn * cs, bitmap_clusters * cs)
    writer.write(bitmap_lcn * cs, bytes(bitmap))

    if fill_log:
        ff = b"\xff" * min(log_bytes, WRITE_CHUNK)
        for pos in range(2 * LOG_PAGE_SIZE, log_bytes, len(ff)):
            writer.write(log_lcn * cs + pos, ff[: log_bytes - pos])
    else:
        writer.zero(log_lcn * cs, log_bytes)
    page = restart_page(log_bytes, open_count=int.from_bytes(os.urandom(4), "little"))
    writer.write(log_lcn * cs, page)
    writer.write(log_lcn * cs + LOG_PAGE_SIZE, page)
    dev.flush()

    return NtfsLayout(
        sector_size=sector_size,
        cluster_size=cs,
        total_sectors=total_sectors,
        total_clusters=clusters,
        mft_lcn=mft_lcn,
        mftmirr_lcn=mirr_lcn,
        bitmap_lcn=bitmap_lcn,
        logfile_lcn=log_lcn,
        logfile_size=log_bytes,
        used_clusters=alloc.next,
        serial=serial,
        bytes_written=writer.written,
    )


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
