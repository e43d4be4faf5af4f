"""Layouts of the self-relative form: where pack() puts the parts after the header."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from cimsnap.formats.secdesc import (
    Ace,
    Acl,
    Layout,
    SecurityDescriptor,
    Sid,
    parse_security_descriptor,
    sddl_to_sd,
)

SID_WD = "01 01 000000000001 00000000"  # S-1-1-0
SID_SY = "01 01 000000000005 12000000"  # S-1-5-18
SID_BU = "01 02 000000000005 20000000 21020000"  # S-1-5-32-545
ACL_ALLOW_ALL = "02 00 1c00 0100 0000" + "00 00 1400 ff011f00" + SID_WD  # (A;;FA;;;WD)
ACL_AUDIT = "02 00 1c00 0100 0000" + "02 c0 1400 00000000" + SID_WD  # (AU;SAFA;;;;WD)


def test_sids_first_puts_owner_and_group_before_the_acls() -> None:
    expected = (
        "01 00 1480 14000000 24000000 30000000 4c000000"
        + SID_BU
        + SID_SY
        + ACL_AUDIT
        + ACL_ALLOW_ALL
    )
    sddl = "O:BUG:SYD:(A;;FA;;;WD)S:(AU;SAFA;;;;WD)"
    assert sddl_to_sd(sddl, Layout.SIDS_FIRST) == bytes.fromhex(expected)


def test_acls_first_is_the_default() -> None:
    sddl = "O:BUG:SYD:(A;;FA;;;WD)"
    expected = "01 00 0480 30000000 40000000 00000000 14000000" + ACL_ALLOW_ALL + SID_BU + SID_SY
    assert sddl_to_sd(sddl) == sddl_to_sd(sddl, Layout.ACLS_FIRST) == bytes.fromhex(expected)


sids = st.builds(
    Sid,
    st.integers(0, (1 << 48) - 1),
    st.lists(st.integers(0, (1 << 32) - 1), max_size=15).map(tuple),
)
masks = st.integers(0, 2**32 - 1)
aces = st.builds(Ace, st.sampled_from([0, 1, 2]), st.integers(0, 0xFF), masks, sids)
acls = st.lists(aces, max_size=4).map(lambda items: Acl(2, tuple(items)))


@settings(max_examples=100, deadline=None)
@given(
    st.one_of(st.none(), sids),
    st.one_of(st.none(), sids),
    st.one_of(st.none(), acls),
    st.one_of(st.none(), acls),
    st.sampled_from(list(Layout)),
)
def test_every_layout_packs_the_parts_back_to_back_in_its_order(
    owner: Sid | None, group: Sid | None, sacl: Acl | None, dacl: Acl | None, layout: Layout
) -> None:
    control = 0x8000 | (0x10 if sacl else 0) | (0x04 if dacl else 0)
    sd = SecurityDescriptor(control, owner, group, sacl, dacl)
    packed = sd.pack(layout)
    assert parse_security_descriptor(packed) == sd
    _rev, _sbz, _control, *offsets = struct.unpack_from("<BBHIIII", packed)
    at = dict(zip(("owner", "group", "sacl", "dacl"), offsets, strict=True))
    sizes = {
        "owner": owner.size if owner else 0,
        "group": group.size if group else 0,
        "sacl": len(sacl.pack()) if sacl else 0,
        "dacl": len(dacl.pack()) if dacl else 0,
    }
    pos = 20
    for part in layout.value:
        if sizes[part]:
            assert at[part] == pos
            pos += sizes[part]
        else:
            assert at[part] == 0
    assert len(packed) == pos
