"""Self-relative Windows security descriptors: SIDs, ACEs, ACLs (MS-DTYP 2.4.2, 2.4.4-2.4.6).

Layer tars carry each file's security descriptor as a self-relative SECURITY_DESCRIPTOR (the
``MSWINDOWS.rawsd`` record), hive ``sk`` records and NTFS ``$SDS`` hold the same structure.
:func:`parse_security_descriptor` checks one structurally (header, offsets inside the buffer, SID
and ACL shapes, ACE sizes) and returns its parts; ACE types it does not know are kept as raw
bytes, so any descriptor Windows writes passes.  :meth:`SecurityDescriptor.pack` builds the
binary form; where the parts go after the 20-byte header is a choice, named in :class:`Layout`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum

from cimsnap.formats.secdesc.errors import SecurityDescriptorError

# SECURITY_DESCRIPTOR_RELATIVE (MS-DTYP 2.4.6): Revision, Sbz1, Control, OffsetOwner,
# OffsetGroup, OffsetSacl, OffsetDacl.
SD_HEADER = struct.Struct("<BBHIIII")
SD_REVISION = 1
# ACL header (MS-DTYP 2.4.5): AclRevision, Sbz1, AclSize, AceCount, Sbz2.
ACL_HEADER = struct.Struct("<BBHHH")
ACL_REVISION = 2
ACL_REVISION_DS = 4
VALID_ACL_REVISIONS = (2, 3, 4)
# ACE_HEADER (MS-DTYP 2.4.4.1): AceType, AceFlags, AceSize; then the access mask.
ACE_HEADER = struct.Struct("<BBH")
ACCESS_MASK = struct.Struct("<I")
SID_MAX_SUB_AUTHORITIES = 15

# SECURITY_DESCRIPTOR control bits (MS-DTYP 2.4.6).
SE_OWNER_DEFAULTED = 0x0001
SE_GROUP_DEFAULTED = 0x0002
SE_DACL_PRESENT = 0x0004
SE_DACL_DEFAULTED = 0x0008
SE_SACL_PRESENT = 0x0010
SE_SACL_DEFAULTED = 0x0020
SE_DACL_AUTO_INHERIT_REQ = 0x0100
SE_SACL_AUTO_INHERIT_REQ = 0x0200
SE_DACL_AUTO_INHERITED = 0x0400
SE_SACL_AUTO_INHERITED = 0x0800
SE_DACL_PROTECTED = 0x1000
SE_SACL_PROTECTED = 0x2000
SE_RM_CONTROL_VALID = 0x4000
SE_SELF_RELATIVE = 0x8000

# ACE types whose body is ACCESS_MASK + SID (MS-DTYP 2.4.4.2-2.4.4.13).
ACCESS_ALLOWED_ACE_TYPE = 0x00
ACCESS_DENIED_ACE_TYPE = 0x01
SYSTEM_AUDIT_ACE_TYPE = 0x02
SYSTEM_ALARM_ACE_TYPE = 0x03
SYSTEM_MANDATORY_LABEL_ACE_TYPE = 0x11
MASK_AND_SID_ACE_TYPES = frozenset(
    {
        ACCESS_ALLOWED_ACE_TYPE,
        ACCESS_DENIED_ACE_TYPE,
        SYSTEM_AUDIT_ACE_TYPE,
        SYSTEM_ALARM_ACE_TYPE,
        SYSTEM_MANDATORY_LABEL_ACE_TYPE,
    }
)


class Layout(Enum):
    """Where :meth:`SecurityDescriptor.pack` puts the parts after the header, in order.

    Readers follow the offsets, so any order is valid (MS-DTYP 2.4.6 does not fix one); the
    formats that keep descriptors byte for byte need a particular one.
    """

    # SACL, DACL, owner, group: Windows' RtlMakeSelfRelativeSD (as ReactOS documents it) copies
    # the parts in this order, NTFS keeps descriptors so in $SDS (checked byte for byte against a
    # volume Windows 10 formatted), and the root key descriptor of the hive offreg wrote in the
    # test data (registry/offreg/testhive) is laid out so.
    ACLS_FIRST = ("sacl", "dacl", "owner", "group")
    # Owner, group, SACL, DACL: MS-DTYP's field order.  regf/security.py has always laid out the
    # root descriptor of a new hive so; kept so that hives cimsnap writes stay byte-identical.
    SIDS_FIRST = ("owner", "group", "sacl", "dacl")


def _error(message: str) -> SecurityDescriptorError:
    return SecurityDescriptorError(f"security descriptor: {message}")


@dataclass(frozen=True)
class Sid:
    """A SID (MS-DTYP 2.4.2): 48-bit identifier authority and up to 15 sub-authorities."""

    authority: int
    sub_authorities: tuple[int, ...] = ()
    revision: int = 1

    def pack(self) -> bytes:
        return (
            bytes([self.revision, len(self.sub_authorities)])
            + self.authority.to_bytes(6, "big")
            + struct.pack(f"<{len(self.sub_authorities)}I", *self.sub_authorities)
        )

    @property
    def size(self) -> int:
        return 8 + 4 * len(self.sub_authorities)

    @classmethod
    def unpack(cls, data: bytes, offset: int = 0) -> Sid:
        if offset < 0 or offset + 8 > len(data):
            raise _error(f"SID at {offset} runs past the end ({len(data)} bytes)")
        revision, count = data[offset], data[offset + 1]
        if revision != 1:
            raise _error(f"SID at {offset} has revision {revision}")
        if count > SID_MAX_SUB_AUTHORITIES:
            raise _error(f"SID at {offset} claims {count} sub-authorities")
        end = offset + 8 + 4 * count
        if end > len(data):
            raise _error(f"SID at {offset} runs past the end ({len(data)} bytes)")
        authority = int.from_bytes(data[offset + 2 : offset + 8], "big")
        subs = struct.unpack_from(f"<{count}I", data, offset + 8)
        return cls(authority, tuple(subs), revision)

    def __str__(self) -> str:
        """``S-1-5-32-544`` (MS-DTYP 2.4.2.1); large authorities in hex as Windows prints them."""
        auth = str(self.authority) if self.authority < 1 << 32 else f"0x{self.authority:012X}"
        return "-".join(["S", str(self.revision), auth, *map(str, self.sub_authorities)])


@dataclass(frozen=True)
class Ace:
    """An ACE.  For mask-and-SID types ``mask``/``sid`` are set and ``extra`` holds any bytes
    after the SID; for other types ``body`` holds everything after the ACE header."""

    ace_type: int
    flags: int
    mask: int = 0
    sid: Sid | None = None
    extra: bytes = b""
    body: bytes | None = None

    def pack(self) -> bytes:
        if self.body is not None:
            payload = self.body
        else:
            if self.sid is None:
                raise _error(f"ACE of type {self.ace_type:#x} without a SID")
            payload = ACCESS_MASK.pack(self.mask) + self.sid.pack() + self.extra
        size = ACE_HEADER.size + len(payload)
        if size > 0xFFFF:
            raise _error("ACE larger than 64 KiB")
        return ACE_HEADER.pack(self.ace_type, self.flags, size) + payload


@dataclass(frozen=True)
class Acl:
    revision: int = ACL_REVISION
    aces: tuple[Ace, ...] = ()

    def pack(self) -> bytes:
        body = b"".join(ace.pack() for ace in self.aces)
        size = ACL_HEADER.size + len(body)
        if size > 0xFFFF:
            raise _error("ACL larger than 64 KiB")
        return ACL_HEADER.pack(self.revision, 0, size, len(self.aces), 0) + body

    @classmethod
    def unpack(cls, data: bytes, offset: int) -> Acl:
        if offset + ACL_HEADER.size > len(data):
            raise _error(f"ACL at {offset} runs past the end ({len(data)} bytes)")
        revision, _sbz1, size, count, _sbz2 = ACL_HEADER.unpack_from(data, offset)
        if revision not in VALID_ACL_REVISIONS:
            raise _error(f"ACL at {offset} has revision {revision}")
        end = offset + size
        if size < ACL_HEADER.size or end > len(data):
            raise _error(f"ACL at {offset} of {size} bytes runs past the end ({len(data)} bytes)")
        aces = []
        pos = offset + ACL_HEADER.size
        for index in range(count):
            if pos + ACE_HEADER.size > end:
                raise _error(f"ACE {index} of the ACL at {offset} runs past the ACL")
            ace_type, flags, ace_size = ACE_HEADER.unpack_from(data, pos)
            if ace_size < ACE_HEADER.size or pos + ace_size > end:
                raise _error(f"ACE {index} of the ACL at {offset} has size {ace_size}")
            payload = data[pos + ACE_HEADER.size : pos + ace_size]
            aces.append(_unpack_ace(ace_type, flags, payload, pos))
            pos += ace_size
        return cls(revision, tuple(aces))


def _unpack_ace(ace_type: int, flags: int, payload: bytes, pos: int) -> Ace:
    if ace_type not in MASK_AND_SID_ACE_TYPES:
        return Ace(ace_type, flags, body=payload)
    if len(payload) < ACCESS_MASK.size + 8:
        raise _error(f"ACE at {pos} is too small for a mask and a SID")
    (mask,) = ACCESS_MASK.unpack_from(payload, 0)
    sid = Sid.unpack(payload, ACCESS_MASK.size)
    extra = payload[ACCESS_MASK.size + sid.size :]
    return Ace(ace_type, flags, mask, sid, extra)


@dataclass(frozen=True)
class SecurityDescriptor:
    """A security descriptor's parts.  ``dacl``/``sacl`` None with the PRESENT bit set is a NULL
    ACL; without the bit, the ACL is absent."""

    control: int = SE_SELF_RELATIVE
    owner: Sid | None = None
    group: Sid | None = None
    sacl: Acl | None = None
    dacl: Acl | None = None

    def pack(self, layout: Layout = Layout.ACLS_FIRST) -> bytes:
        """Self-relative binary form, parts placed in ``layout`` order."""
        parts = {
            "owner": self.owner.pack() if self.owner else b"",
            "group": self.group.pack() if self.group else b"",
            "sacl": self.sacl.pack() if self.sacl else b"",
            "dacl": self.dacl.pack() if self.dacl else b"",
        }
        offsets = dict.fromkeys(parts, 0)
        body = b""
        for name in layout.value:
            if parts[name]:
                offsets[name] = SD_HEADER.size + len(body)
                body += parts[name]
        control = self.control | SE_SELF_RELATIVE
        header = SD_HEADER.pack(
            SD_REVISION,
            0,
            control,
            offsets["owner"],
            offsets["group"],
            offsets["sacl"],
            offsets["dacl"],
        )
        return header + body


def parse_security_descriptor(data: bytes) -> SecurityDescriptor:
    """Parse and check a self-relative security descriptor; raises SecurityDescriptorError."""
    if len(data) < SD_HEADER.size:
        raise _error(f"{len(data)} bytes is shorter than the 20-byte header")
    revision, _sbz1, control, off_owner, off_group, off_sacl, off_dacl = SD_HEADER.unpack_from(data)
    if revision != SD_REVISION:
        raise _error(f"revision {revision} (expected 1)")
    if not control & SE_SELF_RELATIVE:
        raise _error("not in self-relative form (SE_SELF_RELATIVE clear)")
    for name, off in (("owner", off_owner), ("group", off_group), ("SACL", off_sacl)):
        _check_offset(name, off, len(data))
    _check_offset("DACL", off_dacl, len(data))
    owner = Sid.unpack(data, off_owner) if off_owner else None
    group = Sid.unpack(data, off_group) if off_group else None
    sacl = Acl.unpack(data, off_sacl) if off_sacl and control & SE_SACL_PRESENT else None
    dacl = Acl.unpack(data, off_dacl) if off_dacl and control & SE_DACL_PRESENT else None
    return SecurityDescriptor(control, owner, group, sacl, dacl)


def _check_offset(name: str, offset: int, size: int) -> None:
    if offset and (offset < SD_HEADER.size or offset >= size):
        raise _error(f"{name} offset {offset} is outside the {size}-byte descriptor")
