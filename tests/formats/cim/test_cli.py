"""``cimsnap cim ...``: ls / stat / cat / usage / create / extract / destroy / check."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from cimsnap.cli.main import main
from cimsnap.formats.cim import CimImage

PACKAGE = "msix\\pinball_1.0.2.0_x64__ynj0a7qyfqv8c"


@dataclass
class Result:
    returncode: int
    stdout: bytes
    stderr: bytes


def cli(*args: str | Path, ok: bool = True) -> Result:
    """Run ``cimsnap`` in this process (the same ``main`` the console script runs)."""
    out = io.BytesIO()
    err = io.StringIO()
    stdout = io.TextIOWrapper(out, encoding="utf-8", write_through=True)
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = stdout, err
    try:
        code = main([str(a) for a in args])
    finally:
        sys.stdout, sys.stderr = saved
    result = Result(code, out.getvalue(), err.getvalue().encode())
    if ok:
        assert result.returncode == 0, result.stderr.decode()
    return result


@pytest.fixture(scope="module")
def pinball(testdata: Path) -> Path:
    return testdata / "cim" / "pinball" / "Pinball.cim"


def test_ls_stat_cat_usage(pinball: Path) -> None:
    listing = json.loads(cli("cim", "ls", pinball, PACKAGE, "--json").stdout)
    names = [e["name"] for e in listing]
    assert len(names) == 74 and "pinball.exe" in names and "AppxMetadata" in names
    assert {e["type"] for e in listing} == {"file", "directory"}
    long = cli("cim", "ls", pinball, PACKAGE.replace("\\", "/"), "-l").stdout.decode()
    assert "AppxMetadata\\" in long and "pinball.exe" in long

    stat = json.loads(cli("cim", "stat", pinball, f"{PACKAGE}\\PINBALL.EXE", "--json").stdout)
    with CimImage.open(pinball) as image:
        st = image.stat(f"{PACKAGE}\\pinball.exe")
        data = image.read(f"{PACKAGE}\\wavemix.inf")
        usage = image.usage()
    assert stat["size"] == st.size and stat["file_id"] == st.file_id
    assert stat["stream_type"] == "pe_image"
    assert stat["attribute_names"] == ["ARCHIVE"]
    assert base64.b64decode(stat["security_descriptor"]) == st.security_descriptor
    assert [ea["name"] for ea in stat["extended_attributes"]] == [
        "$KERNEL.PURGE.IMAGEHASH.SHA1",
        "$KERNEL.PURGE.IMAGEHASH.SHA256",
    ]
    human = cli("cim", "stat", pinball, f"{PACKAGE}\\pinball.exe").stdout.decode()
    assert "PE image stream" in human and "2020-10-11T22:29:27.9928841Z" in human

    assert cli("cim", "cat", pinball, f"{PACKAGE}/WAVEMIX.INF").stdout == data
    totals = json.loads(cli("cim", "usage", pinball, "--json").stdout)
    assert totals["total_bytes"] == usage.total
    assert len(totals["region_files"]) == 3
    subtree = json.loads(cli("cim", "usage", pinball, PACKAGE, "--json").stdout)
    assert subtree == {"path": PACKAGE, "files": 74, "directories": 1, "bytes": 2593354}


def test_check_reads_everything(pinball: Path) -> None:
    result = json.loads(cli("cim", "check", pinball, "--json").stdout)
    assert result == {"files": 74, "bytes": 2593354, "problems": []}


def test_errors_are_one_line(pinball: Path, tmp_path: Path) -> None:
    for args, text in [
        (("cim", "ls", tmp_path / "none.cim"), "no such image"),
        (("cim", "stat", pinball, "nope\\x"), "no such file or directory"),
        (("cim", "cat", pinball, PACKAGE), "is a directory"),
        (("cim", "cat", pinball, f"{PACKAGE}\\pinball.exe:nostream"), "no such alternate"),
    ]:
        result = cli(*args, ok=False)
        assert result.returncode == 1
        err = result.stderr.decode()
        assert err.startswith("cimsnap: error: ") and err.count("\n") == 1, err
        assert text in err
    broken = tmp_path / "broken.cim"
    broken.write_bytes(pinball.read_bytes()[:50])
    result = cli("cim", "ls", broken, ok=False)
    assert result.returncode == 1 and b"truncated" in result.stderr


def make_tree(root: Path) -> None:
    (root / "docs" / "deep").mkdir(parents=True)
    (root / "docs" / "a.txt").write_bytes(b"alpha")
    (root / "docs" / "deep" / "b.bin").write_bytes(os.urandom(50_000))
    os.link(root / "docs" / "deep" / "b.bin", root / "b-link.bin")
    (root / "docs" / "a.txt:Zone.Identifier").write_bytes(b"[ZoneTransfer]")
    os.setxattr(root / "docs" / "a.txt", "user.cimfs.sd", b"\x01\x00\x04\x80" + bytes(16))


def test_create_extract_keeps_links_streams_and_metadata(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    summary = json.loads(cli("cim", "create", tmp_path / "t.cim", src, "--json").stdout)
    assert summary["files"] == 2 and summary["hard_links"] == 1 and summary["streams"] == 1
    with CimImage.open(tmp_path / "t.cim") as image:
        assert image.lookup("b-link.bin") == image.lookup("DOCS\\DEEP\\B.BIN")
        assert image.stat("docs\\a.txt").security_descriptor == b"\x01\x00\x04\x80" + bytes(16)
    cli("cim", "extract", tmp_path / "t.cim", tmp_path / "out")
    out = tmp_path / "out"
    assert (out / "docs" / "deep" / "b.bin").read_bytes() == (src / "b-link.bin").read_bytes()
    assert os.stat(out / "b-link.bin").st_ino == os.stat(out / "docs" / "deep" / "b.bin").st_ino
    assert (out / "docs" / "a.txt:Zone.Identifier").read_bytes() == b"[ZoneTransfer]"
    assert os.getxattr(out / "docs" / "a.txt", "user.cimfs.sd") == os.getxattr(
        src / "docs" / "a.txt", "user.cimfs.sd"
    )
    # A second extract into the same (now non-empty) directory is refused, nothing touched.
    result = cli("cim", "extract", tmp_path / "t.cim", out, ok=False)
    assert result.returncode == 1 and b"not an empty directory" in result.stderr
    plain = cli("cim", "extract", tmp_path / "t.cim", tmp_path / "plain", "--no-xattrs")
    assert plain.returncode == 0
    assert os.listxattr(tmp_path / "plain" / "docs" / "a.txt") == []


def test_create_with_parent_overlays(tmp_path: Path) -> None:
    base_src = tmp_path / "base"
    base_src.mkdir()
    make_tree(base_src)
    cli("cim", "create", tmp_path / "base.cim", base_src)
    top_src = tmp_path / "top"
    (top_src / "DOCS").mkdir(parents=True)
    (top_src / "DOCS" / "A.TXT").write_bytes(b"replaced")
    (top_src / "new.txt").write_bytes(b"new")
    cli("cim", "create", tmp_path / "top.cim", top_src, "--parent", tmp_path / "base.cim")
    with CimImage.open(tmp_path / "top.cim") as top, CimImage.open(tmp_path / "base.cim") as base:
        assert top.listdir() == ["b-link.bin", "docs", "new.txt"]
        assert top.listdir("docs") == ["A.TXT", "deep"]  # the overlay's spelling replaces
        assert top.read("docs\\a.txt") == b"replaced"
        assert top.read("docs\\deep\\b.bin") == base.read("docs\\deep\\b.bin")
        assert base.read("docs\\a.txt") == b"alpha"
    result = cli("cim", "destroy", tmp_path / "base.cim", ok=False)
    assert result.returncode == 1 and b"top.cim" in result.stderr
    assert json.loads(cli("cim", "destroy", tmp_path / "top.cim", "--json").stdout)["removed"]
    cli("cim", "destroy", tmp_path / "base.cim")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "top"]


def test_create_deterministic_is_byte_identical(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    outputs = []
    for run in ("one", "two"):
        (tmp_path / run).mkdir()
        cli("cim", "create", tmp_path / run / "img.cim", src, "--deterministic")
        outputs.append({p.name: p.read_bytes() for p in (tmp_path / run).iterdir()})
    assert outputs[0] == outputs[1]
    result = cli("cim", "create", tmp_path / "one" / "img.cim", src, ok=False)
    assert result.returncode == 1 and b"already exists" in result.stderr
    cli("cim", "create", tmp_path / "one" / "img.cim", src, "--force")
    assert len(list((tmp_path / "one").iterdir())) == 7  # the replaced image's files are gone


def test_create_refuses_what_windows_cannot_store(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "Name").write_bytes(b"1")
    (src / "NAME").write_bytes(b"2")
    result = cli("cim", "create", tmp_path / "x.cim", src, ok=False)
    assert result.returncode == 1 and b"differ only in case" in result.stderr
    assert not list(tmp_path.glob("*.cim")) and not list(tmp_path.glob("region_*"))
    (src / "NAME").unlink()
    (src / "back\\slash").write_bytes(b"3")
    result = cli("cim", "create", tmp_path / "x.cim", src, ok=False)
    assert result.returncode == 1 and b"cannot store this name" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_console_entry_point_prints_one_line(tmp_path: Path) -> None:
    """The real process: exit status 1 and a single ``cimsnap: error:`` line, no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "cimsnap.cli", "cim", "stat", str(tmp_path / "none.cim")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("cimsnap: error: ") and result.stderr.count("\n") == 1
