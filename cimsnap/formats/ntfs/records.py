"""Multi-sector records, MFT records, attribute records and runlists (NTFS 3.1).

Implements, after the Linux-NTFS "NTFS documentation" and ntfs-3g ``layout.h``:

* the update sequence array ("fixups") that protects every 512-byte stride of FILE, INDX and
  RSTR records: the last two bytes of each stride are moved into the array and replaced by the
  update sequence number, so a torn write is detectable;
* the FILE record header (48 bytes + array) and its attribute records, resident (24-byte header)
  and non-resident (64-byte header with a mapping-pairs runlist);
* runlist ("mapping pairs") encoding: a header byte with the byte counts of the run length and
  of the signed LCN delta, sparse runs having no LCN.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from cimsnap.formats.ntfs.constants import AT_END, FIXUP_STRIDE
from cimsnap.formats.ntfs.errors import NtfsError


def align8(n: int) -> int:
    return (n + 7) & ~7


# ---------------------------------------------------------------------------------------------
# Update sequence array ("fixups")


def apply_fixups(record: bytearray, usa_offset: int, usn: int) -> None:
    """Protect ``record`` in place: store each stride's last word in the array, write ``usn``."""
    strides = len(record) // FIXUP_STRIDE
    struct.pack_into("<H", record, usa_offset, usn)
    for i in range(strides):
        end = (i + 1) * FIXUP_STRIDE - 2
        record[usa_offset + 2 + 2 * i : usa_offset + 4 + 2 * i] = record[end : end + 2]
        struct.pack_into("<H", record, end, usn)


def remove_fixups(record: bytearray, *, what: str, offset: int | None = None) -> None:
    """Check and undo the fixups of a record read from disk (raises on a torn/corrupt record)."""
    if len(record) < 8:
        raise NtfsError(f"{what} is truncated", offset=offset)
    usa_offset, usa_count = struct.unpack_from("<HH", record, 4)
    strides = len(record) // FIXUP_STRIDE
    if usa_count != strides + 1 or usa_offset < 8 or usa_offset + 2 * usa_count > FIXUP_STRIDE - 2:
        raise NtfsError(
            f"{what} has an invalid update sequence array ({usa_count} entries at "
            f"{usa_offset:#x} for {len(record)} bytes)",
            offset=offset,
        )
    usn = record[usa_offset : usa_offset + 2]
    for i in range(strides):
        end = (i + 1) * FIXUP_STRIDE - 2
        if record[end : end + 2] != usn:
            raise NtfsError(
                f"{what} failed its update sequence check in stride {i} (torn write?)",
                offset=offset,
            )
        record[end : end + 2] = record[usa_offset + 2 + 2 * i : usa_offset + 4 + 2 * i]


def usa_count_for(size: int) -> int:
    return size // FIXUP_STRIDE + 1


# ---------------------------------------------------------------------------------------------
# Runlists


@dataclass(frozen=True)
class Run:
    """``length`` clusters starting at ``lcn`` (None: a sparse run, reads as zeros)."""

    lcn: int | None
    length: int


def _signed_bytes(value: int) -> bytes:
    """Fewest little-endian bytes that hold ``value`` as a signed integer."""
    for n in range(1, 9):
        lo, hi = -(1 << (8 * n - 1)), (1 << (8 * n - 1)) - 1
        if lo <= value <= hi:
            return value.to_bytes(n, "little", signed=True)
    raise NtfsError(f"runlist value {value} does not fit in 8 bytes")


def encode_runlist(runs: list[Run]) -> bytes:
    """The mapping-pairs array of ``runs`` (terminated by a zero byte)."""
    out = bytearray()
    prev_lcn = 0
    for run in runs:
        if run.length <= 0:
            raise NtfsError(f"run of {run.length} clusters")
        length = _signed_bytes(run.length)
        if run.lcn is None:
            delta = b""
        else:
            delta = _signed_bytes(run.lcn - prev_lcn)
            prev_lcn = run.lcn
        out.append(len(delta) << 4 | len(length))
        out += length + delta
    out.append(0)
    return bytes(out)


def decode_runlist(data: bytes, *, what: str, max_lcn: int | None = None) -> list[Run]:
    """Parse a mapping-pairs array, checking sizes and (optionally) that LCNs are in range."""
    runs: list[Run] = []
    pos = 0
    lcn = 0
    while True:
        if pos >= len(data):
            raise NtfsError(f"{what}: runlist is not terminated")
        header = data[pos]
        if header == 0:
            return runs
        len_size, off_size = header & 0x0F, header >> 4
        if not 1 <= len_size <= 8 or off_size > 8:
            raise NtfsError(f"{what}: invalid runlist header byte {header:#04x}")
        pos += 1
        if pos + len_size + off_size > len(data):
            raise NtfsError(f"{what}: runlist runs past its attribute")
        length = int.from_bytes(data[pos : pos + len_size], "little", signed=True)
        pos += len_size
        if length <= 0:
            raise NtfsError(f"{what}: runlist has a run of {length} clusters")
        if off_size == 0:
            runs.append(Run(None, length))
            continue
        lcn += int.from_bytes(data[pos : pos + off_size], "little", signed=True)
        pos += off_size
        if lcn < 0 or (max_lcn is not None and lcn + length > max_lcn):
            raise NtfsError(f"{what}: run at LCN {lcn} (+{length}) is outside the volume")
        runs.append(Run(lcn, length))


# ---------------------------------------------------------------------------------------------
# Attribute records

_COMMON = struct.Struct("<IIBBHHH")  # type, length, non-resident, name length, name offset,
# flags, instance
_RESIDENT = struct.Struct("<IHBB")  # value length, value offset, resident flags, reserved
_NONRESIDENT = struct.Struct("<qqHB5xqqq")  # lowest VCN, highest VCN, mapping pairs offset,
# compression unit, reserved, allocated size, data size, initialized size
RESIDENT_HEADER = 24
NONRESIDENT_HEADER = 64


def resident_attribute(
    attr_type: int,
    value: bytes,
    *,
    instance: int,
    name: str = "",
    flags: int = 0,
    resident_flags: int = 0,
) -> bytes:
    name_b = name.encode("utf-16-le")
    name_off = RESIDENT_HEADER
    value_off = align8(name_off + len(name_b))
    length = align8(value_off + len(value))
    out = bytearray(length)
    _COMMON.pack_into(
        out, 0, attr_type, length, 0, len(name), name_off if name else 0, flags, instance
    )
    if not name:  # Windows still points the name offset past the header
        struct.pack_into("<H", out, 10, name_off)
    _RESIDENT.pack_into(out, 16, len(value), value_off, resident_flags, 0)
    out[name_off : name_off + len(name_b)] = name_b
    out[value_off : value_off + len(value)] = value
    return bytes(out)


def nonresident_attribute(
    attr_type: int,
    runs: list[Run],
    *,
    instance: int,
    data_size: int,
    cluster_size: int,
    name: str = "",
    flags: int = 0,
    initialized_size: int | None = None,
) -> bytes:
    name_b = name.encode("utf-16-le")
    name_off = NONRESIDENT_HEADER
    mp = encode_runlist(runs)
    mp_off = align8(name_off + len(name_b))
    length = align8(mp_off + len(mp))
    clusters = sum(r.length for r in runs)
    out = bytearray(length)
    _COMMON.pack_into(out, 0, attr_type, length, 1, len(name), name_off, flags, instance)
    _NONRESIDENT.pack_into(
        out,
        16,
        0,
        clusters - 1,
        mp_off,
        0,
        clusters * cluster_size,
        data_size,
        data_size if initialized_size is None else initialized_size,
    )
    out[name_off : name_off + len(name_b)] = name_b
    out[mp_off : mp_off + len(mp)] = mp
    return bytes(out)


@dataclass
class Attribute:
    """An attribute record as parsed from an MFT record."""

    type: int
    name: str
    flags: int
    instance: int
    resident: bool
    value: bytes = b""  # resident value
    runs: list[Run] = field(default_factory=list)
    lowest_vcn: int = 0
    highest_vcn: int = -1
    allocated_size: int = 0
    data_size: int = 0
    initialized_size: int = 0
    offset: int = 0  # of the record inside the MFT record
    length: int = 0

    @property
    def size(self) -> int:
        return len(self.value) if self.resident else self.data_size


def parse_attributes(
    record: bytes, first_offset: int, used: int, *, what: str, max_lcn: int | None = None
) -> list[Attribute]:
    """The attribute records of a (fixed-up) MFT record, with every offset checked."""
    attrs: list[Attribute] = []
    pos = first_offset
    while True:
        if pos + 4 > used:
            raise NtfsError(f"{what}: attributes run past the used part of the record")
        (attr_type,) = struct.unpack_from("<I", record, pos)
        if attr_type == AT_END:
            return attrs
        if pos + RESIDENT_HEADER > used:
            raise NtfsError(f"{what}: truncated attribute header at {pos:#x}")
        _t, length, nonres, name_len, name_off, flags, instance = _COMMON.unpack_from(record, pos)
        if length < RESIDENT_HEADER or length % 8 or pos + length > used:
            raise NtfsError(f"{what}: attribute {attr_type:#x} has invalid length {length}")
        body = record[pos : pos + length]
        if name_len and name_off + 2 * name_len > length:
            raise NtfsError(f"{what}: attribute {attr_type:#x} name lies outside it")
        name = body[name_off : name_off + 2 * name_len].decode("utf-16-le", "surrogatepass")
        attr = Attribute(attr_type, name, flags, instance, not nonres, offset=pos, length=length)
        label = f"{what} attribute {attr_type:#x}"
        if not nonres:
            value_len, value_off, _rflags, _r = _RESIDENT.unpack_from(body, 16)
            if value_off + value_len > length:
                raise NtfsError(f"{label}: resident value lies outside the attribute")
            attr.value = bytes(body[value_off : value_off + value_len])
        else:
            if length < NONRESIDENT_HEADER:
                raise NtfsError(f"{label}: non-resident header is truncated")
            low, high, mp_off, _cu, alloc, data, init = _NONRESIDENT.unpack_from(body, 16)
            if not NONRESIDENT_HEADER <= mp_off < length or low < 0 or high < low - 1:
                raise NtfsError(f"{label}: inconsistent non-resident header")
            if not 0 <= init <= data <= alloc or alloc % 512:
                raise NtfsError(f"{label}: inconsistent sizes {alloc}/{data}/{init}")
            attr.runs = decode_runlist(bytes(body[mp_off:]), what=label, max_lcn=max_lcn)
            mapped = sum(r.length for r in attr.runs)
            if mapped != high - low + 1:
                raise NtfsError(
                    f"{label}: runlist maps {mapped} clusters, header says {high - low + 1}"
                )
            attr.lowest_vcn, attr.highest_vcn = low, high
            attr.allocated_size, attr.data_size, attr.initialized_size = alloc, data, init
        attrs.append(attr)
        pos += length


# ---------------------------------------------------------------------------------------------
# FILE records

FILE_MAGIC = b"FILE"
_FILE_HEADER = struct.Struct("<4sHHQHHHHIIQHHI")  # magic, USA offset, USA count, LSN, sequence,
# link count, attributes offset, flags, bytes in use, bytes allocated, base record reference,
# next attribute instance, reserved, record number
FILE_USA_OFFSET = 0x30


@dataclass
class FileRecordHeader:
    sequence: int
    link_count: int
    attrs_offset: int
    flags: int
    bytes_in_use: int
    bytes_allocated: int
    base_record: int
    next_instance: int
    record_number: int


def build_file_record(
    number: int,
    attributes: list[bytes],
    *,
    record_size: int,
    sequence: int,
    flags: int,
    link_count: int = 0,
    usn: int = 1,
) -> bytes:
    """A complete, fixed-up FILE record holding ``attributes`` (already in type order)."""
    attrs_offset = align8(FILE_USA_OFFSET + 2 * usa_count_for(record_size))
    used = attrs_offset + sum(len(a) for a in attributes) + 8
    if used > record_size:
        raise NtfsError(f"MFT record {number} needs {used} bytes; records are {record_size}")
    out = bytearray(record_size)
    _FILE_HEADER.pack_into(
        out,
        0,
        FILE_MAGIC,
        FILE_USA_OFFSET,
        usa_count_for(record_size),
        0,
        sequence,
        link_count,
        attrs_offset,
        flags,
        used,
        record_size,
        0,
        len(attributes),
        0,
        number,
    )
    pos = attrs_offset
    for attr in attributes:
        out[pos : pos + len(attr)] = attr
        pos += len(attr)
    struct.pack_into("<I", out, pos, AT_END)
    apply_fixups(out, FILE_USA_OFFSET, usn)
    return bytes(out)


def empty_file_record(number: int, *, record_size: int, usn: int = 1) -> bytes:
    """A formatted but unused FILE record (what NTFS expects in free MFT slots)."""
    return build_file_record(number, [], record_size=record_size, sequence=0, flags=0, usn=usn)


def parse_file_record(
    raw: bytes, *, number: int, record_size: int, offset: int | None = None
) -> tuple[FileRecordHeader, bytearray]:
    """Check magic and fixups; return the header and the fixed-up record bytes."""
    what = f"MFT record {number}"
    if raw[:4] != FILE_MAGIC:
        raise NtfsError(f"{what} has no FILE signature", offset=offset)
    record = bytearray(raw)
    remove_fixups(record, what=what, offset=offset)
    (
        _magic,
        _usa_off,
        _usa_count,
        _lsn,
        sequence,
        link_count,
        attrs_offset,
        flags,
        used,
        allocated,
        base,
        next_instance,
        _reserved,
        _number,
    ) = _FILE_HEADER.unpack_from(record)
    if allocated != record_size or not attrs_offset < used <= record_size or attrs_offset % 8:
        raise NtfsError(f"{what} has inconsistent sizes", offset=offset)
    header = FileRecordHeader(
        sequence, link_count, attrs_offset, flags, used, allocated, base, next_instance, number
    )
    return header, record


def file_reference(number: int, sequence: int) -> int:
    return number | sequence << 48


def replace_attributes(
    record: bytes, header: FileRecordHeader, attributes: list[Attribute], new: dict[int, bytes]
) -> bytes:
    """Re-pack a fixed-up record with some attribute records (keyed by their offset) replaced.

    The header is kept (sequence, flags, links, LSN); the update sequence number is advanced.
    """
    body = bytearray()
    for attr in attributes:
        body += new.get(attr.offset, record[attr.offset : attr.offset + attr.length])
    used = header.attrs_offset + len(body) + 8
    if used > header.bytes_allocated:
        raise NtfsError(f"MFT record {header.record_number} would need {used} bytes")
    out = bytearray(header.bytes_allocated)
    out[: header.attrs_offset] = record[: header.attrs_offset]
    out[header.attrs_offset : header.attrs_offset + len(body)] = body
    struct.pack_into("<I", out, header.attrs_offset + len(body), AT_END)
    struct.pack_into("<I", out, 24, used)
    usa_offset = struct.unpack_from("<H", out, 4)[0]
    usn = struct.unpack_from("<H", out, usa_offset)[0] + 1
    if usn >= 0xFFFF:
        usn = 1
    apply_fixups(out, usa_offset, usn)
    return bytes(out)
