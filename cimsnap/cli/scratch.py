"""``cimsnap scratch``: create, inspect and expand container scratch disks.

``info --json`` prints (stable keys): ``path``, ``disk_guid``, ``partition_guid`` (uppercase,
no braces), ``disk_size``, ``sector_size``, ``partition_offset``, ``partition_size``,
``file_size``, ``allocated_bytes``, ``gpt_damage`` (list of repaired-on-read problems),
``volume`` (``filesystem``, ``version``, ``label``, ``serial``, ``size``, ``free``,
``cluster_size``, ``dirty``; null when unreadable) and ``volume_error``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from cimsnap.cli.common import human_size, print_json, size_arg
from cimsnap.scratch import DEFAULT_BLOCK_SIZE, DEFAULT_SIZE, create_scratch, expand, scratch_info


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "scratch", help="container scratch disks (GPT + NTFS in a VHDX, like Windows makes them)"
    )
    sub = parser.add_subparsers(dest="scratch_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("create", help="create a formatted dynamic VHDX scratch disk")
    p.add_argument("path")
    p.add_argument("--size", type=size_arg, default=DEFAULT_SIZE, help="virtual size (10G)")
    p.add_argument("--block-size", type=size_arg, default=DEFAULT_BLOCK_SIZE, help="(1M)")
    p.add_argument("--logical-sector-size", type=int, choices=(512, 4096), default=512)
    p.set_defaults(func=_create)

    p = sub.add_parser("info", help="disk and partition GUIDs, sizes and the volume's state")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_info)

    p = sub.add_parser("expand", help="grow the disk, its partition and its NTFS volume")
    p.add_argument("path")
    p.add_argument("--size", type=size_arg, required=True)
    p.set_defaults(func=_expand)


def _create(args: argparse.Namespace) -> int:
    layout = create_scratch(
        args.path,
        size=args.size,
        block_size=args.block_size,
        logical_sector_size=args.logical_sector_size,
    )
    print(
        f"{args.path}: {human_size(layout.disk_size)} scratch disk, "
        f"disk {str(layout.disk_guid).upper()}, partition {str(layout.partition_guid).upper()}"
    )
    return 0


def _info(args: argparse.Namespace) -> int:
    info = scratch_info(args.path)
    st = os.stat(args.path)
    doc: dict[str, Any] = {
        "path": str(args.path),
        **info.to_json(),
        "file_size": st.st_size,
        "allocated_bytes": st.st_blocks * 512,
    }
    if args.json:
        print_json(doc)
        return 0
    print(f"disk:       {doc['disk_guid']}  {human_size(info.disk_size)}")
    print(
        f"partition:  {doc['partition_guid']}  {human_size(info.partition_size)} at offset "
        f"{info.partition_offset}"
    )
    volume = doc["volume"]
    if volume is not None:
        state = "dirty" if volume["dirty"] else "clean"
        print(
            f"volume:     NTFS {volume['version']}, {human_size(volume['size'])}, "
            f"{human_size(volume['free'])} free, serial {volume['serial']}, {state}"
        )
    else:
        print(f"volume:     unreadable: {info.volume_error}")
    print(f"file:       {human_size(st.st_size)} ({human_size(st.st_blocks * 512)} allocated)")
    for problem in info.gpt_damage:
        print(f"warning:    {problem} (the other GPT copy was used)")
    return 0


def _expand(args: argparse.Namespace) -> int:
    result = expand(args.path, args.size)
    print(
        f"{args.path}: disk {human_size(result.old_disk_size)} -> "
        f"{human_size(result.new_disk_size)}, volume "
        f"{human_size(result.volume.new_size)}"
    )
    return 0
