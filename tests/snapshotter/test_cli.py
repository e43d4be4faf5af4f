"""``cimsnap snapshot ...`` on a root, without containerd."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cimsnap.cli.main import main
from cimsnap.formats import vhdx
from tests.snapshotter.conftest import seed_template


def run(capsys: pytest.CaptureFixture[str], root: Path, *args: str) -> tuple[int, str, str]:
    code = main(["snapshot", "--root", str(root), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_local_workflow(
    template_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    seed_template(template_dir, root)
    assert run(capsys, root, "prepare", "extract-1")[0] == 0
    assert run(capsys, root, "commit", "base", "extract-1", "--label", "a=b")[0] == 0
    code, out, _ = run(capsys, root, "prepare", "ctr", "base", "--json")
    (mount,) = json.loads(out)
    assert mount["type"] == "CimFS" and mount["options"][0] == "rw"
    vhdx.check(Path(mount["source"]) / "sandbox.vhdx")

    code, out, _ = run(capsys, root, "mounts", "ctr")
    assert out.startswith(f"mount -t CimFS {mount['source']} <target> -o rw,cimpath=")

    code, out, _ = run(capsys, root, "ls", "--json")
    listed = {i["name"]: i for i in json.loads(out)}
    assert listed["base"]["kind"] == "Committed" and listed["base"]["labels"] == {"a": "b"}
    assert listed["ctr"]["parent"] == "base" and listed["ctr"]["kind"] == "Active"
    code, out, _ = run(capsys, root, "ls", "--filter", "kind==active")
    assert out.splitlines()[1].split() == ["ctr", "base", "Active"]

    code, out, _ = run(capsys, root, "usage", "--json")
    usage = json.loads(out)
    assert usage["ctr"]["inodes"] == 2 and 0 < usage["ctr"]["size"] < 128 * 1024

    code, out, _ = run(capsys, root, "label", "ctr", "x=1", "y=2")
    assert out.strip() == "x=1,y=2"
    code, out, _ = run(capsys, root, "label", "ctr", "x=")
    assert out.strip() == "y=2"

    assert run(capsys, root, "rm", "ctr")[0] == 0
    assert not Path(mount["source"]).exists()
    code, out, _ = run(capsys, root, "cleanup")
    assert code == 0 and out == ""


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    code, _, err = run(capsys, root, "--mode", "wcifs", "rm", "missing")
    assert code == 1
    assert err.strip().count("\n") == 0 and err.startswith("cimsnap: error: ")
    assert "snapshot does not exist" in err
    code, _, err = run(capsys, root, "--mode", "wcifs", "prepare", "k", "--label", "novalue")
    assert code == 1 and "invalid label 'novalue'" in err
