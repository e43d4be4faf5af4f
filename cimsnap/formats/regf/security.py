"""The security descriptor of a new hive's root key (the payload of its ``sk`` record).

A new hive's root key needs a valid security descriptor (spec "Key security"; Windows refuses
keys without one).  Public sources do not document which descriptor offreg gives ORCreateHive's
root (the hive offreg wrote in the test data, registry/offreg/testhive, has
``O:BAG:BAD:(A;CI;KA;;;SY)(A;CI;KA;;;BA)(A;CI;KR;;;WD)(A;CI;KR;;;RC)``, DACL first), so this is
our choice, in the usual shape of registry ACLs: owner BUILTIN\\Administrators, group
SYSTEM, DACL granting full control to SYSTEM and Administrators, read to Users, full control to
CREATOR OWNER on subkeys, every entry inherited by subkeys (CONTAINER_INHERIT_ACE).  The binary
form (MS-DTYP 2.4.6 self-relative SECURITY_DESCRIPTOR) is built by :mod:`cimsnap.formats.secdesc`,
parts laid out owner, group, DACL (:attr:`~cimsnap.formats.secdesc.Layout.SIDS_FIRST`) as this
module always has, so hives written before and after stay byte-identical.
"""

from __future__ import annotations

from cimsnap.formats.secdesc import Layout, sddl_to_sd

# KA = KEY_ALL_ACCESS (0xF003F), KR = KEY_READ (0x20019), GA = GENERIC_ALL; CI = container
# inherit, IO = inherit only.
DEFAULT_SECURITY_DESCRIPTOR_SDDL = (
    "O:BAG:SYD:(A;CI;KA;;;SY)(A;CI;KA;;;BA)(A;CI;KR;;;BU)(A;CIIO;GA;;;CO)"
)
DEFAULT_SECURITY_DESCRIPTOR = sddl_to_sd(DEFAULT_SECURITY_DESCRIPTOR_SDDL, Layout.SIDS_FIRST)
