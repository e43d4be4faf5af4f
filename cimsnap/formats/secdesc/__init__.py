"""Windows security descriptors, shared by the formats that store them (layer tars, hives, NTFS).

A self-relative SECURITY_DESCRIPTOR (MS-DTYP 2.4.6) with its SIDs (2.4.2), ACLs (2.4.5) and ACEs
(2.4.4), and the SDDL text form (MS-DTYP 2.5.1).  The model, binary parser and builder live in
:mod:`.descriptor`, SDDL in :mod:`.sddl`; formats keep only what is their own (NTFS ``$Secure``,
a hive's ``sk`` list).  Use::

    from cimsnap.formats.secdesc import Layout, parse_security_descriptor, sd_to_sddl, sddl_to_sd

    sd = sddl_to_sd("O:BAG:SYD:P(A;OICI;FA;;;SY)")          # SACL, DACL, owner, group (Windows)
    sd = sddl_to_sd("O:BAG:SYD:(A;CI;KA;;;SY)", Layout.SIDS_FIRST)  # owner, group, SACL, DACL
    parsed = parse_security_descriptor(sd)                 # SecurityDescriptor(control, owner,
    str(parsed.owner)                                      #   group, sacl, dacl) -> "S-1-5-32-544"
    sd_to_sddl(sd)                                         # Windows' rendering, aliases first

Malformed descriptors and unsupported SDDL raise :class:`SecurityDescriptorError` (a
:class:`~cimsnap.errors.FormatError`) with a one-line message.
"""

from __future__ import annotations

from cimsnap.formats.secdesc.descriptor import (
    Ace,
    Acl,
    Layout,
    SecurityDescriptor,
    Sid,
    parse_security_descriptor,
)
from cimsnap.formats.secdesc.errors import SecurityDescriptorError
from cimsnap.formats.secdesc.sddl import (
    TRUSTED_INSTALLER_SID,
    descriptor_to_sddl,
    parse_sddl,
    sd_to_sddl,
    sddl_to_sd,
    sid_from_string,
    sid_to_string,
)

__all__ = [
    "TRUSTED_INSTALLER_SID",
    "Ace",
    "Acl",
    "Layout",
    "SecurityDescriptor",
    "SecurityDescriptorError",
    "Sid",
    "descriptor_to_sddl",
    "parse_sddl",
    "parse_security_descriptor",
    "sd_to_sddl",
    "sddl_to_sd",
    "sid_from_string",
    "sid_to_string",
]
