"""Extend an NTFS volume to fill its (grown) partition, as ``ntfsresize``/Windows' extend do.

What changes (and nothing else, so it also works on a differencing disk, writing little):

1. ``$Bitmap`` grows to cover the new clusters; if it needs more clusters they are taken from
   the start of the new space (which is free by definition) and appended to its runlist.  The
   bits that marked "past the end" in the old last byte are cleared, the new tail is marked.
2. ``$BadClus:$Bad`` (a sparse stream as long as the volume) gets a sparse run for the new
   clusters.
3. The backup boot sector is written to the partition's new last sector, then the primary boot
   sector gets the new sector count (the commit point: until then the old volume is intact).

Pages are compared before writing, so regions that already read as wanted (the zeros of a grown
VHDX) are not written.  The $FILE_NAME copies of $Bitmap's size are left as they are: NTFS keeps
those duplicated sizes lazily for system files, and Windows refreshes them itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from cimsnap.formats.blockdev import BlockDevice
from cimsnap.formats.ntfs import constants as c
from cimsnap.formats.ntfs.bitmaps import set_bits
from cimsnap.formats.ntfs.boot import BootSector
from cimsnap.formats.ntfs.errors import NtfsError
from cimsnap.formats.ntfs.reader import NtfsVolume
from cimsnap.formats.ntfs.records import Run, nonresident_attribute, replace_attributes

PAGE = 4096
WINDOW = 1 << 20  # bitmap bytes rewritten per step


@dataclass(frozen=True)
class ExtendResult:
    old_clusters: int
    new_clusters: int
    bitmap_clusters_added: int
    cluster_size: int

    @property
    def new_size(self) -> int:
        return self.new_clusters * self.cluster_size

    @property
    def changed(self) -> bool:
        return self.new_clusters != self.old_clusters


def extend_volume(dev: BlockDevice) -> ExtendResult:
    """Grow the NTFS volume at the start of ``dev`` to fill ``dev`` (its partition)."""
    vol = NtfsVolume(dev)
    boot = vol.boot
    bps, spc, cs = boot.bytes_per_sector, boot.sectors_per_cluster, boot.cluster_size
    old_clusters = boot.total_clusters
    new_sectors = dev.size // bps - 1
    new_clusters = new_sectors // spc
    if new_sectors < boot.total_sectors:
        raise NtfsError(
            f"the partition ({dev.size} bytes) is smaller than the volume "
            f"({(boot.total_sectors + 1) * bps} bytes); NTFS volumes are not shrunk here"
        )
    if new_sectors == boot.total_sectors:
        return ExtendResult(old_clusters, old_clusters, 0, cs)
    if vol.volume_flags() & c.VOLUME_IS_DIRTY:
        raise NtfsError("the volume is marked dirty; check it (chkdsk) before extending it")
    state = vol.logfile_state()
    if state is not None and not state.clean:
        raise NtfsError("the volume's $LogFile is not clean; mount it cleanly before extending")

    # 1. $Bitmap
    bitmap_rec = vol.record(c.BITMAP)
    bitmap_attr = bitmap_rec.require(c.AT_DATA)
    if bitmap_attr.resident:
        raise NtfsError("$Bitmap is resident")
    old_size = bitmap_attr.data_size
    new_size = -(-new_clusters // 64) * 8
    have = sum(r.length for r in bitmap_attr.runs)
    need = -(-new_size // cs)
    runs = list(bitmap_attr.runs)
    added = max(0, need - have)
    if added:
        if added > new_clusters - old_clusters:
            raise NtfsError("not enough new space for the larger $Bitmap")
        last = runs[-1]
        if last.lcn is not None and last.lcn + last.length == old_clusters:
            runs[-1] = Run(last.lcn, last.length + added)
        else:
            runs.append(Run(old_clusters, added))
    # Rewrite the bitmap from the first byte that changes, a window at a time (bounded memory):
    # old bytes kept, old past-the-end bits cleared, the new bitmap clusters and the new
    # past-the-end bits set, zeros up to the end of its last cluster.
    start = old_clusters // 8 // PAGE * PAGE
    end = need * cs
    for window in range(start, end, WINDOW):
        n = min(WINDOW, end - window)
        data = bytearray(n)
        old_part = min(n, max(0, old_size - window))
        if old_part:
            data[:old_part] = _read_runs(vol, bitmap_attr.runs, window, old_part)
        for first, count, value in (
            (old_clusters, old_size * 8 - old_clusters, False),
            (old_clusters, added, True),
            (new_clusters, new_size * 8 - new_clusters, True),
        ):
            lo, hi = max(first, window * 8), min(first + count, (window + n) * 8, new_size * 8)
            if lo < hi:
                set_bits(data, lo - window * 8, hi - lo, value)
        if window + n > new_size:  # bytes past the data size within the last cluster
            data[max(0, new_size - window) :] = bytes(n - max(0, new_size - window))
        _write_runs(vol, runs, window, bytes(data))

    # 2. $BadClus:$Bad
    badclus = vol.record(c.BADCLUS)
    bad = badclus.require(c.AT_DATA, "$Bad")
    if bad.resident:
        raise NtfsError("$BadClus:$Bad is resident")
    bad_runs = list(bad.runs)
    grow = new_clusters - sum(r.length for r in bad_runs)
    if grow > 0:
        if bad_runs and bad_runs[-1].lcn is None:
            bad_runs[-1] = Run(None, bad_runs[-1].length + grow)
        else:
            bad_runs.append(Run(None, grow))
    new_bad = nonresident_attribute(
        c.AT_DATA,
        bad_runs,
        instance=bad.instance,
        name="$Bad",
        data_size=new_clusters * cs,
        cluster_size=cs,
        initialized_size=bad.initialized_size,
        flags=bad.flags,
    )
    _write_record(
        vol,
        c.BADCLUS,
        replace_attributes(badclus.raw, badclus.header, badclus.attributes, {bad.offset: new_bad}),
    )
    new_bitmap_attr = nonresident_attribute(
        c.AT_DATA,
        runs,
        instance=bitmap_attr.instance,
        data_size=new_size,
        cluster_size=cs,
        flags=bitmap_attr.flags,
    )
    _write_record(
        vol,
        c.BITMAP,
        replace_attributes(
            bitmap_rec.raw,
            bitmap_rec.header,
            bitmap_rec.attributes,
            {bitmap_attr.offset: new_bitmap_attr},
        ),
    )

    # 3. Boot sectors: backup at the new end first, then the primary (the commit point).
    new_boot = BootSector(
        bytes_per_sector=bps,
        sectors_per_cluster=spc,
        hidden_sectors=boot.hidden_sectors,
        total_sectors=new_sectors,
        mft_lcn=boot.mft_lcn,
        mftmirr_lcn=boot.mftmirr_lcn,
        mft_record_size=boot.mft_record_size,
        index_block_size=boot.index_block_size,
        serial=boot.serial,
    )
    primary = bytearray(dev.read_at(0, bps))
    packed = new_boot.pack()
    # Keep the original boot code and anything after the BPB; replace the sector count only.
    primary[0x28:0x30] = packed[0x28:0x30]
    dev.write_at(new_sectors * bps, bytes(primary))
    dev.flush()
    dev.write_at(0, bytes(primary))
    dev.flush()
    return ExtendResult(old_clusters, new_clusters, added, cs)


def _write_runs(vol: NtfsVolume, runs: list[Run], offset: int, data: bytes) -> None:
    """Write ``data`` at byte ``offset`` of the stream described by ``runs``, page by page,
    skipping pages whose content is already what we want."""
    cs = vol.cluster_size
    pos = 0
    while pos < len(data):
        stream_off = offset + pos
        vcn = stream_off // cs
        lcn = _lcn_of(runs, vcn)
        n = min(len(data) - pos, cs - stream_off % cs, PAGE - stream_off % PAGE)
        dev_off = lcn * cs + stream_off % cs
        chunk = data[pos : pos + n]
        if vol.dev.read_at(dev_off, n) != chunk:
            vol.dev.write_at(dev_off, chunk)
        pos += n


def _read_runs(vol: NtfsVolume, runs: list[Run], offset: int, length: int) -> bytes:
    cs = vol.cluster_size
    out = bytearray()
    while len(out) < length:
        pos = offset + len(out)
        n = min(length - len(out), cs - pos % cs)
        out += vol.dev.read_at(_lcn_of(runs, pos // cs) * cs + pos % cs, n)
    return bytes(out)


def _lcn_of(runs: list[Run], vcn: int) -> int:
    start = 0
    for run in runs:
        if vcn < start + run.length:
            if run.lcn is None:
                raise NtfsError("$Bitmap has a sparse run")
            return run.lcn + vcn - start
        start += run.length
    raise NtfsError("$Bitmap runlist is shorter than its size")


def _write_record(vol: NtfsVolume, number: int, raw: bytes) -> None:
    vol.dev.write_at(vol.record_offset(number), raw)
