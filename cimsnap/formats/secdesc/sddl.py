"""SDDL text <-> self-relative security descriptors (MS-DTYP 2.5.1, sddl.h).

Old Windows layer tars store security descriptors as SDDL in the ``MSWINDOWS.sd`` record
(go-winio converted them with ConvertStringSecurityDescriptorToSecurityDescriptorW), and the NTFS
formatter and the hive writer state their fixed descriptors in SDDL.  This module implements the
subset such descriptors use:

* owner ``O:`` and group ``G:`` as SID strings (``S-1-5-32-544``) or the well-known two-letter
  aliases of sddl.h that need no domain (``BA``, ``SY``, ``LS``, ``NS``, ``BU``, ``WD``, ``AU``,
  ``CO``, ...); domain- and machine-relative aliases (``DA``, ``LA``...) are refused because a
  layer (or a fresh volume or hive) has no domain.  NT SERVICE\\TrustedInstaller has no alias:
  it is written as its SID :data:`TRUSTED_INSTALLER_SID`, and so is every SID without an alias.
* ``D:`` and ``S:`` with the flags ``P``, ``AI``, ``AR`` and ``NO_ACCESS_CONTROL`` (a NULL ACL);
* ACEs ``(type;flags;rights;;;sid)`` of the types ``A``, ``D``, ``AU``, ``AL``, ``ML``, the flags
  ``OI CI NP IO ID CR SA FA``, and rights as hex/octal/decimal numbers or strings such as ``FA``,
  ``FR``, ``FW``, ``FX``, ``GA``, ``GR``, ``GW``, ``GX``, ``RC``, ``SD``, ``WD``, ``WO``, ``KA``...

Object ACEs (``OA``...), conditional and resource-attribute ACEs are refused with a clear error.
The binary form is built with :class:`~cimsnap.formats.secdesc.descriptor.SecurityDescriptor`
(ACL revision 2, parts laid out as the caller's :class:`~cimsnap.formats.secdesc.descriptor.Layout`
says, SACL and DACL first by default).

:func:`sd_to_sddl` renders a binary descriptor for display the way Windows'
ConvertSecurityDescriptorToStringSecurityDescriptor does: aliases where one exists, whole-mask
names (``FA``, ``FR``...) on exact matches, else per-bit names when every bit has one, else hex.
"""

from __future__ import annotations

import re

from cimsnap.formats.secdesc.descriptor import (
    ACCESS_ALLOWED_ACE_TYPE,
    ACCESS_DENIED_ACE_TYPE,
    ACL_REVISION,
    SE_DACL_AUTO_INHERIT_REQ,
    SE_DACL_AUTO_INHERITED,
    SE_DACL_PRESENT,
    SE_DACL_PROTECTED,
    SE_SACL_AUTO_INHERIT_REQ,
    SE_SACL_AUTO_INHERITED,
    SE_SACL_PRESENT,
    SE_SACL_PROTECTED,
    SE_SELF_RELATIVE,
    SYSTEM_ALARM_ACE_TYPE,
    SYSTEM_AUDIT_ACE_TYPE,
    SYSTEM_MANDATORY_LABEL_ACE_TYPE,
    Ace,
    Acl,
    Layout,
    SecurityDescriptor,
    Sid,
    parse_security_descriptor,
)
from cimsnap.formats.secdesc.errors import SecurityDescriptorError

TRUSTED_INSTALLER_SID = "S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464"

# Well-known SID aliases of sddl.h that resolve without a domain (SIDs: MS-DTYP 2.4.2.4).
SID_ALIASES: dict[str, str] = {
    "AN": "S-1-5-7",  # anonymous logon
    "AO": "S-1-5-32-548",  # account operators
    "AU": "S-1-5-11",  # authenticated users
    "BA": "S-1-5-32-544",  # builtin administrators
    "BG": "S-1-5-32-546",  # builtin guests
    "BO": "S-1-5-32-551",  # backup operators
    "BU": "S-1-5-32-545",  # builtin users
    "CG": "S-1-3-1",  # creator group
    "CO": "S-1-3-0",  # creator owner
    "ED": "S-1-5-9",  # enterprise domain controllers
    "IU": "S-1-5-4",  # interactive
    "LS": "S-1-5-19",  # local service
    "NS": "S-1-5-20",  # network service
    "NU": "S-1-5-2",  # network
    "PO": "S-1-5-32-550",  # printer operators
    "PS": "S-1-5-10",  # principal self
    "PU": "S-1-5-32-547",  # power users
    "RC": "S-1-5-12",  # restricted code
    "RD": "S-1-5-32-555",  # remote desktop users
    "RE": "S-1-5-32-552",  # replicator
    "RU": "S-1-5-32-554",  # pre-Windows 2000 compatible access
    "SO": "S-1-5-32-549",  # server operators
    "SU": "S-1-5-6",  # service
    "SY": "S-1-5-18",  # local system
    "WD": "S-1-1-0",  # everyone
    "WR": "S-1-5-33",  # write restricted code
    "NO": "S-1-5-32-556",  # network configuration operators
    "MU": "S-1-5-32-558",  # performance monitor users
    "LU": "S-1-5-32-559",  # performance log users
    "IS": "S-1-5-32-568",  # IIS_IUSRS
    "CY": "S-1-5-32-569",  # cryptographic operators
    "OW": "S-1-3-4",  # owner rights
    "ER": "S-1-5-32-573",  # event log readers
    "CD": "S-1-5-32-574",  # certificate service DCOM access
    "AC": "S-1-15-2-1",  # all application packages
    "RA": "S-1-5-32-575",  # RDS remote access servers
    "ES": "S-1-5-32-576",  # RDS endpoint servers
    "MS": "S-1-5-32-577",  # RDS management servers
    "UD": "S-1-5-84-0-0-0-0-0",  # user-mode drivers
    "HA": "S-1-5-32-578",  # Hyper-V administrators
    "AA": "S-1-5-32-579",  # access control assistance operators
    "RM": "S-1-5-32-580",  # remote management users
    "AS": "S-1-18-1",  # authentication authority asserted identity
    "SS": "S-1-18-2",  # service asserted identity
    "LW": "S-1-16-4096",  # low mandatory level
    "ME": "S-1-16-8192",  # medium mandatory level
    "MP": "S-1-16-8448",  # medium-plus mandatory level
    "HI": "S-1-16-12288",  # high mandatory level
    "SI": "S-1-16-16384",  # system mandatory level
}
# Aliases relative to the domain or machine SID (sddl.h): not resolvable for a layer.
RELATIVE_SID_ALIASES = frozenset(
    {"DA", "DG", "DU", "DD", "DC", "CA", "SA", "EA", "PA", "RS", "RO", "CN", "AP", "KA", "EK"}
    | {"LA", "LG", "HO", "SH"}
)
_SID_TO_ALIAS = {sid: alias for alias, sid in SID_ALIASES.items()}

ACE_TYPES: dict[str, int] = {
    "A": ACCESS_ALLOWED_ACE_TYPE,
    "D": ACCESS_DENIED_ACE_TYPE,
    "AU": SYSTEM_AUDIT_ACE_TYPE,
    "AL": SYSTEM_ALARM_ACE_TYPE,
    "ML": SYSTEM_MANDATORY_LABEL_ACE_TYPE,
}
_ACE_TYPE_NAMES = {value: name for name, value in ACE_TYPES.items()}
UNSUPPORTED_ACE_TYPES = frozenset(
    {"OA", "OD", "OU", "OL", "XA", "XD", "XU", "ZA", "RA", "SP", "TL", "FL"}
)

# ACE flags in the order Windows prints them (winnt.h values).
ACE_FLAGS: dict[str, int] = {
    "OI": 0x01,  # OBJECT_INHERIT_ACE
    "CI": 0x02,  # CONTAINER_INHERIT_ACE
    "NP": 0x04,  # NO_PROPAGATE_INHERIT_ACE
    "IO": 0x08,  # INHERIT_ONLY_ACE
    "ID": 0x10,  # INHERITED_ACE
    "CR": 0x20,  # CRITICAL_ACE_FLAG
    "SA": 0x40,  # SUCCESSFUL_ACCESS_ACE_FLAG
    "FA": 0x80,  # FAILED_ACCESS_ACE_FLAG
}

# Rights that name one bit, in ascending bit order (the order Windows prints them).
BIT_RIGHTS: dict[str, int] = {
    "CC": 0x00000001,  # create child
    "DC": 0x00000002,  # delete child
    "LC": 0x00000004,  # list children
    "SW": 0x00000008,  # self write
    "RP": 0x00000010,  # read property
    "WP": 0x00000020,  # write property
    "DT": 0x00000040,  # delete tree
    "LO": 0x00000080,  # list object
    "CR": 0x00000100,  # control access
    "SD": 0x00010000,  # DELETE
    "RC": 0x00020000,  # READ_CONTROL
    "WD": 0x00040000,  # WRITE_DAC
    "WO": 0x00080000,  # WRITE_OWNER
    "GA": 0x10000000,  # GENERIC_ALL
    "GX": 0x20000000,  # GENERIC_EXECUTE
    "GW": 0x40000000,  # GENERIC_WRITE
    "GR": 0x80000000,  # GENERIC_READ
}
# Mandatory-label policy bits (winnt.h SYSTEM_MANDATORY_LABEL_NO_*_UP).
LABEL_RIGHTS: dict[str, int] = {"NW": 0x1, "NR": 0x2, "NX": 0x4}
# Rights that name a whole mask; printed only on an exact match (first match wins).
MASK_RIGHTS: dict[str, int] = {
    "FA": 0x001F01FF,  # FILE_ALL_ACCESS
    "FR": 0x00120089,  # FILE_GENERIC_READ
    "FW": 0x00120116,  # FILE_GENERIC_WRITE
    "FX": 0x001200A0,  # FILE_GENERIC_EXECUTE
    "KA": 0x000F003F,  # KEY_ALL_ACCESS
    "KR": 0x00020019,  # KEY_READ
    "KW": 0x00020006,  # KEY_WRITE
    "KX": 0x00020019,  # KEY_EXECUTE
}
ALL_RIGHTS = {**BIT_RIGHTS, **LABEL_RIGHTS, **MASK_RIGHTS}

NULL_ACL = "NO_ACCESS_CONTROL"
ACL_FLAGS = {"P": 0, "AR": 1, "AI": 2}  # printed in this order
_DACL_CONTROL = (SE_DACL_PROTECTED, SE_DACL_AUTO_INHERIT_REQ, SE_DACL_AUTO_INHERITED)
_SACL_CONTROL = (SE_SACL_PROTECTED, SE_SACL_AUTO_INHERIT_REQ, SE_SACL_AUTO_INHERITED)

# Hex authorities are printed with exactly 12 digits; taking 12 first keeps a following "D:"
# from being read as a hex digit.
_SID_STRING = re.compile(
    r"[Ss]-1-(?:0[xX][0-9A-Fa-f]{12}|0[xX][0-9A-Fa-f]{1,11}|[0-9]+)(?:-[0-9]+)*"
)
_NUMBER = re.compile(r"0[xX][0-9A-Fa-f]+|0[0-7]*|[1-9][0-9]*")


def _error(message: str) -> SecurityDescriptorError:
    return SecurityDescriptorError(f"SDDL: {message}")


def sid_from_string(text: str) -> Sid:
    """A SID from ``S-1-...`` or a domain-free two-letter alias."""
    if text in SID_ALIASES:
        text = SID_ALIASES[text]
    elif text in RELATIVE_SID_ALIASES:
        raise _error(f"SID alias {text!r} is relative to a domain or machine SID")
    if _SID_STRING.fullmatch(text) is None:
        raise _error(f"malformed SID {text!r}")
    fields = text.split("-")[2:]
    authority = int(fields[0], 0) if fields[0][:2].lower() == "0x" else int(fields[0])
    subs = [int(f) for f in fields[1:]]
    if authority >= 1 << 48 or any(s >= 1 << 32 for s in subs) or len(subs) > 15:
        raise _error(f"SID {text!r} out of range")
    return Sid(authority, tuple(subs))


def sid_to_string(sid: Sid, *, aliases: bool = True) -> str:
    text = str(sid)
    return _SID_TO_ALIAS.get(text, text) if aliases else text


def _parse_sid_token(text: str, pos: int) -> tuple[Sid, int]:
    match = _SID_STRING.match(text, pos)
    if match:
        return sid_from_string(match.group(0)), match.end()
    alias = text[pos : pos + 2]
    if len(alias) < 2:
        raise _error(f"missing SID at position {pos}")
    return sid_from_string(alias), pos + 2


def _parse_rights(text: str, ace_type: int) -> int:
    if text == "":
        return 0
    if _NUMBER.fullmatch(text):
        value = (
            int(text, 16) if text[:2].lower() == "0x" else int(text, 8 if text[0] == "0" else 10)
        )
        if value >= 1 << 32:
            raise _error(f"access mask {text!r} does not fit 32 bits")
        return value
    if len(text) % 2:
        raise _error(f"malformed rights {text!r}")
    mask = 0
    for index in range(0, len(text), 2):
        token = text[index : index + 2]
        if token not in ALL_RIGHTS:
            raise _error(f"unknown right {token!r}")
        mask |= ALL_RIGHTS[token]
    return mask


def _parse_ace(text: str) -> Ace:
    fields = [f.strip() for f in text.split(";")]
    if len(fields) != 6:
        raise _error(f"ACE ({text}) needs 6 fields, has {len(fields)}")
    type_text, flag_text, rights_text, guid, inherit_guid, sid_text = fields
    if type_text in UNSUPPORTED_ACE_TYPES:
        raise _error(f"ACE type {type_text!r} is not supported")
    if type_text not in ACE_TYPES:
        raise _error(f"unknown ACE type {type_text!r}")
    if guid or inherit_guid:
        raise _error(f"object GUIDs in a non-object ACE ({text})")
    ace_type = ACE_TYPES[type_text]
    flags = 0
    if len(flag_text) % 2:
        raise _error(f"malformed ACE flags {flag_text!r}")
    for index in range(0, len(flag_text), 2):
        token = flag_text[index : index + 2]
        if token not in ACE_FLAGS:
            raise _error(f"unknown ACE flag {token!r}")
        flags |= ACE_FLAGS[token]
    mask = _parse_rights(rights_text, ace_type)
    sid, end = _parse_sid_token(sid_text, 0)
    if end != len(sid_text):
        raise _error(f"malformed SID {sid_text!r}")
    return Ace(ace_type, flags, mask, sid)


def _parse_acl(text: str, pos: int, controls: tuple[int, int, int]) -> tuple[Acl | None, int, int]:
    """(ACL or None for NULL, control bits, new position) of the text after ``D:``/``S:``."""
    control = 0
    null = False
    while True:
        if text.startswith(NULL_ACL, pos):
            null = True
            pos += len(NULL_ACL)
        elif text.startswith(("AI", "AR"), pos):
            control |= controls[ACL_FLAGS[text[pos : pos + 2]]]
            pos += 2
        elif text.startswith("P", pos):
            control |= controls[ACL_FLAGS["P"]]
            pos += 1
        else:
            break
    aces = []
    while pos < len(text) and text[pos] == "(":
        end = text.find(")", pos)
        if end < 0:
            raise _error("unterminated ACE")
        body = text[pos + 1 : end]
        if "(" in body:
            raise _error("conditional ACEs are not supported")
        aces.append(_parse_ace(body))
        pos = end + 1
    if null and aces:
        raise _error(f"{NULL_ACL} with ACEs")
    return (None if null else Acl(ACL_REVISION, tuple(aces))), control, pos


def parse_sddl(text: str) -> SecurityDescriptor:
    """Parse SDDL into a :class:`SecurityDescriptor`; raises SecurityDescriptorError."""
    text = "".join(text.split())  # Windows ignores whitespace between tokens
    owner = group = None
    dacl = sacl = None
    control = SE_SELF_RELATIVE
    seen: set[str] = set()
    pos = 0
    while pos < len(text):
        tag = text[pos : pos + 2]
        if tag not in ("O:", "G:", "D:", "S:"):
            raise _error(f"unexpected {text[pos : pos + 10]!r} at position {pos}")
        if tag in seen:
            raise _error(f"{tag} given twice")
        seen.add(tag)
        pos += 2
        if tag == "O:":
            owner, pos = _parse_sid_token(text, pos)
        elif tag == "G:":
            group, pos = _parse_sid_token(text, pos)
        elif tag == "D:":
            dacl, bits, pos = _parse_acl(text, pos, _DACL_CONTROL)
            control |= bits | SE_DACL_PRESENT
        else:
            sacl, bits, pos = _parse_acl(text, pos, _SACL_CONTROL)
            control |= bits | SE_SACL_PRESENT
    return SecurityDescriptor(control, owner, group, sacl, dacl)


def sddl_to_sd(text: str, layout: Layout = Layout.ACLS_FIRST) -> bytes:
    """Self-relative binary security descriptor of an SDDL string, parts in ``layout`` order."""
    return parse_sddl(text).pack(layout)


def _rights_to_string(mask: int, ace_type: int) -> str:
    if mask == 0:
        return ""
    if ace_type == SYSTEM_MANDATORY_LABEL_ACE_TYPE:
        table = LABEL_RIGHTS
    else:
        for name, value in MASK_RIGHTS.items():
            if mask == value:
                return name
        table = BIT_RIGHTS
    names = [name for name, bit in table.items() if mask & bit]
    if sum(table[n] for n in names) == mask:
        return "".join(names)
    return f"{mask:#x}"


def _ace_to_string(ace: Ace) -> str:
    name = _ACE_TYPE_NAMES.get(ace.ace_type)
    if name is None or ace.sid is None:
        raise _error(f"ACE type {ace.ace_type:#04x} has no SDDL form here")
    if ace.extra:
        raise _error(f"ACE with {len(ace.extra)} bytes after its SID has no SDDL form")
    flags = [flag for flag, bit in ACE_FLAGS.items() if ace.flags & bit]
    if sum(ACE_FLAGS[f] for f in flags) != ace.flags:
        raise _error(f"ACE flags {ace.flags:#04x} have no SDDL form")
    rights = _rights_to_string(ace.mask, ace.ace_type)
    return f"({name};{''.join(flags)};{rights};;;{sid_to_string(ace.sid)})"


def _acl_to_string(acl: Acl | None, control: int, bits: tuple[int, int, int]) -> str:
    flags = "".join(name for name, index in ACL_FLAGS.items() if control & bits[index])
    if acl is None:
        return flags + NULL_ACL
    return flags + "".join(_ace_to_string(ace) for ace in acl.aces)


def descriptor_to_sddl(sd: SecurityDescriptor) -> str:
    out = []
    if sd.owner is not None:
        out.append("O:" + sid_to_string(sd.owner))
    if sd.group is not None:
        out.append("G:" + sid_to_string(sd.group))
    if sd.control & SE_DACL_PRESENT:
        out.append("D:" + _acl_to_string(sd.dacl, sd.control, _DACL_CONTROL))
    if sd.control & SE_SACL_PRESENT:
        out.append("S:" + _acl_to_string(sd.sacl, sd.control, _SACL_CONTROL))
    return "".join(out)


def sd_to_sddl(data: bytes) -> str:
    """SDDL text of a self-relative binary security descriptor (for display)."""
    return descriptor_to_sddl(parse_security_descriptor(data))
