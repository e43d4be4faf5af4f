"""The scratch template pair and its start-up rules (containerd createDifferencingScratchVHDs).

The files are judged with libvhdi (pyvhdi), not with cimsnap's own VHDX reader, except where the
VHDX engine's ``check``/``info`` are the thing under test's own contract.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import pytest

from cimsnap.formats import vhdx
from cimsnap.scratch import template as template_module
from cimsnap.scratch.template import Template, TemplateError, ensure_template
from tests.snapshotter.diskcheck import (
    BASIC_DATA,
    MS_RESERVED,
    DiskChain,
    gpt_partitions,
    libvhdi_link,
)

GIB = 1 << 30


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pristine")
    ensure_template(directory)
    return directory


@pytest.fixture
def tdir(pristine: Path, tmp_path: Path) -> Path:
    directory = tmp_path / "t"
    directory.mkdir()
    shutil.copy2(pristine / "blank-base.vhdx", directory)
    ensure_template(directory)  # the child must name this directory's base
    return directory


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def linkage_ok(directory: Path) -> None:
    vhdx.check(directory / "blank.vhdx")
    with DiskChain(directory / "blank.vhdx") as chain:
        assert chain.parent_paths == [directory / "blank-base.vhdx"]
    assert libvhdi_link(directory / "blank.vhdx") == (directory / "blank-base.vhdx", 10 * GIB)


def test_fresh_template_is_a_formatted_pair(pristine: Path) -> None:
    info = vhdx.info(pristine / "blank-base.vhdx")
    assert (info["type"], info["virtual_size"], info["block_size"]) == (
        "dynamic",
        10 * GIB,
        1 << 20,
    )
    child = vhdx.info(pristine / "blank.vhdx")
    assert (child["type"], child["block_size"]) == ("differencing", 1 << 20)
    linkage_ok(pristine)
    with DiskChain(pristine / "blank.vhdx") as chain:
        parts = gpt_partitions(chain)
        assert [p.type_guid for p in parts] == [MS_RESERVED, BASIC_DATA]
        assert chain.read(parts[1].first_lba * 512 + 3, 8) == b"NTFS    "
    assert (pristine / "blank.vhdx").stat().st_blocks * 512 < 64 * 1024


def test_kept_when_both_are_sound(tdir: Path) -> None:
    before = {n: digest(tdir / n) for n in ("blank-base.vhdx", "blank.vhdx")}
    ensure_template(tdir)
    assert {n: digest(tdir / n) for n in before} == before


def test_missing_child_is_remade_from_the_kept_base(tdir: Path) -> None:
    base_digest = digest(tdir / "blank-base.vhdx")
    (tdir / "blank.vhdx").unlink()
    ensure_template(tdir)
    assert digest(tdir / "blank-base.vhdx") == base_digest
    linkage_ok(tdir)


def test_missing_base_remakes_both(tdir: Path) -> None:
    old_guid = vhdx.info(tdir / "blank-base.vhdx")["data_write_guid"]
    (tdir / "blank-base.vhdx").unlink()  # blank.vhdx stays: stale, must not be kept
    ensure_template(tdir)
    assert vhdx.info(tdir / "blank-base.vhdx")["data_write_guid"] != old_guid
    linkage_ok(tdir)


def test_corrupt_base_is_detected_and_remade(tdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with open(tdir / "blank-base.vhdx", "r+b") as f:  # both headers and region tables
        f.seek(64 * 1024)
        f.write(b"\xff" * (4 * 64 * 1024))
    with caplog.at_level(logging.WARNING, logger="cimsnap"):
        ensure_template(tdir)
    assert "cannot be used" in caplog.text and "blank-base.vhdx" in caplog.text
    vhdx.check(tdir / "blank-base.vhdx")
    linkage_ok(tdir)


def test_corrupt_child_is_remade_and_base_kept(tdir: Path) -> None:
    base_digest = digest(tdir / "blank-base.vhdx")
    with open(tdir / "blank.vhdx", "r+b") as f:
        f.truncate(100_000)
    ensure_template(tdir)
    assert digest(tdir / "blank-base.vhdx") == base_digest
    linkage_ok(tdir)


def test_child_of_another_base_is_remade(tdir: Path, tmp_path: Path) -> None:
    # A sound base made separately: the old child's DataWriteGuid linkage no longer matches.
    other = tmp_path / "other"
    other.mkdir()
    ensure_template(other)
    shutil.copy2(other / "blank-base.vhdx", tdir / "blank-base.vhdx")
    ensure_template(tdir)
    linkage_ok(tdir)


def test_failure_leaves_no_half_made_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(path: object, parent: object, **kwargs: object) -> None:
        raise vhdx.VhdxError("simulated failure", path=str(path))

    monkeypatch.setattr(vhdx, "create_differencing", broken)
    with pytest.raises(TemplateError, match="failed to create differencing disk"):
        ensure_template(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [template_module.LOCK_NAME]


def test_leftover_temporaries_are_removed(tdir: Path) -> None:
    (tdir / ".blank-base.vhdx.123.0a1b2c3d.tmp").write_bytes(b"half")
    (tdir / ".blank.vhdx.0a1b2c3d.tmp").write_bytes(b"half")
    ensure_template(tdir)
    assert sorted(p.name for p in tdir.iterdir()) == [
        template_module.LOCK_NAME,
        "blank-base.vhdx",
        "blank.vhdx",
    ]


def test_copy_lock_reverifies_a_changed_template(tdir: Path) -> None:
    template = Template(tdir)
    template.ensure()
    with open(tdir / "blank.vhdx", "r+b") as f:  # corrupt it behind the template's back
        f.seek(64 * 1024)
        f.write(b"\0" * 4096)
        f.seek(128 * 1024)
        f.write(b"\0" * 4096)
    with template.copy_lock() as child:
        vhdx.check(child)  # what is handed out for copying is sound again
        linkage_ok(tdir)


def test_libvhdi_reads_the_child_through_its_parent(pristine: Path) -> None:
    import pyvhdi

    base, child = pyvhdi.file(), pyvhdi.file()
    base.open(str(pristine / "blank-base.vhdx"))
    child.open(str(pristine / "blank.vhdx"))
    child.set_parent(base)
    try:
        assert child.read_buffer_at_offset(8, 512) == base.read_buffer_at_offset(8, 512)
    finally:
        child.close()
        base.close()


def test_child_naming_a_moved_base_is_remade(tdir: Path, tmp_path: Path) -> None:
    # The pair was made elsewhere and moved here (a restored or renamed root): the child's
    # relative path still resolves, but copies of it would follow its stale absolute path.
    moved = tmp_path / "moved"
    tdir.rename(moved)
    before = digest(moved / "blank.vhdx")
    ensure_template(moved)
    assert digest(moved / "blank.vhdx") != before
    assert vhdx.info(moved / "blank.vhdx")["parent"]["absolute_path"] == str(
        moved / "blank-base.vhdx"
    )
    linkage_ok(moved)
