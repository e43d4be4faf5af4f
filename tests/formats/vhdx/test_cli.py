"""``cimsnap vhdx``: the commands of DESIGN.md end to end, human and --json output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cimsnap.cli.main import main
from tests.conftest import require_tool
from tests.formats.vhdx.helpers import pattern, run

MiB = 1 << 20


def _ok(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def _fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cimsnap: error: ")
    return err


def test_create_info_check_resize(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "d.vhdx")
    _ok(capsys, "vhdx", "create", path, "--size", "10G")
    assert os.stat(path).st_blocks * 512 < MiB
    data = json.loads(_ok(capsys, "vhdx", "info", path, "--json"))
    assert data["type"] == "dynamic" and data["virtual_size"] == 10 << 30
    assert data["block_size"] == MiB and data["logical_sector_size"] == 512
    assert data["allocated_bytes"] < MiB and data["file_size"] == 4 * MiB
    assert data["chain"] == [
        {
            "path": path,
            "type": "dynamic",
            "virtual_size": 10 << 30,
            "data_write_guid": data["data_write_guid"],
            "linkage_status": "base",
        }
    ]
    text = _ok(capsys, "vhdx", "info", path)
    assert "type:                 dynamic" in text and "10.0 GiB" in text
    assert _ok(capsys, "vhdx", "check", path) == f"{path}: ok\n"
    _ok(capsys, "vhdx", "resize", path, "--size", "12G")
    assert json.loads(_ok(capsys, "vhdx", "info", path, "--json"))["virtual_size"] == 12 << 30
    err = _fails(capsys, "vhdx", "resize", path, "--size", "1G")
    assert "cannot shrink" in err and path in err
    err = _fails(capsys, "vhdx", "create", path, "--size", "1G")
    assert "already exists" in err
    _fails(capsys, "vhdx", "create", str(tmp_path / "x.vhdx"), "--size", "1G", "--block-size", "3M")
    _fails(capsys, "vhdx", "create", str(tmp_path / "x.vhdx"))  # no size, no parent
    _fails(capsys, "vhdx", "info", str(tmp_path / "missing.vhdx"))


def test_create_fixed_and_4k(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fixed = str(tmp_path / "f.vhdx")
    _ok(capsys, "vhdx", "create", fixed, "--size", "8M", "--fixed", "--block-size", "2M")
    data = json.loads(_ok(capsys, "vhdx", "info", fixed, "--json"))
    assert data["type"] == "fixed" and data["blocks"]["fully_present"] == 4
    k4 = str(tmp_path / "k.vhdx")
    _ok(capsys, "vhdx", "create", k4, "--size", "8M", "--logical-sector-size", "4096")
    assert json.loads(_ok(capsys, "vhdx", "info", k4, "--json"))["logical_sector_size"] == 4096


def test_differencing_chain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, child, big = (str(tmp_path / n) for n in ("b.vhdx", "c.vhdx", "big.vhdx"))
    _ok(capsys, "vhdx", "create", base, "--size", "8M")
    _ok(capsys, "vhdx", "create", child, "--parent", base)
    data = json.loads(_ok(capsys, "vhdx", "info", child, "--json"))
    assert data["type"] == "differencing" and data["virtual_size"] == 8 * MiB
    assert data["parent"]["relative_path"] == ".\\b.vhdx"
    assert data["parent"]["linkage_status"] == "ok"
    assert [c["linkage_status"] for c in data["chain"]] == ["ok", "base"]
    _ok(capsys, "vhdx", "create", big, "--parent", base, "--size", "16M")
    assert json.loads(_ok(capsys, "vhdx", "info", big, "--json"))["virtual_size"] == 16 * MiB
    err = _fails(
        capsys, "vhdx", "create", str(tmp_path / "s.vhdx"), "--parent", base, "--size", "4M"
    )
    assert "smaller than the parent" in err
    assert not (tmp_path / "s.vhdx").exists()
    _ok(capsys, "vhdx", "check", child)
    text = _ok(capsys, "vhdx", "info", child)
    assert "chain:" in text and base in text


def test_export_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "in.raw"
    with raw.open("wb") as f:
        f.truncate(32 * MiB)
        f.seek(7 * MiB)
        f.write(pattern(4, 3 * MiB))
    vhdx_path, out = str(tmp_path / "i.vhdx"), tmp_path / "out.raw"
    _ok(capsys, "vhdx", "import", str(raw), vhdx_path)
    data = json.loads(_ok(capsys, "vhdx", "info", vhdx_path, "--json"))
    assert data["blocks"]["fully_present"] == 3
    _ok(capsys, "vhdx", "export", vhdx_path, str(out))
    assert out.read_bytes() == raw.read_bytes()
    assert os.stat(out).st_blocks * 512 <= 4 * MiB
    require_tool("qemu-img")
    assert run("qemu-img", "compare", "-f", "raw", "-F", "vhdx", raw, vhdx_path).returncode == 0
    _fails(capsys, "vhdx", "import", str(tmp_path / "nope.raw"), str(tmp_path / "n.vhdx"))
    _fails(capsys, "vhdx", "import", str(raw), vhdx_path)  # exists
