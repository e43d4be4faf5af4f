"""``cimsnap hive``: create, set, get, delete, merge, export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cimsnap.cli.main import main
from cimsnap.formats.regf import Hive, LayerSemantics, RegType


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_create_set_get_delete(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "SYSTEM")
    assert run(capsys, "hive", "create", path)[0] == 0
    assert run(capsys, "hive", "create", path)[0] == 1  # exists
    sets = [
        [
            "ControlSet001\\Control",
            "--name",
            "BootContainerGuid",
            "--type",
            "REG_SZ",
            "--data",
            "{b890454c-80de-4e98-a7ab-56b74b4fbd0c}",
        ],
        ["ControlSet001\\Services\\wcifs", "--name", "Start", "--type", "REG_DWORD", "--data", "4"],
        ["Setup", "--name", "BootPathOverride", "--type", "REG_SZ", "--data", "\\Windows\\"],
        ["Multi", "--name", "m", "--type", "REG_MULTI_SZ", "--data", "a", "--data", "b c"],
        ["Multi", "--type", "REG_EXPAND_SZ", "--data", "%SystemRoot%"],
        ["Multi", "--name", "q", "--type", "REG_QWORD", "--data", "0xffffffffffffffff"],
        ["Multi", "--name", "bin", "--type", "REG_BINARY", "--data", "de ad be ef"],
        ["Multi", "--name", "none", "--type", "REG_NONE"],
    ]
    for args in sets:
        code, _out, err = run(capsys, "hive", "set", path, *args)
        assert code == 0, err
    hive = Hive.open(path)
    assert hive.key("controlset001\\control").value("bootcontainerguid").decoded() == (  # type: ignore[union-attr]
        "{b890454c-80de-4e98-a7ab-56b74b4fbd0c}"
    )
    assert hive.key("ControlSet001\\Services\\wcifs").value("Start").decoded() == 4  # type: ignore[union-attr]
    multi = hive.key("Multi")
    assert multi.value("m").decoded() == ["a", "b c"]  # type: ignore[union-attr]
    assert multi.value("").type == RegType.REG_EXPAND_SZ  # type: ignore[union-attr]
    assert multi.value("bin").data == b"\xde\xad\xbe\xef"  # type: ignore[union-attr]
    assert multi.value("none").data == b""  # type: ignore[union-attr]

    code, out, _err = run(capsys, "hive", "get", path, "Multi", "--json")
    data = json.loads(out)
    assert data["path"] == "Multi" and data["subkeys"] == []
    values = {v["name"]: v for v in data["values"]}
    assert values["m"]["data"] == ["a", "b c"] and values["m"]["type"] == "REG_MULTI_SZ"
    assert values["q"]["data"] == 0xFFFFFFFFFFFFFFFF
    assert values["bin"]["data"] == "deadbeef" and values["bin"]["raw"] == "deadbeef"
    code, out, _err = run(capsys, "hive", "get", path, "Multi", "--name", "m")
    assert out.strip() == "m    REG_MULTI_SZ    a\\0b c"
    code, out, _err = run(capsys, "hive", "get", path, "ControlSet001")
    assert out.splitlines() == [
        "\\ControlSet001",
        "\\ControlSet001\\Control",
        "\\ControlSet001\\Services",
    ]

    assert run(capsys, "hive", "delete", path, "Multi", "--name", "m")[0] == 0
    assert Hive.open(path).key("Multi").value("m") is None
    assert run(capsys, "hive", "delete", path, "Multi")[0] == 0
    assert Hive.open(path).find_key("Multi") is None
    assert run(capsys, "hive", "delete", path, "Multi")[0] == 1
    assert Hive.open(path).check() == []


def test_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hive = Hive.create(root_name="SOFTWARE")
    hive.set_value("App", "", RegType.REG_SZ, 'say "hi" \\ there')
    hive.set_value("App", "n", RegType.REG_DWORD, 0x2A)
    hive.set_value("App", "b", RegType.REG_BINARY, bytes(range(40)))
    hive.set_value("App", "e", RegType.REG_EXPAND_SZ, "%x%")
    hive.set_value("App", "odd", RegType.REG_SZ, b"a\x00b")  # not a clean string: hex(1)
    hive.create_key("App\\Sub")
    path = tmp_path / "SOFTWARE"
    hive.save(path)
    code, out, _err = run(
        capsys, "hive", "export", str(path), "App", "--prefix", "HKEY_LOCAL_MACHINE\\SOFTWARE"
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "Windows Registry Editor Version 5.00"
    assert lines[2] == "[HKEY_LOCAL_MACHINE\\SOFTWARE\\App]"
    assert lines[3] == '@="say \\"hi\\" \\\\ there"'
    assert lines[4] == '"n"=dword:0000002a'
    assert lines[5].startswith('"b"=hex:00,01,02') and lines[5].endswith("\\")
    assert all(len(line) <= 80 for line in lines)
    assert '"e"=hex(2):25,00,78,00,25,00,00,00' in lines
    assert '"odd"=hex(1):61,00,62' in lines
    assert "[HKEY_LOCAL_MACHINE\\SOFTWARE\\App\\Sub]" in lines
    out_file = tmp_path / "out.reg"
    assert run(capsys, "hive", "export", str(path), "-o", str(out_file))[0] == 0
    raw = out_file.read_bytes()
    assert raw.startswith(b"\xff\xfeW\x00i\x00n\x00")
    assert raw.decode("utf-16").splitlines()[2] == "[SOFTWARE]"


def test_export_shows_tombstones_as_deletions(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    delta = Hive.create(root_name="DELTA", minor_version=6, layered=True)
    gone = delta.create_key("Gone")
    delta.set_layer_semantics(gone, LayerSemantics.TOMBSTONE)
    delta.set_value_tombstone(delta.create_key("Kept"), "old")
    delta.save(tmp_path / "DELTA")
    _code, out, _err = run(capsys, "hive", "export", str(tmp_path / "DELTA"))
    assert "[-DELTA\\Gone]" in out.splitlines()
    assert '"old"=-' in out.splitlines()


def test_merge_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = Hive.create()
    base.set_value("K", "a", RegType.REG_SZ, "base")
    base.set_value("K", "b", RegType.REG_SZ, "gone soon")
    base.save(tmp_path / "BASE")
    delta = Hive.create(minor_version=6, layered=True)
    delta.set_value("K", "a", RegType.REG_SZ, "delta")
    delta.set_value_tombstone(delta.key("K"), "b")
    delta.save(tmp_path / "DELTA")
    code, _out, err = run(
        capsys,
        "hive",
        "merge",
        str(tmp_path / "BASE"),
        str(tmp_path / "DELTA"),
        str(tmp_path / "OUT"),
    )
    assert code == 0, err
    merged = Hive.open(tmp_path / "OUT")
    assert {v.name: v.decoded() for v in merged.key("K").values()} == {"a": "delta"}


def test_hive_with_logs_is_recovered_for_export(
    testdata: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = testdata / "registry" / "yarp" / "NewDirtyHive1"
    for name in ("NewDirtyHive", "NewDirtyHive.LOG1", "NewDirtyHive.LOG2"):
        (tmp_path / name).write_bytes((source / name).read_bytes())
    code, out, _err = run(capsys, "hive", "export", str(tmp_path / "NewDirtyHive"))
    assert code == 0
    keys = [line for line in out.splitlines() if line.startswith("[")]
    root = "{dedef10d-30ff-45b5-9d44-b3fa249ecd49}"  # the root key's name in that hive
    assert keys == [
        f"[{root}]",
        f"[{root}\\Key3]",
        f"[{root}\\Key3\\Key3_1]",
        f"[{root}\\Key3\\Key3_2]",
        f"[{root}\\Key3\\Key3_3]",
    ]
    assert '@="' + "1" * 1440 + '"' in out.splitlines()


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "GOOD"
    Hive.create().save(good)
    bad = tmp_path / "BAD"
    bad.write_bytes(b"regf" + bytes(5000))
    cases = [
        ["get", str(good), "missing\\key"],
        ["get", str(good), "", "--name", "nope"],
        ["set", str(good), "K", "--type", "REG_DWORD", "--data", "lots"],
        ["set", str(good), "K", "--type", "REG_SPACESHIP", "--data", "1"],
        ["get", str(bad), ""],
        ["get", str(tmp_path / "absent"), ""],
        ["delete", str(good), ""],
        ["merge", str(good), str(bad), str(tmp_path / "OUT")],
    ]
    for case in cases:
        code, _out, err = run(capsys, "hive", *case)
        assert code == 1, (case, err)
        assert err.startswith("cimsnap: error: "), (case, err)
        assert len(err.strip().splitlines()) == 1, (case, err)
    assert not (tmp_path / "OUT").exists()
    # and as a process: exit status 1, one line on stderr
    proc = subprocess.run(
        [sys.executable, "-m", "cimsnap.cli", "hive", "get", str(bad), ""],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("cimsnap: error: ") and len(proc.stderr.splitlines()) == 1
