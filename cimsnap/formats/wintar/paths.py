"""Layer-relative Windows paths: turning tar names into them, and deciding which are allowed.

A Windows layer tar names entries relative to the layer root with forward slashes
(``Files/Windows/System32/config/SYSTEM``); hcsshim turns them into Windows paths with
``filepath.FromSlash``.  This module does the same conversion and enforces the layout hcsshim's
layer writers accept (internal/wclayer/legacy.go, legacyLayerWriter.Add/AddLink/Remove):

* every path lies under one of the top-level directories ``Files``, ``Hives`` or ``UtilityVM``;
  inside ``UtilityVM`` only ``UtilityVM\\Files`` and what is below it;
* hard links (both the link and its target) and whiteouts live strictly below ``Files`` or
  ``UtilityVM\\Files`` ("invalid hard link in layer", "invalid tombstone" in hcsshim);
* no absolute paths, drive letters, ``..`` components, empty components or NUL characters; a
  colon only separates an alternate data stream from its file (see :func:`split_stream_name`).

The allowed roots are kept in the tables below, which are the one place to change them.
"""

from __future__ import annotations

import re

# Top-level directories of a Windows layer (hcsshim internal/wclayer/legacy.go: filesPath,
# HivesPath, UtilityVMPath).  Compared case-sensitively, as hcsshim's hasPathPrefix does.
TOP_LEVEL_DIRECTORIES = ("Files", "Hives", "UtilityVM")
# Inside UtilityVM only this subtree is valid ("invalid UtilityVM layer" otherwise).
UTILITY_VM_FILES = "UtilityVM\\Files"
# Roots under which hard links and whiteouts may live (legacyLayerWriter.AddLink / Remove).
LINK_AND_WHITEOUT_ROOTS = ("Files", UTILITY_VM_FILES)
# Directories that must stay directories: the layout skeleton.
SKELETON_DIRECTORIES = (*TOP_LEVEL_DIRECTORIES, UTILITY_VM_FILES)

# NTFS limits: 255 UTF-16 code units per name, 32,767 per path (MS-FSCC 2.1.5; Win32 long paths).
MAX_NAME_UNITS = 255
MAX_PATH_UNITS = 32_767

_DRIVE = re.compile(r"[A-Za-z]:")
# The stream type Windows layer tars may name (hcsshim pkg/ociwclayer/cim/import.go accepts only
# "$DATA"; go-winio's backuptar leaves the suffix off).
DATA_STREAM_TYPE = "$DATA"


class UnsafePathError(ValueError):
    """A tar name cannot be turned into a safe layer path; the message says why."""


def utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def split_components(name: str) -> list[str]:
    """Components of a tar name or Windows path, checked for safety.

    Accepts ``/`` and ``\\`` as separators (Windows treats both so), a leading ``./`` and one
    trailing separator (directories); rejects everything that could leave the layer root.
    """
    if name == "":
        raise UnsafePathError("empty name")
    if "\x00" in name:
        raise UnsafePathError("NUL character in name")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafePathError("name is not valid UTF-8") from None
    if name[0] in "/\\":
        raise UnsafePathError("absolute path")
    parts = name.replace("\\", "/").split("/")
    if parts and parts[-1] == "" and len(parts) > 1:
        parts.pop()  # one trailing separator: a directory name
    while parts and parts[0] == ".":
        parts.pop(0)
    if not parts:
        raise UnsafePathError("name names the layer root itself")
    if parts[0][1:2] == ":" and _DRIVE.match(parts[0]):
        raise UnsafePathError("drive letter in name")
    # (The usual name has none of these: one scan each in C, the loop only to say which.)
    if "" in parts or "." in parts or ".." in parts or max(map(len, parts)) > MAX_NAME_UNITS // 2:
        for part in parts:
            if part == "":
                raise UnsafePathError("empty path component")
            if part in (".", ".."):
                raise UnsafePathError(f"{part!r} component in name")
            if len(part) > MAX_NAME_UNITS // 2 and utf16_units(part) > MAX_NAME_UNITS:
                raise UnsafePathError(f"a component is longer than {MAX_NAME_UNITS} characters")
    if len(name) > MAX_PATH_UNITS // 2 and utf16_units("\\".join(parts)) > MAX_PATH_UNITS:
        raise UnsafePathError(f"path is longer than {MAX_PATH_UNITS} characters")
    return parts


def check_no_colon(parts: list[str]) -> None:
    for part in parts:
        if ":" in part:
            raise UnsafePathError("':' in a path component (only stream entries may use it)")


def is_strictly_under(path: str, root: str) -> bool:
    return path.startswith(root + "\\")


def is_at_or_under(path: str, root: str) -> bool:
    return path == root or is_strictly_under(path, root)


def check_location(path: str) -> None:
    """Reject a Windows layer path outside the layer layout (Files, Hives, UtilityVM\\Files)."""
    top = path.split("\\", 1)[0]
    if top not in TOP_LEVEL_DIRECTORIES:
        allowed = ", ".join(TOP_LEVEL_DIRECTORIES)
        raise UnsafePathError(f"path outside the layer's top-level directories ({allowed})")
    if top == "UtilityVM" and path != "UtilityVM" and not is_at_or_under(path, UTILITY_VM_FILES):
        raise UnsafePathError("inside UtilityVM only UtilityVM\\Files may have content")


def check_link_location(path: str, what: str) -> None:
    """Hard links, their targets and whiteouts must live below Files or UtilityVM\\Files."""
    if not any(is_strictly_under(path, root) for root in LINK_AND_WHITEOUT_ROOTS):
        raise UnsafePathError(f"{what} outside Files\\ and UtilityVM\\Files\\")


def layer_path(name: str) -> str:
    """Validated Windows layer path (backslashes) of a tar name that has no stream part."""
    return layer_path_of_parts(split_components(name))


def layer_path_of_parts(parts: list[str]) -> str:
    """:func:`layer_path` of a name already split (and checked) by :func:`split_components`."""
    path = "\\".join(parts)
    if ":" in path:  # (the parts hold no separators: a colon in the path is in a part)
        check_no_colon(parts)
    check_location(path)
    return path


def split_stream_name(name: str) -> tuple[str, str] | None:
    """``(owner tar name, stream name)`` if ``name`` names an alternate data stream, else None.

    Stream entries are named ``<file>:<stream>`` (go-winio backuptar writes this) or
    ``<file>:<stream>:$DATA`` (what hcsshim's CIM importer expects).  Only the last component may
    carry the colon; other stream types and empty stream names are rejected.
    """
    stripped = name.rstrip("/\\")
    cut = max(stripped.rfind("/"), stripped.rfind("\\"))
    last = stripped[cut + 1 :]
    if ":" not in last:
        return None
    base, _, rest = last.partition(":")
    if base == "":
        raise UnsafePathError("stream entry without a file name before ':'")
    stream, sep, stream_type = rest.partition(":")
    if sep and stream_type != DATA_STREAM_TYPE:
        raise UnsafePathError(f"stream type {stream_type!r} is not supported (only $DATA)")
    check_stream_name(stream)
    return stripped[: cut + 1] + base, stream


def check_stream_name(stream: str) -> None:
    if stream == "":
        raise UnsafePathError("empty stream name")
    if any(c in stream for c in ":/\\\x00"):
        raise UnsafePathError("stream name contains ':', '/', '\\' or NUL")
    if utf16_units(stream) > MAX_NAME_UNITS:
        raise UnsafePathError(f"stream name is longer than {MAX_NAME_UNITS} characters")
