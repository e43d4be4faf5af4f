"""``cimsnap bcd``: bcdedit's commands and spelling, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cimsnap.cli.main import main
from cimsnap.formats.bcd import BcdStore

LOADER = "{3b7a9a1a-5a6f-4a7c-9c43-4c1f1fb3f5a0}"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_hcsshim_sequence_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bcd = str(tmp_path / "BCD")
    steps = [
        ["createstore"],
        ["create", "{bootmgr}", "/d", "Windows Boot Manager"],
        ["create", LOADER, "/d", "Microsoft Windows", "/application", "osloader"],
        ["set", "{bootmgr}", "default", LOADER],
        ["set", "{default}", "restartonfailure", "yes"],
        [
            "create",
            "{763e9fea-502d-434f-aad9-5fabe9c91a7b}",
            "/d",
            "CimFS Device Options",
            "/device",
        ],
        [
            "set",
            "{763e9fea-502d-434f-aad9-5fabe9c91a7b}",
            "cimfsparentdevice",
            "vmbus={c63c9bdf-5fa5-4208-b03f-6b458b365592}",
        ],
        [
            "set",
            "{763e9fea-502d-434f-aad9-5fabe9c91a7b}",
            "cimfsrootdirectory",
            "\\cim-layers\\1.cim",
        ],
        [
            "create",
            "{e1787220-d17f-49e7-977a-d8fe4c8537e2}",
            "/d",
            "Composite Device Options",
            "/device",
        ],
        [
            "set",
            "{e1787220-d17f-49e7-977a-d8fe4c8537e2}",
            "primarydevice",
            "gpt_partition={11111111-2222-3333-4444-555555555555};{66666666-7777-8888-9999-aaaaaaaaaaaa}",
        ],
        [
            "set",
            "{e1787220-d17f-49e7-977a-d8fe4c8537e2}",
            "secondarydevice",
            "cimfs={b890454c-80de-4e98-a7ab-56b74b4fbd0c},{763e9fea-502d-434f-aad9-5fabe9c91a7b}",
        ],
        ["set", "{default}", "device", "composite=0,{e1787220-d17f-49e7-977a-d8fe4c8537e2}"],
        ["set", "{default}", "osdevice", "composite=0,{e1787220-d17f-49e7-977a-d8fe4c8537e2}"],
        ["set", "{default}", "path", "\\UtilityVM\\Files\\Windows\\System32\\winload.efi"],
        ["set", "{default}", "systemroot", "\\UtilityVM\\Files\\Windows"],
    ]
    for step in steps:
        code, out, err = run(capsys, "bcd", "--store", bcd, *step)
        assert code == 0, (step, err)
        assert "successfully" in out
    # the same bytes as the library's configure_cim_boot
    from cimsnap.formats.bcd import configure_cim_boot

    reference = BcdStore.create()
    reference.create_object("{bootmgr}", "Windows Boot Manager")
    reference.create_object(LOADER, "Microsoft Windows", "osloader")
    reference.set_element("{bootmgr}", "default", LOADER)
    configure_cim_boot(
        reference,
        "11111111-2222-3333-4444-555555555555",
        "66666666-7777-8888-9999-aaaaaaaaaaaa",
        "cim-layers\\1.cim",
    )
    ours = BcdStore.open(bcd)
    for obj in reference.enum():
        assert [(e.id, e.stored) for e in obj.elements] == [
            (e.id, e.stored) for e in ours.get_object("{" + str(obj.guid) + "}").elements
        ]

    code, out, _err = run(capsys, "bcd", "--store", bcd, "enum", "{default}")
    assert code == 0
    assert out.splitlines()[:3] == [
        "Windows Boot Loader",
        "-------------------",
        "identifier              {default}",
    ]
    assert "device                  composite=0,{e1787220-d17f-49e7-977a-d8fe4c8537e2}" in out
    assert "restartonfailure        Yes" in out

    code, out, _err = run(capsys, "bcd", "--store", bcd, "enum", "--json")
    data = json.loads(out)
    assert len(data["objects"]) == 4
    default = next(o for o in data["objects"] if o["identifier"] == "{default}")
    device = next(e for e in default["elements"] if e["name"] == "device")
    assert device["id"] == "11000001" and device["format"] == "device"
    assert device["value"]["kind"] == "CompositeDevice"

    code, _out, _err = run(
        capsys, "bcd", "--store", bcd, "deletevalue", "{default}", "restartonfailure"
    )
    assert code == 0
    assert BcdStore.open(bcd).get_object("{default}").element("restartonfailure") is None


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bcd = tmp_path / "BCD"
    BcdStore.create().save(bcd)
    cases = [
        ["enum", "{bootmgr}"],
        ["set", "{default}", "device", "boot"],
        ["createstore"],
        ["set", "{ffffffff-ffff-ffff-ffff-ffffffffffff}", "path", "x"],
    ]
    for case in cases:
        code, _out, err = run(capsys, "bcd", "--store", str(bcd), *case)
        assert code == 1, case
        assert err.startswith("cimsnap: error: "), err
        assert len(err.strip().splitlines()) == 1, err
    garbage = tmp_path / "NOTBCD"
    garbage.write_bytes(b"garbage" * 100)
    proc = subprocess.run(
        [sys.executable, "-m", "cimsnap.cli", "bcd", "--store", str(garbage), "enum"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "not a registry hive" in proc.stderr
