"""``cimsnap vhdx``: create, inspect, check, grow, export and import VHDX disks."""

from __future__ import annotations

import argparse
import os
from typing import Any

from cimsnap.cli.common import human_size, print_json, size_arg
from cimsnap.errors import UsageError
from cimsnap.formats import vhdx


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("vhdx", help="VHDX virtual disks ([MS-VHDX])")
    sub = parser.add_subparsers(dest="vhdx_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("create", help="create a dynamic, fixed or differencing disk")
    p.add_argument("path")
    p.add_argument("--size", type=size_arg, help="virtual size (default with --parent: its size)")
    p.add_argument("--block-size", type=size_arg, help="block size, 1M..256M (default 1M)")
    p.add_argument("--parent", help="make a differencing disk of this parent")
    p.add_argument("--fixed", action="store_true", help="allocate every block (a fixed disk)")
    p.add_argument("--logical-sector-size", type=int, choices=(512, 4096), default=512)
    p.set_defaults(func=_create)

    p = sub.add_parser("info", help="describe a disk and its parent chain")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_info)

    p = sub.add_parser("check", help="verify a disk (and its parent chain)")
    p.add_argument("path")
    p.set_defaults(func=_check)

    p = sub.add_parser("resize", help="grow a disk (shrinking is refused)")
    p.add_argument("path")
    p.add_argument("--size", type=size_arg, required=True)
    p.set_defaults(func=_resize)

    p = sub.add_parser("export", help="write the virtual disk to a sparse raw file")
    p.add_argument("path")
    p.add_argument("out")
    p.set_defaults(func=_export)

    p = sub.add_parser("import", help="make a dynamic VHDX from a raw file")
    p.add_argument("raw")
    p.add_argument("out")
    p.add_argument("--block-size", type=size_arg, default=1 << 20)
    p.set_defaults(func=_import)


def _create(args: argparse.Namespace) -> int:
    if args.parent is not None:
        if args.fixed:
            raise UsageError("--fixed and --parent exclude each other")
        vhdx.create_differencing(args.path, args.parent, block_size=args.block_size)
        if args.size is not None:
            with vhdx.open_disk(args.path) as disk:
                current = disk.virtual_size
            if args.size < current:
                # Undo: the differencing disk cannot be smaller than its parent.
                os.unlink(args.path)
                raise UsageError(f"--size {args.size} is smaller than the parent ({current})")
            if args.size > current:
                vhdx.resize(args.path, args.size)
        return 0
    if args.size is None:
        raise UsageError("--size is required (unless --parent is given)")
    vhdx.create(
        args.path,
        args.size,
        block_size=args.block_size or (1 << 20),
        logical_sector_size=args.logical_sector_size,
        fixed=args.fixed,
    )
    return 0


def _info(args: argparse.Namespace) -> int:
    data = vhdx.info(args.path)
    if args.json:
        print_json(data)
        return 0
    blocks = data["blocks"]
    lines = [
        f"path:                 {data['path']}",
        f"type:                 {data['type']}",
        f"virtual size:         {human_size(data['virtual_size'])} ({data['virtual_size']} bytes)",
        f"block size:           {human_size(data['block_size'])}",
        f"sector size:          {data['logical_sector_size']} logical, "
        f"{data['physical_sector_size']} physical",
        f"file size:            {human_size(data['file_size'])} "
        f"({human_size(data['allocated_bytes'])} allocated)",
        f"blocks:               {blocks['total']} ({blocks['fully_present']} fully present, "
        f"{blocks['partially_present']} partially present)",
        f"creator:              {data['creator']}",
        f"virtual disk id:      {data['virtual_disk_id']}",
        f"data write guid:      {data['data_write_guid']}",
    ]
    if data["log_replay_pending"]:
        lines.append("log:                  replay pending (not cleanly closed)")
    for i, item in enumerate(data["chain"]):
        label = "chain:" if i == 0 else ""
        lines.append(
            f"{label:<22}{'  ' * i}{item['path']} [{item['type']}] {item['linkage_status']}"
        )
    print("\n".join(lines))
    return 0


def _check(args: argparse.Namespace) -> int:
    vhdx.check(args.path)
    print(f"{args.path}: ok")
    return 0


def _resize(args: argparse.Namespace) -> int:
    vhdx.resize(args.path, args.size)
    return 0


def _export(args: argparse.Namespace) -> int:
    vhdx.export_raw(args.path, args.out)
    return 0


def _import(args: argparse.Namespace) -> int:
    vhdx.import_raw(args.raw, args.out, block_size=args.block_size)
    return 0
