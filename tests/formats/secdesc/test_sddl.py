"""SDDL <-> binary security descriptors: vectors from MS-DTYP worked out by hand, a vector
published by other projects, Samba's independent implementation, and malformed input."""

from __future__ import annotations

import base64
import json
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cimsnap.formats.secdesc import (
    TRUSTED_INSTALLER_SID,
    Ace,
    Acl,
    SecurityDescriptor,
    SecurityDescriptorError,
    Sid,
    parse_sddl,
    parse_security_descriptor,
    sd_to_sddl,
    sddl_to_sd,
    sid_from_string,
)
from cimsnap.formats.secdesc.sddl import SID_ALIASES
from tests.conftest import require_tool


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# SIDs (MS-DTYP 2.4.2.2: revision, sub-authority count, 6-byte big-endian authority,
# little-endian 32-bit sub-authorities).
SID_WD = "01 01 000000000001 00000000"  # S-1-1-0
SID_SY = "01 01 000000000005 12000000"  # S-1-5-18
SID_BA = "01 02 000000000005 20000000 20020000"  # S-1-5-32-544
SID_BU = "01 02 000000000005 20000000 21020000"  # S-1-5-32-545
SID_LW = "01 01 000000000010 00100000"  # S-1-16-4096
SID_TI = "01 06 000000000005 50000000 b589fb38 1984c2cb 5c6c236d 5700776e c0026487"

VECTORS = [
    # Owner and group only: header, owner at 0x14, group at 0x24; control SE_SELF_RELATIVE.
    # Byte-identical to the "O:BUG:BU" descriptor go-containerregistry and ko publish
    # (generated there with .NET's RawSecurityDescriptor).
    (
        "O:BUG:BU",
        "01 00 0080 14000000 24000000 00000000 00000000" + SID_BU + SID_BU,
    ),
    # NULL DACL: SE_DACL_PRESENT with DACL offset 0.
    ("D:NO_ACCESS_CONTROL", "01 00 0480 00000000 00000000 00000000 00000000"),
    # Empty DACL: an 8-byte ACL with no ACEs.
    ("D:", "01 00 0480 00000000 00000000 00000000 14000000 02 00 0800 0000 0000"),
    # One ACE: ACCESS_ALLOWED, no flags, size 0x14, FILE_ALL_ACCESS, Everyone.
    # Layout: DACL first, then owner, then group.
    (
        "O:SYG:SYD:(A;;FA;;;WD)",
        "01 00 0480 30000000 3c000000 00000000 14000000"
        "02 00 1c00 0100 0000" + "00 00 1400 ff011f00" + SID_WD + SID_SY + SID_SY,
    ),
    # Protected, auto-inherited DACL with an inherited read/execute ACE, and a SACL with a
    # success+failure audit ACE: SACL comes before the DACL; control 0x9414.
    (
        "O:BAG:SYD:PAI(A;OICIID;0x1200a9;;;BU)S:(AU;SAFA;FA;;;WD)",
        "01 00 1494 50000000 60000000 14000000 30000000"
        "02 00 1c00 0100 0000"
        + "02 c0 1400 ff011f00"
        + SID_WD
        + "02 00 2000 0100 0000"
        + "00 13 1800 a9001200"
        + SID_BU
        + SID_BA
        + SID_SY,
    ),
    # Mandatory label: SACL with SYSTEM_MANDATORY_LABEL_ACE (0x11), NO_WRITE_UP, low level.
    (
        "S:(ML;;NW;;;LW)",
        "01 00 1080 00000000 00000000 14000000 00000000 02 00 1c00 0100 0000"
        "11 00 1400 01000000" + SID_LW,
    ),
    # TrustedInstaller (no alias): owner and a denied ACE with generic rights and CI|IO.
    (
        f"O:{TRUSTED_INSTALLER_SID}D:(D;CIIO;GAGR;;;{TRUSTED_INSTALLER_SID})",
        "01 00 0480 44000000 00000000 00000000 14000000"
        "02 00 3000 0100 0000" + "01 0a 2800 00000090" + SID_TI + SID_TI,
    ),
]


@pytest.mark.parametrize(("sddl", "expected"), VECTORS, ids=[v[0][:30] for v in VECTORS])
def test_sddl_to_binary_vectors(sddl: str, expected: str) -> None:
    assert sddl_to_sd(sddl) == h(expected)


@pytest.mark.parametrize(("sddl", "expected"), VECTORS, ids=[v[0][:30] for v in VECTORS])
def test_binary_to_sddl_vectors(sddl: str, expected: str) -> None:
    assert sd_to_sddl(h(expected)) == sddl


def test_published_vector_of_other_projects() -> None:
    vector = "AQAAgBQAAAAkAAAAAAAAAAAAAAABAgAAAAAABSAAAAAhAgAAAQIAAAAAAAUgAAAAIQIAAA=="
    assert sddl_to_sd("O:BUG:BU") == base64.b64decode(vector)


def test_trusted_installer_sid_bytes() -> None:
    assert sid_from_string(TRUSTED_INSTALLER_SID).pack() == h(SID_TI)
    assert str(Sid.unpack(h(SID_TI))) == TRUSTED_INSTALLER_SID


@pytest.mark.parametrize(
    ("alias", "sid"),
    [
        ("BA", "S-1-5-32-544"),
        ("SY", "S-1-5-18"),
        ("LS", "S-1-5-19"),
        ("NS", "S-1-5-20"),
        ("BU", "S-1-5-32-545"),
        ("WD", "S-1-1-0"),
        ("AU", "S-1-5-11"),
        ("CO", "S-1-3-0"),
    ],
)
def test_well_known_aliases(alias: str, sid: str) -> None:
    assert str(sid_from_string(alias)) == sid
    assert sd_to_sddl(sddl_to_sd(f"O:{sid}")) == f"O:{alias}"


def test_rights_strings_map_to_the_sddl_h_masks() -> None:
    def mask(rights: str) -> int:
        dacl = parse_sddl(f"D:(A;;{rights};;;WD)").dacl
        assert dacl is not None
        return dacl.aces[0].mask

    assert mask("FA") == 0x1F01FF
    assert mask("FR") == 0x120089
    assert mask("FW") == 0x120116
    assert mask("FX") == 0x1200A0
    assert mask("GAGRGWGX") == 0xF0000000
    assert mask("RCSDWDWO") == 0x000F0000
    assert mask("KA") == 0xF003F
    assert mask("0x1301bf") == 0x1301BF
    assert mask("0777") == 0o777  # octal, as MS-DTYP allows
    assert mask("4096") == 4096


def test_rendering_prefers_whole_mask_names_then_bits_then_hex() -> None:
    assert sd_to_sddl(sddl_to_sd("D:(A;;0x1f01ff;;;BA)")) == "D:(A;;FA;;;BA)"
    assert sd_to_sddl(sddl_to_sd("D:(A;;0x000f0000;;;BA)")) == "D:(A;;SDRCWDWO;;;BA)"
    assert sd_to_sddl(sddl_to_sd("D:(A;;GRGX;;;BA)")) == "D:(A;;GXGR;;;BA)"
    assert sd_to_sddl(sddl_to_sd("D:(A;;0x1301bf;;;BA)")) == "D:(A;;0x1301bf;;;BA)"
    assert sd_to_sddl(sddl_to_sd("O:S-1-5-21-1-2-3-500")) == "O:S-1-5-21-1-2-3-500"


def test_whitespace_between_tokens_is_ignored() -> None:
    assert sddl_to_sd(" O:BA G:SY D:P (A;;FA;;;SY) ") == sddl_to_sd("O:BAG:SYD:P(A;;FA;;;SY)")


@pytest.mark.parametrize(
    ("sddl", "message"),
    [
        ("O:DA", "relative to a domain"),
        ("O:LA", "relative to a domain"),
        ("O:ZZ", "malformed SID"),
        ("O:S-1-5-99999999999", "out of range"),
        ("O:S-1-" + "-".join(["1"] * 17), "out of range"),
        ("D:(A;;FA;;;SY", "unterminated ACE"),
        ("D:(A;;FA;;SY)", "needs 6 fields"),
        ("D:(Q;;FA;;;SY)", "unknown ACE type"),
        ("D:(OA;;FA;;;SY)", "not supported"),
        ("D:(A;XX;FA;;;SY)", "unknown ACE flag"),
        ("D:(A;;QQ;;;SY)", "unknown right"),
        ("D:(A;;0x100000000;;;SY)", "32 bits"),
        ("D:(A;;FA;abc;;SY)", "object GUIDs"),
        ("D:(XA;;FA;;;WD;(Member_of {SID(BA)}))", "not supported"),
        ("D:NO_ACCESS_CONTROL(A;;FA;;;SY)", "with ACEs"),
        ("O:SYO:SY", "given twice"),
        ("X:SY", "unexpected"),
    ],
)
def test_malformed_sddl(sddl: str, message: str) -> None:
    with pytest.raises(SecurityDescriptorError, match=message):
        sddl_to_sd(sddl)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:10], "shorter than the 20-byte header"),
        (lambda b: b"\x02" + b[1:], "revision 2"),
        (lambda b: b[:4] + (999).to_bytes(4, "little") + b[8:], "owner offset 999"),
        (lambda b: b[:16] + (8).to_bytes(4, "little") + b[20:], "DACL offset 8"),
        (lambda b: b[:20] + b"\x09" + b[21:], "ACL at 20 has revision 9"),
        (lambda b: b[:22] + b"\xff\x00" + b[24:], "runs past the end"),
        (lambda b: b[:24] + b"\x09\x00" + b[26:], "ACE 1 of the ACL"),
        (lambda b: b[:30] + b"\x02\x00" + b[32:], "has size 2"),
        (lambda b: b[:37] + b"\x10" + b[38:], "claims 16 sub-authorities"),
    ],
)
def test_malformed_binary_descriptors(mutate: object, message: str) -> None:
    good = sddl_to_sd("O:SYG:SYD:(A;;FA;;;WD)")
    bad = mutate(good)  # type: ignore[operator]
    with pytest.raises(SecurityDescriptorError, match=message):
        parse_security_descriptor(bad)


def test_unknown_ace_types_are_kept_verbatim() -> None:
    odd = Ace(0x09, 0, body=b"\x01\x00\x00\x00" + h(SID_WD) + b"cond")  # callback ACE
    sd = SecurityDescriptor(0x8004, None, None, None, Acl(2, (odd,))).pack()
    parsed = parse_security_descriptor(sd)
    assert parsed.dacl is not None and parsed.dacl.aces[0] == odd
    with pytest.raises(SecurityDescriptorError, match="no SDDL form"):
        sd_to_sddl(sd)


sids = st.builds(
    Sid,
    st.integers(0, (1 << 48) - 1),
    st.lists(st.integers(0, (1 << 32) - 1), max_size=15).map(tuple),
)


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(st.none(), sids),
    st.one_of(st.none(), sids),
    st.lists(
        st.tuples(st.sampled_from([0, 1]), st.integers(0, 0x1F), st.integers(0, 2**32 - 1), sids),
        max_size=6,
    ),
    st.lists(
        st.tuples(st.sampled_from([2, 3]), st.integers(0, 0xFF), st.integers(0, 2**32 - 1), sids),
        max_size=3,
    ),
    st.sampled_from([0, 0x1000, 0x0400, 0x1400, 0x0100]),
)
def test_binary_sddl_binary_round_trip(
    owner: Sid | None,
    group: Sid | None,
    dacl: list[tuple[int, int, int, Sid]],
    sacl: list[tuple[int, int, int, Sid]],
    flags: int,
) -> None:
    sd = SecurityDescriptor(
        0x8000 | 0x14 | flags,
        owner,
        group,
        Acl(2, tuple(Ace(*a) for a in sacl)),
        Acl(2, tuple(Ace(*a) for a in dacl)),
    )
    binary = sd.pack()
    assert sddl_to_sd(sd_to_sddl(binary)) == binary
    assert parse_security_descriptor(binary) == sd


def test_every_alias_round_trips() -> None:
    for alias, sid in SID_ALIASES.items():
        assert sd_to_sddl(sddl_to_sd(f"O:{alias}G:{sid}")) == f"O:{alias}G:{alias}"


# -- Samba (python3-samba, an independent SDDL and NDR implementation) ----------------------

SAMBA_SCRIPT = r"""
import json, sys
from samba.dcerpc import security
from samba.ndr import ndr_pack, ndr_unpack
domain = security.dom_sid("S-1-5-21-1-2-3")
out = []
for job in json.load(sys.stdin):
    if job["op"] == "from_sddl":
        out.append(ndr_pack(security.descriptor.from_sddl(job["sddl"], domain)).hex())
    else:
        sd = ndr_unpack(security.descriptor, bytes.fromhex(job["hex"]))
        def acl(a):
            if a is None:
                return None
            return [[x.type, x.flags, x.access_mask, str(x.trustee)] for x in a.aces]
        out.append({"owner": str(sd.owner_sid) if sd.owner_sid else None,
                    "group": str(sd.group_sid) if sd.group_sid else None,
                    "type": sd.type, "dacl": acl(sd.dacl), "sacl": acl(sd.sacl)})
json.dump(out, sys.stdout)
"""

SAMBA_SDDL = [
    "O:BAG:SYD:PAI(A;OICI;GA;;;SY)(A;OICIIO;GA;;;CO)(D;;0x1200a9;;;BU)",
    "O:S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464G:SYD:P(A;;0x1301bf;;;AU)",
    "O:LSG:NSD:AI(A;ID;0x1f01ff;;;BA)S:(AU;SAFA;0x1f01ff;;;WD)",
    "G:BUD:(A;CI;RCWDWOSD;;;S-1-5-21-9-8-7-1001)",
]


def _samba(jobs: list[dict[str, str]]) -> list[object]:
    python = require_tool("/usr/bin/python3")
    probe = subprocess.run([python, "-c", "import samba.dcerpc.security"], capture_output=True)
    if probe.returncode:
        pytest.skip("python3-samba is not installed (./run.sh test installs it)")
    proc = subprocess.run(
        [python, "-c", SAMBA_SCRIPT],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def _fields(sd: SecurityDescriptor) -> dict[str, object]:
    def acl(a: Acl | None) -> object:
        return None if a is None else [[x.ace_type, x.flags, x.mask, str(x.sid)] for x in a.aces]

    return {
        "owner": str(sd.owner) if sd.owner else None,
        "group": str(sd.group) if sd.group else None,
        "type": sd.control,
        "dacl": acl(sd.dacl),
        "sacl": acl(sd.sacl),
    }


def test_samba_decodes_our_binary_descriptors() -> None:
    ours = [sddl_to_sd(text) for text in SAMBA_SDDL]
    decoded = _samba([{"op": "ndr_unpack", "hex": b.hex()} for b in ours])
    for binary, theirs in zip(ours, decoded, strict=True):
        assert theirs == _fields(parse_security_descriptor(binary))


def test_our_parser_reads_samba_descriptors_as_we_read_the_sddl() -> None:
    packed = _samba([{"op": "from_sddl", "sddl": text} for text in SAMBA_SDDL])
    for text, hex_sd in zip(SAMBA_SDDL, packed, strict=True):
        theirs = parse_security_descriptor(bytes.fromhex(str(hex_sd)))
        assert _fields(theirs) == _fields(parse_sddl(text))
        assert sd_to_sddl(bytes.fromhex(str(hex_sd))) == sd_to_sddl(sddl_to_sd(text))
