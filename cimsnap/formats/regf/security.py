"""Self-relative security descriptors for new hives (the ``sk`` record's payload).

A new hive's root key needs a valid security descriptor (spec "Key security"; Windows refuses
keys without one).  Public sources do not say which descriptor offreg gives ORCreateHive's root,
so this is our choice, in the usual shape of registry ACLs: owner BUILTIN\\Administrators, group
SYSTEM, DACL granting full control to SYSTEM and Administrators, read to Users, full control to
CREATOR OWNER on subkeys, every entry inherited by subkeys (CONTAINER_INHERIT_ACE).
Layout: MS-DTYP 2.4.6 SECURITY_DESCRIPTOR (self-relative), 2.4.5 ACL, 2.4.4.2 ACCESS_ALLOWED_ACE,
2.4.2.2 SID.
"""

from __future__ import annotations

import struct

SE_DACL_PRESENT = 0x0004
SE_SELF_RELATIVE = 0x8000
ACCESS_ALLOWED_ACE_TYPE = 0
CONTAINER_INHERIT_ACE = 0x02
INHERIT_ONLY_ACE = 0x08
KEY_ALL_ACCESS = 0x000F003F
KEY_READ = 0x00020019
GENERIC_ALL = 0x10000000
ACL_REVISION = 2
SD_REVISION = 1


def sid(text: str) -> bytes:
    """Binary SID for ``S-1-<authority>-<sub>...``."""
    parts = text.split("-")
    if len(parts) < 3 or parts[0] != "S":
        raise ValueError(f"not a SID: {text}")
    revision, authority, subs = int(parts[1]), int(parts[2]), [int(p) for p in parts[3:]]
    return (
        struct.pack("<BB", revision, len(subs))
        + authority.to_bytes(6, "big")
        + struct.pack(f"<{len(subs)}I", *subs)
    )


def ace(mask: int, trustee: str, flags: int = CONTAINER_INHERIT_ACE) -> bytes:
    body = struct.pack("<I", mask) + sid(trustee)
    return struct.pack("<BBH", ACCESS_ALLOWED_ACE_TYPE, flags, 4 + len(body)) + body


def acl(entries: list[bytes]) -> bytes:
    body = b"".join(entries)
    return struct.pack("<BBHHH", ACL_REVISION, 0, 8 + len(body), len(entries), 0) + body


def security_descriptor(owner: str, group: str, dacl: bytes) -> bytes:
    owner_sid, group_sid = sid(owner), sid(group)
    header = 20
    owner_at = header
    group_at = owner_at + len(owner_sid)
    dacl_at = group_at + len(group_sid)
    return (
        struct.pack(
            "<BBHIIII",
            SD_REVISION,
            0,
            SE_DACL_PRESENT | SE_SELF_RELATIVE,
            owner_at,
            group_at,
            0,
            dacl_at,
        )
        + owner_sid
        + group_sid
        + dacl
    )


DEFAULT_SECURITY_DESCRIPTOR = security_descriptor(
    "S-1-5-32-544",
    "S-1-5-18",
    acl(
        [
            ace(KEY_ALL_ACCESS, "S-1-5-18"),
            ace(KEY_ALL_ACCESS, "S-1-5-32-544"),
            ace(KEY_READ, "S-1-5-32-545"),
            ace(GENERIC_ALL, "S-1-3-0", CONTAINER_INHERIT_ACE | INHERIT_ONLY_ACE),
        ]
    ),
)


def owner_sid_string(descriptor: bytes) -> str | None:
    """The owner SID of a self-relative descriptor as ``S-1-...`` (None if absent/malformed)."""
    if len(descriptor) < 20:
        return None
    (owner_at,) = struct.unpack_from("<I", descriptor, 4)
    if owner_at == 0 or owner_at + 8 > len(descriptor):
        return None
    revision, count = descriptor[owner_at], descriptor[owner_at + 1]
    if owner_at + 8 + 4 * count > len(descriptor):
        return None
    authority = int.from_bytes(descriptor[owner_at + 2 : owner_at + 8], "big")
    subs = struct.unpack_from(f"<{count}I", descriptor, owner_at + 8)
    return "-".join(["S", str(revision), str(authority), *map(str, subs)])
