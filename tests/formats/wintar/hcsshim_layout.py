"""hcsshim's tar headers, rebuilt from go-winio's code for the Go tool to encode.

Each function returns the tar.Header fields that go-winio's backuptar (BasicInfoHeader,
WriteTarFileFromBackupStream) and hcsshim's ociwclayer export.go set for one kind of entry, so
``gotar write`` produces the bytes hcsshim would.  Written from those sources, independently of
cimsnap's writer (times are formatted with Decimal here, not with cimsnap's helpers).
"""

from __future__ import annotations

import base64
from decimal import Decimal
from typing import Any

from tests.formats.wintar.conftest import go_spec

FILETIME_UNIX_EPOCH = 116_444_736_000_000_000

C_ISDIR = 0o040000
C_ISREG = 0o100000
C_ISLNK = 0o120000
FILE_ATTRIBUTE_DIRECTORY = 0x10


def unix_ns(filetime: int) -> int:
    """Filetime.Nanoseconds()."""
    return (filetime - FILETIME_UNIX_EPOCH) * 100


def pax_time(ns: int) -> str:
    """The PAX time string of ``ns`` nanoseconds (shortest exact decimal, as Go writes it)."""
    text = format(Decimal(ns) / Decimal(10**9), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def basic_info_header(
    name: str, size: int, attributes: int, times: tuple[int, int, int, int]
) -> dict[str, Any]:
    """backuptar.BasicInfoHeader; times = (creation, last_write, change, last_access)."""
    creation, last_write, change, last_access = times
    spec = go_spec(
        name.replace("\\", "/"),
        "0",
        size=size,
        mtime_ns=unix_ns(last_write),
        ctime_ns=unix_ns(change),
        atime_ns=unix_ns(last_access),
        pax={
            "MSWINDOWS.fileattr": str(attributes),
            "LIBARCHIVE.creationtime": pax_time(unix_ns(creation)),
        },
        format_pax=True,
    )
    if attributes & FILE_ATTRIBUTE_DIRECTORY:
        spec["mode"] |= C_ISDIR
        spec["size"] = 0
        spec["typeflag"] = ord("5")
    return spec


def add_backup_streams(
    spec: dict[str, Any], sd: bytes | None, eas: dict[str, bytes], *, has_data: bool
) -> None:
    """What WriteTarFileFromBackupStream adds for BackupSecurity, BackupEaData, BackupData."""
    if has_data:
        spec["mode"] |= C_ISREG
    if sd is not None:
        spec["pax"]["MSWINDOWS.rawsd"] = base64.b64encode(sd).decode()
    for name, value in eas.items():
        spec["pax"]["MSWINDOWS.xattr." + name] = base64.b64encode(value).decode()


def file_header(
    name: str,
    data: bytes,
    attributes: int,
    times: tuple[int, int, int, int],
    sd: bytes | None = None,
    eas: dict[str, bytes] | None = None,
) -> dict[str, Any]:
    spec = basic_info_header(name, len(data), attributes, times)
    add_backup_streams(spec, sd, eas or {}, has_data=True)
    spec["data"] = base64.b64encode(data).decode()
    return spec


def dir_header(
    name: str, attributes: int, times: tuple[int, int, int, int], sd: bytes | None = None
) -> dict[str, Any]:
    spec = basic_info_header(name, 0, attributes, times)
    add_backup_streams(spec, sd, {}, has_data=False)
    return spec


def symlink_header(
    name: str,
    target: str,
    attributes: int,
    times: tuple[int, int, int, int],
    mount_point: bool = False,
) -> dict[str, Any]:
    """BackupReparseData: mode |= c_ISLNK, TypeSymlink, Linkname = the decoded print name."""
    spec = basic_info_header(name, 0, attributes, times)
    spec["mode"] |= C_ISLNK
    spec["typeflag"] = ord("2")
    spec["linkname"] = target
    if mount_point:
        spec["pax"]["MSWINDOWS.mountpoint"] = "1"
    return spec


def stream_header(file_spec: dict[str, Any], stream: str, data: bytes) -> dict[str, Any]:
    """An alternate data stream: the file's name + ":" + stream, its mode and times."""
    return go_spec(
        file_spec["name"] + ":" + stream,
        "0",
        mode=file_spec["mode"],
        size=len(data),
        mtime_ns=file_spec["mtime_ns"],
        atime_ns=file_spec["atime_ns"],
        ctime_ns=file_spec["ctime_ns"],
        format_pax=True,
        data=data,
    )


def hardlink_header(
    name: str, target: str, attributes: int, times: tuple[int, int, int, int]
) -> dict[str, Any]:
    """ociwclayer export.go: BasicInfoHeader(name, 0, info), Mode 0644, TypeLink."""
    spec = basic_info_header(name, 0, attributes, times)
    spec["mode"] = 0o644
    spec["typeflag"] = ord("1")
    spec["linkname"] = target.replace("\\", "/")
    return spec


def whiteout_header(path: str) -> dict[str, Any]:
    """ociwclayer export.go: tar.Header{Name: dir/.wh.base} and nothing else."""
    parent, _, base = path.replace("\\", "/").rpartition("/")
    return go_spec(f"{parent}/.wh.{base}", "\x00")
