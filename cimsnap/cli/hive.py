"""``cimsnap hive``: create, query, edit, merge and export registry hive files.

    cimsnap hive create FILE [--root-name NAME] [--minor N] [--force]
    cimsnap hive set FILE KEY [--name NAME] --type TYPE [--data DATA]...
    cimsnap hive get FILE KEY [--name NAME] [--json]
    cimsnap hive delete FILE KEY [--name NAME]
    cimsnap hive merge BASE DELTA OUT
    cimsnap hive export FILE [KEY] [--prefix PREFIX] [-o OUT.reg]

KEY is a backslash path below the hive's root ("" or "\\" is the root).  TYPE is REG_SZ,
REG_EXPAND_SZ, REG_MULTI_SZ, REG_DWORD, REG_QWORD, REG_BINARY (hex data), REG_NONE (optional hex
data), REG_DWORD_BIG_ENDIAN, REG_LINK or a number.  ``set`` creates missing keys; --data is
repeated for REG_MULTI_SZ; without --name it sets the default value.  ``get`` and ``delete``
without --name act on the key (``--name ""`` is the default value).  Transaction logs beside
FILE (FILE.LOG1/.LOG2/.LOG) are applied when the hive is dirty; edits save a clean hive
(temporary file, fsync, rename).

``get --json`` prints ``{"path", "subkeys": [names], "values": [{"name", "type", "type_id",
"data", "raw"}]}`` (or one value object with --name): ``data`` is a string for REG_SZ,
REG_EXPAND_SZ and REG_LINK, a list of strings for REG_MULTI_SZ, a number for REG_DWORD,
REG_DWORD_BIG_ENDIAN and REG_QWORD, else hex; ``raw`` is always the stored bytes in hex.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cimsnap.cli.common import print_json
from cimsnap.errors import AlreadyExistsError, NotFoundError
from cimsnap.formats.regf import Hive, Key, Value, merge_hives, parse_type, type_name
from cimsnap.formats.regf.regtext import export_lines
from cimsnap.formats.regf.structures import RegType
from cimsnap.formats.regf.values import parse_value_text


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "hive",
        help="create, query, edit, merge and export registry hives",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="hive_command", metavar="SUBCOMMAND")
    sub.required = True

    create = sub.add_parser("create", help="create an empty hive")
    create.add_argument("file", type=Path)
    create.add_argument("--root-name", default="ROOT", help="name of the root key (ROOT)")
    create.add_argument("--minor", type=int, default=5, help="regf minor version 3..6 (5)")
    create.add_argument("--force", action="store_true", help="replace an existing file")
    create.set_defaults(func=cmd_create)

    set_ = sub.add_parser("set", help="set a value (creates missing keys)")
    set_.add_argument("file", type=Path)
    set_.add_argument("key")
    set_.add_argument("--name", default="", help="value name (default: the default value)")
    set_.add_argument("--type", required=True, dest="value_type", help="REG_SZ, REG_DWORD...")
    set_.add_argument("--data", action="append", default=[], help="data (repeat for MULTI_SZ)")
    set_.set_defaults(func=cmd_set)

    get = sub.add_parser("get", help="show a key or one value")
    get.add_argument("file", type=Path)
    get.add_argument("key")
    get.add_argument("--name", default=None, help='one value ("" = the default value)')
    get.add_argument("--json", action="store_true")
    get.set_defaults(func=cmd_get)

    delete = sub.add_parser("delete", help="delete a key (with its subtree) or one value")
    delete.add_argument("file", type=Path)
    delete.add_argument("key")
    delete.add_argument("--name", default=None, help='the value to delete ("" = default)')
    delete.set_defaults(func=cmd_delete)

    merge = sub.add_parser("merge", help="merge a base hive with a delta hive (ORMergeHives)")
    merge.add_argument("base", type=Path)
    merge.add_argument("delta", type=Path)
    merge.add_argument("out", type=Path)
    merge.set_defaults(func=cmd_merge)

    export = sub.add_parser("export", help="print the .reg text of the hive (or of KEY)")
    export.add_argument("file", type=Path)
    export.add_argument("key", nargs="?", default="")
    export.add_argument("--prefix", default=None, help="path shown for the root (root's name)")
    export.add_argument(
        "-o", "--output", type=Path, help="write a .reg file (UTF-16LE with BOM, CRLF)"
    )
    export.set_defaults(func=cmd_export)


def _open(path: Path) -> Hive:
    hive = Hive.open(path)
    for warning in hive.warnings:
        print(f"cimsnap: warning: {path}: {warning}", file=sys.stderr)
    return hive


def cmd_create(args: argparse.Namespace) -> int:
    if args.file.exists() and not args.force:
        raise AlreadyExistsError("file exists (use --force to replace it)", path=args.file)
    hive = Hive.create(args.root_name, minor_version=args.minor, file_name=args.file.name)
    hive.save(args.file)
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    hive = _open(args.file)
    value_type = parse_type(args.value_type)
    data = parse_value_text(value_type, args.data)
    hive.set_value(args.key, args.name, value_type, data)
    hive.save(args.file)
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    hive = _open(args.file)
    key = hive.key(args.key)
    if args.name is not None:
        value = key.value(args.name)
        if value is None:
            raise NotFoundError(
                f"value {args.name or '(default)'!r} not found in {key.path or '<root>'}",
                path=args.file,
            )
        if args.json:
            print_json(value_json(value))
        else:
            print(value_line(value))
        return 0
    if args.json:
        print_json(
            {
                "path": key.path,
                "subkeys": [k.name for k in key.subkeys()],
                "values": [value_json(v) for v in key.values()],
            }
        )
        return 0
    print("\\" + key.path)
    for value in key.values():
        print(value_line(value))
    for child in key.subkeys():
        print("\\" + child.path)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    hive = _open(args.file)
    if args.name is None:
        hive.delete_key(args.key)
    else:
        hive.delete_value(args.key, args.name)
    hive.save(args.file)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    merge_hives(args.base, args.delta, args.out)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    hive = _open(args.file)
    top: Key = hive.key(args.key)
    lines = export_lines(hive, top, prefix=args.prefix)
    if args.output is None:
        for line in lines:
            print(line)
        return 0
    text = "\r\n".join(lines) + "\r\n"
    args.output.write_bytes(b"\xff\xfe" + text.encode("utf-16-le", "surrogatepass"))
    return 0


def value_json(value: Value) -> dict[str, Any]:
    decoded = value.decoded()
    data: Any = decoded.hex() if isinstance(decoded, bytes) else decoded
    return {
        "name": value.name,
        "type": type_name(value.type),
        "type_id": value.type,
        "data": data,
        "raw": value.data.hex(),
        **({"tombstone": True} if value.is_tombstone else {}),
    }


def value_line(value: Value) -> str:
    """``reg query``'s layout: four spaces, name, type, data."""
    decoded = value.decoded()
    if isinstance(decoded, list):
        shown = "\\0".join(decoded)
    elif isinstance(decoded, int):
        shown = f"{decoded:#x}"
    elif isinstance(decoded, bytes):
        shown = decoded.hex().upper()
    else:
        shown = decoded
    if value.type == RegType.REG_NONE and not value.data:
        shown = ""
    name = value.name or "(Default)"
    return f"    {name}    {type_name(value.type)}    {shown}".rstrip()
