"""The security descriptors of a fresh volume and the $Secure file ($SDS stream, $SII and $SDH).

Implements:

* the descriptors the formatter gives the system files, the root and the scratch directories,
  written in SDDL and built by :mod:`cimsnap.formats.secdesc` as self-relative
  SECURITY_DESCRIPTORs (MS-DTYP 2.4.6) laid out as Windows lays them out in $SDS (header, DACL,
  owner SID, group SID: :attr:`~cimsnap.formats.secdesc.Layout.ACLS_FIRST`);
* the $Secure storage of NTFS 3.x (ntfs-3g ``layout.h``: SECURITY_DESCRIPTOR_HEADER, SII/SDH
  index keys): each descriptor once in $SDS at a 16-byte aligned offset inside 256 KiB blocks,
  every block followed by its mirror copy; $SII keyed by security id, $SDH by (hash, id);
* the descriptor hash (ntfs-3g ``ntfs_security_hash``: rotate left 3, add each 32-bit word).

The descriptors a fresh scratch volume uses are named in :data:`VOLUME_DESCRIPTORS`; where they
come from is said next to each (the choice is isolated here).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cimsnap.formats.ntfs.constants import FIRST_SECURITY_ID
from cimsnap.formats.ntfs.index import view_entry
from cimsnap.formats.secdesc import Layout, sddl_to_sd, sid_from_string

# BUILTIN\Administrators, the owner $Quota's $O index maps to the first owner id.
SID_ADMINISTRATORS = sid_from_string("BA").pack()


def _volume_sd(sddl: str) -> bytes:
    return sddl_to_sd(sddl, Layout.ACLS_FIRST)


# The descriptors of a fresh scratch volume ----------------------------------------------------
#
# Source for the system files and the root: an NTFS volume formatted by Windows 10 (build 18363),
# in the test data (``vhdx/dissect_fixed.vhdx.gz``, from fox-it/dissect.hypervisor).  Windows gives
# the metadata files two descriptors kept in $Secure (ids 0x100 and 0x101), and the root
# directory, $Boot and records 12-15 their own $SECURITY_DESCRIPTOR attribute with an NTFS 1.2
# (48-byte) $STANDARD_INFORMATION.  The formatter does the same.
#
# FR = FILE_GENERIC_READ; 0x12019f = read and write without delete, owner or DAC changes.
SD_SYSTEM_READONLY = _volume_sd("O:SYG:BAD:(A;;FR;;;SY)(A;;FR;;;BA)")
SD_SYSTEM_READWRITE = _volume_sd("O:SYG:BAD:(A;;0x12019f;;;SY)(A;;0x12019f;;;BA)")
# Full control for Administrators and SYSTEM, modify (0x1301bf) for Authenticated Users, read
# and execute (0x1200a9) for Users; each also as an inherit-only generic ACE (OICIIO) for what
# is created below.
SD_ROOT = _volume_sd(
    "O:SYG:SYD:(A;;FA;;;BA)(A;OICIIO;GA;;;BA)(A;;FA;;;SY)(A;OICIIO;GA;;;SY)(A;;0x1301bf;;;AU)"
    "(A;OICIIO;SDGXGWGR;;;AU)(A;;0x1200a9;;;BU)(A;OICIIO;GXGR;;;BU)"
)
# "System Volume Information" and "WcSandboxState" (not on a volume Windows has not mounted yet,
# so not in that image): SYSTEM only, full control, inherited by everything below, protected from
# the root's inheritable ACEs, owned by Administrators.  What Windows shows for System Volume
# Information (``icacls``: only "NT AUTHORITY\SYSTEM:(OI)(CI)(F)"; DiscUtils' formatter writes
# O:BAG:SYD:(A;OICI;FA;;;SY)).  For WcSandboxState no public source shows its ACL; container
# tooling treats it like System Volume Information (both skipped as "metadata that needs extra
# privileges to read", e.g. buildkit's fsutil), so it gets the same one: a documented guess.
SD_SYSTEM_ONLY_DIRECTORY = _volume_sd("O:BAG:SYD:P(A;OICI;FA;;;SY)")

# The descriptors kept in $Secure, security ids from 0x100 in this order.
VOLUME_DESCRIPTORS: tuple[bytes, ...] = (
    SD_SYSTEM_READONLY,  # 0x100
    SD_SYSTEM_READWRITE,  # 0x101
    SD_SYSTEM_ONLY_DIRECTORY,  # 0x102
)


# $Secure ------------------------------------------------------------------------------------

SDS_BLOCK = 0x40000  # 256 KiB, each followed by its mirror
SDS_ALIGN = 16
# SECURITY_DESCRIPTOR_HEADER: hash, security id, offset in $SDS, length (header included).
_SDS_HEADER = struct.Struct("<IIQI")
SDS_HEADER_SIZE = _SDS_HEADER.size  # 20
# $SDH entries end with 4 bytes Windows fills with "II" in UTF-16 (ntfs-3g does the same).
SDH_PADDING = b"I\0I\0"


def security_hash(descriptor: bytes) -> int:
    h = 0
    for (word,) in struct.iter_unpack("<I", descriptor[: len(descriptor) // 4 * 4]):
        h = (((h << 3) | (h >> 29)) + word) & 0xFFFFFFFF
    return h


@dataclass(frozen=True)
class SecureStream:
    """$Secure contents: the $SDS bytes (sparse-friendly: ``chunks`` to write) and index entries."""

    data_size: int
    chunks: list[tuple[int, bytes]]  # (offset in $SDS, bytes) for the main and mirror copies
    sii_entries: list[bytes]
    sdh_entries: list[bytes]
    ids: list[int]


def build_secure(descriptors: tuple[bytes, ...] | list[bytes]) -> SecureStream:
    """Lay out ``descriptors`` (ids from 0x100 in order) in $SDS and index them."""
    body = bytearray()
    headers = []
    ids = []
    for i, sd in enumerate(descriptors):
        sec_id = FIRST_SECURITY_ID + i
        offset = len(body)
        header = _SDS_HEADER.pack(security_hash(sd), sec_id, offset, SDS_HEADER_SIZE + len(sd))
        entry = header + sd
        body += entry
        if i + 1 < len(descriptors):
            body += bytes(-len(body) % SDS_ALIGN)
        headers.append((security_hash(sd), sec_id, header))
        ids.append(sec_id)
    if len(body) > SDS_BLOCK:
        raise ValueError("too many security descriptors for one $SDS block")
    sii = [view_entry(struct.pack("<I", sec_id), header) for _h, sec_id, header in headers]
    sdh = [
        view_entry(struct.pack("<II", h, sec_id), header, padding=SDH_PADDING)
        for h, sec_id, header in sorted(headers, key=lambda t: (t[0], t[1]))
    ]
    chunks = [(0, bytes(body)), (SDS_BLOCK, bytes(body))]
    return SecureStream(SDS_BLOCK + len(body), chunks, sii, sdh, ids)


def parse_sds_header(data: bytes) -> tuple[int, int, int, int]:
    """(hash, security id, offset, length) from an $SII/$SDH entry's data."""
    return _SDS_HEADER.unpack_from(data)
