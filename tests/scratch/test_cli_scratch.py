"""``cimsnap scratch create|info|expand``: output, --json contract, one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cimsnap.cli.main import main
from tests.formats.ntfs.helpers import run_tool
from tests.scratch.scratch_helpers import MiB, qemu_raw


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_create_info_expand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "sandbox.vhdx"
    code, out, _ = _run(
        capsys, "scratch", "create", str(path), "--size", "96M", "--block-size", "2M"
    )
    assert code == 0 and "scratch disk" in out
    code, out, _ = _run(capsys, "scratch", "info", str(path), "--json")
    doc = json.loads(out)
    assert code == 0
    assert set(doc) == {
        "path", "disk_guid", "partition_guid", "disk_size", "sector_size", "partition_offset",
        "partition_size", "file_size", "allocated_bytes", "gpt_damage", "volume", "volume_error",
    }  # fmt: skip
    assert doc["disk_size"] == 96 * MiB and doc["partition_offset"] == 16 * MiB
    assert doc["volume"]["filesystem"] == "NTFS" and doc["volume"]["dirty"] is False
    # The GUIDs are the ones sgdisk reads from the disk.
    raw = qemu_raw(path, tmp_path / "disk.raw")
    assert f"Disk identifier (GUID): {doc['disk_guid']}" in run_tool("sgdisk", "-p", raw).stdout
    part2 = run_tool("sgdisk", "-i", "2", raw).stdout
    assert f"Partition unique GUID: {doc['partition_guid']}" in part2
    info = json.loads(run_tool("qemu-img", "info", "--output=json", path).stdout)
    assert info["cluster-size"] == 2 * MiB

    code, out, _ = _run(capsys, "scratch", "info", str(path))
    assert code == 0 and doc["disk_guid"] in out and "NTFS 3.1" in out and "clean" in out

    code, out, _ = _run(capsys, "scratch", "expand", str(path), "--size", "256M")
    assert code == 0 and "256.0 MiB" in out
    grown = json.loads(_run(capsys, "scratch", "info", str(path), "--json")[1])
    assert grown["disk_size"] == 256 * MiB
    assert grown["partition_size"] == 256 * MiB - 17 * MiB
    assert grown["volume"]["size"] == grown["partition_size"] - 4096
    assert (grown["disk_guid"], grown["partition_guid"]) == (
        doc["disk_guid"],
        doc["partition_guid"],
    )


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.vhdx"
    assert _run(capsys, "scratch", "create", str(path), "--size", "64M")[0] == 0
    for argv, pattern in [
        (("create", str(path)), "already exists"),
        (("expand", str(path), "--size", "32M"), "cannot shrink"),
        (("info", str(tmp_path / "missing.vhdx")), "no such disk image"),
        (("create", str(tmp_path / "t.vhdx"), "--size", "4M"), "at least"),
    ]:
        code, out, err = _run(capsys, "scratch", *argv)
        assert code == 1 and out == ""
        assert err.count("\n") == 1 and re.search(pattern, err), err
    plain = tmp_path / "plain.raw"
    plain.write_bytes(bytes(4 * MiB))
    code, _, err = _run(capsys, "scratch", "info", str(plain))
    assert code == 1 and "expected partition style GPT" in err
