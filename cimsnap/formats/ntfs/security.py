"""Security descriptors and the $Secure file ($SDS stream, $SII and $SDH indexes).

Implements:

* self-relative SECURITY_DESCRIPTORs (MS-DTYP 2.4.6) with a DACL of ACCESS_ALLOWED ACEs, laid out
  as Windows lays them out in $SDS (header, DACL, owner SID, group SID);
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

# SIDs (revision 1) --------------------------------------------------------------------------


def sid(authority: int, *subauthorities: int) -> bytes:
    return (
        struct.pack("<BB", 1, len(subauthorities))
        + authority.to_bytes(6, "big")
        + b"".join(struct.pack("<I", s) for s in subauthorities)
    )


SID_EVERYONE = sid(1, 0)  # WD, S-1-1-0
SID_CREATOR_OWNER = sid(3, 0)  # CO, S-1-3-0
SID_AUTHENTICATED_USERS = sid(5, 11)  # AU, S-1-5-11
SID_LOCAL_SYSTEM = sid(5, 18)  # SY, S-1-5-18
SID_ADMINISTRATORS = sid(5, 32, 544)  # BA, S-1-5-32-544
SID_USERS = sid(5, 32, 545)  # BU, S-1-5-32-545

# Access masks and ACE flags (winnt.h).
FILE_ALL_ACCESS = 0x001F01FF  # FA
FILE_GENERIC_READ = 0x00120089  # FR
FILE_READ_EXECUTE = 0x001200A9  # 0x1200a9: read & execute
FILE_READ_WRITE_NO_DELETE = 0x0012019F  # 0x12019f: read, write, no delete/owner/DAC
MODIFY_GENERIC = 0xE0010000  # SDGXGWGR: delete + generic read/write/execute (inherit-only)
FILE_MODIFY = 0x001301BF  # 0x1301bf: modify
READ_EXECUTE_GENERIC = 0xA0000000  # GXGR
GENERIC_ALL = 0x10000000  # GA
OBJECT_INHERIT = 0x01
CONTAINER_INHERIT = 0x02
INHERIT_ONLY = 0x08
ACCESS_ALLOWED = 0x00

# Control flags.
SE_DACL_PRESENT = 0x0004
SE_DACL_PROTECTED = 0x1000
SE_SELF_RELATIVE = 0x8000


@dataclass(frozen=True)
class Ace:
    sid: bytes
    mask: int
    flags: int = 0
    type: int = ACCESS_ALLOWED

    def pack(self) -> bytes:
        size = 8 + len(self.sid)
        return struct.pack("<BBHI", self.type, self.flags, size, self.mask) + self.sid


def security_descriptor(owner: bytes, group: bytes, dacl: list[Ace], *, control: int = 0) -> bytes:
    """A self-relative descriptor: header, DACL, owner, group (Windows' order in $SDS)."""
    aces = b"".join(a.pack() for a in dacl)
    acl = struct.pack("<BBHHH", 2, 0, 8 + len(aces), len(dacl), 0) + aces
    dacl_off = 20
    owner_off = dacl_off + len(acl)
    group_off = owner_off + len(owner)
    header = struct.pack(
        "<BBHIIII",
        1,
        0,
        SE_SELF_RELATIVE | SE_DACL_PRESENT | control,
        owner_off,
        group_off,
        0,
        dacl_off,
    )
    return header + acl + owner + group


# The descriptors of a fresh scratch volume ----------------------------------------------------
#
# Source for the system files and the root: an NTFS volume formatted by Windows 10 (build 18363),
# in the test data (``vhdx/dissect_fixed.vhdx.gz``, from fox-it/dissect.hypervisor).  Windows gives
# the metadata files two descriptors kept in $Secure (ids 0x100 and 0x101), and the root
# directory, $Boot and records 12-15 their own $SECURITY_DESCRIPTOR attribute with an NTFS 1.2
# (48-byte) $STANDARD_INFORMATION.  The formatter does the same.
SD_SYSTEM_READONLY = security_descriptor(  # O:SYG:BAD:(A;;FR;;;SY)(A;;FR;;;BA)
    SID_LOCAL_SYSTEM,
    SID_ADMINISTRATORS,
    [Ace(SID_LOCAL_SYSTEM, FILE_GENERIC_READ), Ace(SID_ADMINISTRATORS, FILE_GENERIC_READ)],
)
SD_SYSTEM_READWRITE = security_descriptor(  # O:SYG:BAD:(A;;0x12019f;;;SY)(A;;0x12019f;;;BA)
    SID_LOCAL_SYSTEM,
    SID_ADMINISTRATORS,
    [
        Ace(SID_LOCAL_SYSTEM, FILE_READ_WRITE_NO_DELETE),
        Ace(SID_ADMINISTRATORS, FILE_READ_WRITE_NO_DELETE),
    ],
)
_INHERIT_ONLY_ALL = OBJECT_INHERIT | CONTAINER_INHERIT | INHERIT_ONLY
SD_ROOT = security_descriptor(
    # O:SYG:SYD:(A;;FA;;;BA)(A;OICIIO;GA;;;BA)(A;;FA;;;SY)(A;OICIIO;GA;;;SY)(A;;0x1301bf;;;AU)
    #           (A;OICIIO;SDGXGWGR;;;AU)(A;;0x1200a9;;;BU)(A;OICIIO;GXGR;;;BU)
    SID_LOCAL_SYSTEM,
    SID_LOCAL_SYSTEM,
    [
        Ace(SID_ADMINISTRATORS, FILE_ALL_ACCESS),
        Ace(SID_ADMINISTRATORS, GENERIC_ALL, _INHERIT_ONLY_ALL),
        Ace(SID_LOCAL_SYSTEM, FILE_ALL_ACCESS),
        Ace(SID_LOCAL_SYSTEM, GENERIC_ALL, _INHERIT_ONLY_ALL),
        Ace(SID_AUTHENTICATED_USERS, FILE_MODIFY),
        Ace(SID_AUTHENTICATED_USERS, MODIFY_GENERIC, _INHERIT_ONLY_ALL),
        Ace(SID_USERS, FILE_READ_EXECUTE),
        Ace(SID_USERS, READ_EXECUTE_GENERIC, _INHERIT_ONLY_ALL),
    ],
)
# "System Volume Information" and "WcSandboxState" (not on a volume Windows has not mounted yet,
# so not in that image): SYSTEM only, full control, inherited by everything below, protected from
# the root's inheritable ACEs, owned by Administrators.  What Windows shows for System Volume
# Information (``icacls``: only "NT AUTHORITY\SYSTEM:(OI)(CI)(F)"; DiscUtils' formatter writes
# O:BAG:SYD:(A;OICI;FA;;;SY)).  For WcSandboxState no public source shows its ACL; container
# tooling treats it like System Volume Information (both skipped as "metadata that needs extra
# privileges to read", e.g. buildkit's fsutil), so it gets the same one: a documented guess.
SD_SYSTEM_ONLY_DIRECTORY = security_descriptor(  # O:BAG:SYD:P(A;OICI;FA;;;SY)
    SID_ADMINISTRATORS,
    SID_LOCAL_SYSTEM,
    [Ace(SID_LOCAL_SYSTEM, FILE_ALL_ACCESS, OBJECT_INHERIT | CONTAINER_INHERIT)],
    control=SE_DACL_PROTECTED,
)

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
