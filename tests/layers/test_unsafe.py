"""Unsafe or malformed layer tars: a clear error, and nothing of the half-written layer left.

Each case has its own test.  After the failure the layer directory is gone (the import created
it), the ``cim-layers`` directory holds exactly what it held before (no CIM, region, object-ID
or temporary file of the failed layer), and a parent layer imported earlier is intact.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from cimsnap.errors import CimsnapError
from cimsnap.formats.cim import CimImage
from cimsnap.formats.wintar import WinTarReader
from cimsnap.layers.cimlayer import import_cim_layer
from tests.images.builder import LayerSpec, base_layer, second_layer

CIM_LAYERS = "cim-layers"


def raw_tar(entries: list[tuple[str, str, bytes | str]]) -> bytes:
    """A PAX tar of (kind, name, data-or-link-target) made with Python's tarfile, which writes
    whatever name it is given (unlike the project's writer)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, payload in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "file":
                assert isinstance(payload, bytes)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            elif kind == "link":
                info.type = tarfile.LNKTYPE
                info.linkname = str(payload)
                tar.addfile(info)
            elif kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = str(payload)
                tar.addfile(info)
    return out.getvalue()


def snapshot_files(snapshots: Path) -> set[str]:
    return {str(p.relative_to(snapshots)) for p in snapshots.rglob("*")}


@pytest.fixture
def snapshots(tmp_path: Path) -> Path:
    root = tmp_path / "snapshots"
    root.mkdir()
    return root


@pytest.fixture
def parent(snapshots: Path) -> Path:
    """A base layer imported before the failing one."""
    layer_dir = snapshots / "1"
    import_cim_layer(io.BytesIO(base_layer(uvm=False).tar()), layer_dir)
    return layer_dir


def assert_fails_cleanly(
    snapshots: Path, tar: bytes, match: str, parents: list[Path] | None = None
) -> CimsnapError:
    before = snapshot_files(snapshots)
    layer_dir = snapshots / "new"
    with pytest.raises(CimsnapError, match=match) as caught:
        import_cim_layer(io.BytesIO(tar), layer_dir, parents or [], name="bad.tar")
    assert not layer_dir.exists(), "the half-written layer directory was left behind"
    assert snapshot_files(snapshots) == before, "files of the failed layer were left behind"
    for parent_dir in parents or []:
        with CimImage.open(snapshots / CIM_LAYERS / f"{parent_dir.name}.cim") as image:
            assert image.exists("Files\\Windows\\win.ini")
    text = str(caught.value)
    assert "\n" not in text and "Traceback" not in text
    return caught.value


FILES_DIR = ("dir", "Files/", b"")


def test_absolute_path(snapshots: Path) -> None:
    err = assert_fails_cleanly(
        snapshots, raw_tar([FILES_DIR, ("file", "/Files/evil", b"x")]), "absolute"
    )
    assert err.path == Path("bad.tar") and err.offset is not None


def test_dotdot_component(snapshots: Path) -> None:
    tar = raw_tar([FILES_DIR, ("file", "Files/../../etc/passwd", b"root::0:0")])
    assert_fails_cleanly(snapshots, tar, r"'\.\.'")


def test_path_outside_the_layer_directories(snapshots: Path) -> None:
    tar = raw_tar([FILES_DIR, ("dir", "Windows/", b""), ("file", "Windows/evil.dll", b"x")])
    assert_fails_cleanly(snapshots, tar, "outside the layer's top-level directories")


def test_utility_vm_outside_its_files(snapshots: Path) -> None:
    tar = raw_tar([("dir", "UtilityVM/", b""), ("file", "UtilityVM/SystemTemplate.vhdx", b"x")])
    assert_fails_cleanly(snapshots, tar, r"only UtilityVM\\Files")


def test_hard_link_target_escapes(snapshots: Path) -> None:
    tar = raw_tar([FILES_DIR, ("link", "Files/passwd", "../../etc/passwd")])
    assert_fails_cleanly(snapshots, tar, r"'\.\.'")


def test_hard_link_target_outside_files(snapshots: Path) -> None:
    tar = raw_tar([FILES_DIR, ("link", "Files/hive", "Hives/SYSTEM_BASE")])
    assert_fails_cleanly(snapshots, tar, "outside Files")


def test_hard_link_to_nothing(snapshots: Path, parent: Path) -> None:
    tar = raw_tar([FILES_DIR, ("link", "Files/a", "Files/does/not/exist")])
    assert_fails_cleanly(snapshots, tar, "hard link target .* does not exist", [parent])


def test_whiteout_escapes(snapshots: Path, parent: Path) -> None:
    tar = raw_tar([FILES_DIR, ("file", "Files/../.wh.Files", b"")])
    assert_fails_cleanly(snapshots, tar, r"'\.\.'", [parent])


def test_whiteout_outside_files(snapshots: Path, parent: Path) -> None:
    tar = raw_tar([("file", ".wh.Files", b"")])
    assert_fails_cleanly(snapshots, tar, "outside", [parent])


def test_stream_without_its_file(snapshots: Path) -> None:
    tar = raw_tar([FILES_DIR, ("file", "Files/a.txt:Zone.Identifier:$DATA", b"[Zone]")])
    assert_fails_cleanly(snapshots, tar, "stream")


def test_stream_after_another_file(snapshots: Path) -> None:
    tar = raw_tar(
        [
            FILES_DIR,
            ("file", "Files/a.txt", b"a"),
            ("file", "Files/b.txt", b"b"),
            ("file", "Files/a.txt:Zone.Identifier:$DATA", b"[Zone]"),
        ]
    )
    assert_fails_cleanly(snapshots, tar, "stream")


def test_truncated_tar(snapshots: Path) -> None:
    tar = base_layer(uvm=False).tar()
    assert_fails_cleanly(snapshots, tar[: len(tar) // 2 + 100], "truncated|ended|short|end of")


def test_corrupt_header_checksum(snapshots: Path) -> None:
    tar = bytearray(base_layer(uvm=False).tar())
    # The header of the tenth entry gets a wrong checksum (its field, at 148, changed).
    offsets = [e.offset for e in WinTarReader(io.BytesIO(bytes(tar)))]
    field = offsets[10] + 148
    tar[field : field + 6] = b"777777"
    assert_fails_cleanly(snapshots, bytes(tar), "checksum")


def test_garbage_instead_of_a_tar(snapshots: Path) -> None:
    assert_fails_cleanly(snapshots, b"\x1f\x8b" + bytes(range(256)) * 8, ".")


def test_registry_hive_path_as_a_directory(snapshots: Path) -> None:
    spec = LayerSpec().dir("Files").dir("Files\\Windows").dir("Files\\Windows\\System32")
    spec.dir("Files\\Windows\\System32\\config").dir("Files\\Windows\\System32\\config\\SYSTEM")
    assert_fails_cleanly(snapshots, spec.tar(), "must be a regular file")


def test_stream_on_a_registry_hive(snapshots: Path, parent: Path) -> None:
    spec = LayerSpec().dir("Hives")
    spec.file("Hives\\SYSTEM_DELTA", b"regf", streams={"evil": b"x"})
    assert_fails_cleanly(snapshots, spec.tar(), "unexpected alternate stream", [parent])


def test_link_named_like_a_registry_hive(snapshots: Path, parent: Path) -> None:
    tar = raw_tar(
        [FILES_DIR, ("link", "Files/Windows/System32/config/SAM", "Files/Windows/win.ini")]
    )
    assert_fails_cleanly(snapshots, tar, "unexpected link", [parent])


def test_corrupt_delta_hive(snapshots: Path, parent: Path) -> None:
    spec = LayerSpec().dir("Hives").file("Hives\\SOFTWARE_DELTA", b"regf" + bytes(5000))
    assert_fails_cleanly(snapshots, spec.tar(), "SOFTWARE_DELTA", [parent])


def test_base_layer_without_its_hives(snapshots: Path) -> None:
    spec = LayerSpec().dir("Files").file("Files\\a.txt", b"a")
    assert_fails_cleanly(snapshots, spec.tar(), r"registry hive Files\\Windows\\System32\\config")


def test_utility_vm_without_bcd(snapshots: Path) -> None:
    spec = base_layer()
    spec.ops = [op for op in spec.ops if not op.path.endswith("\\Boot\\BCD")]
    assert_fails_cleanly(snapshots, spec.tar(), "no BCD store")


def test_utility_vm_without_software_hive(snapshots: Path) -> None:
    spec = base_layer()
    spec.ops = [
        op
        for op in spec.ops
        if not op.path.endswith("config\\SOFTWARE") or not op.path.startswith("UtilityVM")
    ]
    assert_fails_cleanly(snapshots, spec.tar(), "SOFTWARE hive")


def test_target_directory_not_empty(snapshots: Path) -> None:
    layer_dir = snapshots / "busy"
    layer_dir.mkdir()
    (layer_dir / "keep.txt").write_text("mine")
    with pytest.raises(CimsnapError, match="not empty"):
        import_cim_layer(io.BytesIO(base_layer(uvm=False).tar()), layer_dir)
    assert (layer_dir / "keep.txt").read_text() == "mine"


def test_existing_layer_cim_is_not_replaced(snapshots: Path, parent: Path) -> None:
    before = (snapshots / CIM_LAYERS / "1.cim").read_bytes()
    (snapshots / "again").mkdir()
    with pytest.raises(CimsnapError, match="exists"):
        import_cim_layer(
            io.BytesIO(base_layer(uvm=False).tar()),
            snapshots / "again",
            cim_path=snapshots / CIM_LAYERS / "1.cim",
        )
    assert (snapshots / CIM_LAYERS / "1.cim").read_bytes() == before
    assert not any((snapshots / "again").iterdir())


def test_existing_layer_directory_is_kept_empty(snapshots: Path, parent: Path) -> None:
    """Like a snapshot directory made by the snapshotter: emptied, not removed, on failure."""
    layer_dir = snapshots / "5"
    layer_dir.mkdir()
    with pytest.raises(CimsnapError):
        import_cim_layer(io.BytesIO(b"not a tar" * 100), layer_dir, [parent], name="bad.tar")
    assert layer_dir.is_dir() and not any(layer_dir.iterdir())


def test_parent_without_base_hives(snapshots: Path) -> None:
    # The second layer names a parent whose CIM lacks the base hives it needs to merge with.
    lonely = snapshots / "lonely"
    spec2 = second_layer()
    from cimsnap.formats.cim import CimWriter, FileMetadata

    (snapshots / CIM_LAYERS).mkdir(exist_ok=True)
    lonely.mkdir()
    with CimWriter.create(snapshots / CIM_LAYERS / "lonely.cim") as writer:
        writer.add("Files", FileMetadata.directory())
        writer.add("Files\\Windows", FileMetadata.directory())
        writer.add("Files\\Windows\\System32", FileMetadata.directory())
        writer.add("Files\\Windows\\WinSxS", FileMetadata.directory())
        writer.add("Files\\Windows\\WinSxS\\amd64_hosts_31bf3856ad364e35", FileMetadata.directory())
        writer.add(
            "Files\\Windows\\WinSxS\\amd64_hosts_31bf3856ad364e35\\hosts",
            FileMetadata(0x20),
            io.BytesIO(b"h"),
        )
    before = snapshot_files(snapshots)
    with pytest.raises(CimsnapError, match=r"no Hives.\w+_BASE to merge"):
        import_cim_layer(io.BytesIO(spec2.tar()), snapshots / "2", [lonely])
    assert snapshot_files(snapshots) == before
