"""Every unsafe entry a layer tar could carry is refused with a one-line WinTarError.

The hostile tars are made with Python's tarfile (an independent producer), so the names reach
the reader exactly as an attacker would write them.
"""

from __future__ import annotations

import io
import tarfile

import pytest

from cimsnap.formats.wintar import WinTarError, WinTarReader

DIR, FILE, SYMLINK, LINK = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE


def make_tar(
    *entries: tuple[str, bytes] | tuple[str, bytes, str] | tuple[str, bytes, str, dict[str, str]],
) -> bytes:
    """entries: (name, type[, linkname[, pax records]]); files get 3 bytes of data."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for entry in entries:
            info = tarfile.TarInfo(entry[0])
            info.type = entry[1]
            if len(entry) > 2:
                info.linkname = entry[2]  # type: ignore[misc]
            if len(entry) > 3:
                info.pax_headers = entry[3]  # type: ignore[misc]
            if info.type == DIR:
                info.pax_headers = {"MSWINDOWS.fileattr": "16", **info.pax_headers}
            data = b"abc" if info.type == FILE else b""
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


def refuse(data: bytes, *fragments: str) -> WinTarError:
    with pytest.raises(WinTarError) as info:
        for entry in WinTarReader(io.BytesIO(data), "evil.tar"):
            entry.data.read()
    message = str(info.value)
    assert "\n" not in message and message.startswith("evil.tar: ")
    for fragment in fragments:
        assert fragment in message, message
    return info.value


BASE = [("Files", DIR)]


def test_absolute_path() -> None:
    refuse(make_tar(*BASE, ("/Files/x", FILE)), "absolute path", "/Files/x")


def test_absolute_path_with_backslash() -> None:
    refuse(make_tar(*BASE, ("\\Files\\x", FILE)), "absolute path")


def test_drive_letter() -> None:
    refuse(make_tar(*BASE, ("C:/Files/x", FILE)), "drive letter")


def test_drive_letter_without_separator() -> None:
    refuse(make_tar(*BASE, ("c:Files", FILE)), "drive letter")


def test_dotdot_component() -> None:
    refuse(make_tar(*BASE, ("Files/../../etc/passwd", FILE)), "'..' component")


def test_dotdot_with_backslashes() -> None:
    refuse(make_tar(*BASE, ("Files\\..\\..\\x", FILE)), "'..' component")


def test_dot_component_inside_path() -> None:
    refuse(make_tar(*BASE, ("Files/./x", FILE)), "'.' component")


def test_empty_component() -> None:
    refuse(make_tar(*BASE, ("Files//x", FILE)), "empty path component")


def test_nul_in_name() -> None:
    # Only a PAX path record can carry a NUL; the reader refuses it as Go's does.
    refuse(make_tar(*BASE, ("x", FILE, "", {"path": "Files/a\x00b"})), "NUL")


def test_path_outside_layer_directories() -> None:
    refuse(make_tar(("Windows/System32/evil.dll", FILE)), "outside the layer's top-level")


def test_lowercase_top_level_directory_is_not_files() -> None:
    refuse(make_tar(("files/x", FILE)), "outside the layer's top-level")


def test_utility_vm_content_outside_its_files_directory() -> None:
    refuse(make_tar(("UtilityVM", DIR), ("UtilityVM/Other/x", FILE)), "UtilityVM\\Files")


def test_layer_root_itself() -> None:
    refuse(make_tar(("./", DIR)), "layer root")


def test_component_longer_than_ntfs_allows() -> None:
    refuse(make_tar(*BASE, ("Files/" + "n" * 256, FILE)), "longer than 255")


def test_colon_in_directory_component() -> None:
    refuse(make_tar(*BASE, ("Files/a:b", DIR)), "':' in a path component")


def test_top_level_directory_as_file() -> None:
    refuse(make_tar(("Files", FILE)), "Files must be a directory")


def test_hard_link_target_escaping_with_dotdot() -> None:
    refuse(make_tar(*BASE, ("Files/a", FILE), ("Files/l", LINK, "../../etc/passwd")), "'..'")


def test_hard_link_target_absolute() -> None:
    refuse(make_tar(*BASE, ("Files/l", LINK, "/etc/passwd")), "absolute path")


def test_hard_link_target_outside_files() -> None:
    tar = make_tar(("Hives", DIR), ("Hives/h", FILE), *BASE, ("Files/l", LINK, "Hives/h"))
    refuse(tar, "hard link target outside Files")


def test_hard_link_in_hives() -> None:
    refuse(make_tar(*BASE, ("Files/a", FILE), ("Hives/l", LINK, "Files/a")), "hard link outside")


def test_hard_link_to_itself() -> None:
    refuse(make_tar(*BASE, ("Files/l", LINK, "Files/l")), "hard link to itself")


def test_hard_link_to_the_files_directory() -> None:
    refuse(make_tar(*BASE, ("Files/l", LINK, "Files")), "hard link target outside")


def test_whiteout_escaping_with_dotdot() -> None:
    refuse(make_tar(*BASE, ("Files/.wh...", FILE)), "'..'")


def test_whiteout_of_a_top_level_directory() -> None:
    refuse(make_tar((".wh.Files", FILE)), "whiteout outside Files")


def test_whiteout_of_the_files_directory_from_inside_utility_vm() -> None:
    refuse(make_tar(("UtilityVM/.wh.Files", FILE)), "whiteout outside Files")


def test_whiteout_in_hives() -> None:
    refuse(make_tar(("Hives/.wh.System_Delta", FILE)), "whiteout outside Files")


def test_whiteout_with_absolute_parent() -> None:
    refuse(make_tar(("/Files/.wh.x", FILE)), "absolute path")


def test_whiteout_without_name() -> None:
    refuse(make_tar(*BASE, ("Files/.wh.", FILE)), "whiteout without a name")


def test_opaque_whiteout_outside_files() -> None:
    refuse(make_tar(("Hives/.wh..wh..opq", FILE)), "opaque whiteout outside")


def test_aufs_metadata_entry() -> None:
    refuse(make_tar(*BASE, ("Files/.wh..wh.plnk", DIR)), "AUFS")


def test_stream_without_its_file() -> None:
    refuse(make_tar(*BASE, ("Files/a:Zone.Identifier", FILE)), "does not follow its file")


def test_stream_after_another_file() -> None:
    tar = make_tar(*BASE, ("Files/a", FILE), ("Files/b", FILE), ("Files/a:s", FILE))
    refuse(tar, "does not follow its file")


def test_stream_after_a_hard_link_of_that_name() -> None:
    tar = make_tar(*BASE, ("Files/a", FILE), ("Files/b", LINK, "Files/a"), ("Files/b:s", FILE))
    refuse(tar, "does not follow its file")


def test_stream_after_a_whiteout() -> None:
    refuse(make_tar(*BASE, ("Files/.wh.a", FILE), ("Files/a:s", FILE)), "does not follow")


def test_stream_of_another_type_than_data() -> None:
    tar = make_tar(*BASE, ("Files/a", FILE), ("Files/a:s:$INDEX_ALLOCATION", FILE))
    refuse(tar, "stream type '$INDEX_ALLOCATION'")


def test_stream_with_empty_name() -> None:
    refuse(make_tar(*BASE, ("Files/a", FILE), ("Files/a::$DATA", FILE)), "empty stream name")


def test_directory_entry_with_a_colon_is_not_a_stream() -> None:
    refuse(make_tar(*BASE, ("Files/a", FILE), ("Files/a:s", DIR)), "':' in a path component")


def test_device_node() -> None:
    refuse(make_tar(*BASE, ("Files/dev", tarfile.CHRTYPE)), "device, FIFO or unknown")


def test_fifo() -> None:
    refuse(make_tar(*BASE, ("Files/fifo", tarfile.FIFOTYPE)), "device, FIFO or unknown")


def test_error_names_offset_and_entry() -> None:
    tar = make_tar(*BASE, ("Files/ok", FILE), ("Files/../x", FILE))
    error = refuse(tar)
    assert error.inner == "Files/../x"
    assert error.offset is not None and error.offset > 0
    assert tar[error.offset + 156 : error.offset + 157] in (b"x", b"0")  # its first header
