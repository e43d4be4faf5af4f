"""``cimsnap layer``: import a Windows layer tar into a CimFS layer, export it back.

    cimsnap layer import TAR LAYERDIR [--parent PARENTDIR]... [--legacy] [--json]
    cimsnap layer export LAYERDIR TAR [--parent PARENTDIR]... [--json]

``import`` writes the layer's CIM where hcsshim puts it, ``<dirname(LAYERDIR)>/cim-layers/
<basename(LAYERDIR)>.cim`` (a fork of the first parent's CIM), and keeps the files that live
outside the CIM in LAYERDIR (registry hives, the utility VM's BCD, boot manager and scratch
VHDs, ``layout``).  Parents are given nearest first, as containerd orders them.  TAR may be
gzip- or zstd-compressed (recognised by content) and ``-`` reads standard input.  LAYERDIR must
not exist or be empty; on any error nothing of the layer is left.  ``--legacy`` writes the
expanded-files (wcifs) layout instead of a CIM.

``export`` writes the layer as a tar (the difference to its first parent) such that importing
it again gives the same layer; ``-`` writes to standard output.  A CIM layer or a legacy layer
directory is recognised by what is there.

``--json`` prints ``{"layer_dir", "cim", "size", "entries", "digest", "diff_id",
"compression", "uvm_build", "uvm", "merged_hives"}`` for import (``uvm``:
``{"base_vhd", "template_vhd", "disk_guid", "partition_guid", "cim_root"}`` or null) and
``{"layer_dir", "format", "tar", "entries", "files", "links", "whiteouts", "bytes"}`` for export.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from cimsnap.cli.common import human_size, print_json
from cimsnap.errors import UsageError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "layer",
        help="import a Windows layer tar into a CimFS layer (or export it)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("import", help="import a layer tar into LAYERDIR and its CIM")
    p.add_argument("tar", metavar="TAR", help="layer tar (gzip/zstd recognised), - for stdin")
    p.add_argument("layer_dir", metavar="LAYERDIR", type=Path)
    _add_parent_dirs(p)
    p.add_argument("--legacy", action="store_true", help="write the expanded (wcifs) layout")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--progress",
        action="store_true",
        default=None,
        help="show a progress bar (default: when stderr is a terminal)",
    )
    p.set_defaults(func=_import)

    p = sub.add_parser("export", help="export a layer as a tar")
    p.add_argument("layer_dir", metavar="LAYERDIR", type=Path)
    p.add_argument("tar", metavar="TAR", help="output tar, - for stdout")
    _add_parent_dirs(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_export)


@contextlib.contextmanager
def _open_input(name: str) -> Iterator[tuple[BinaryIO, int | None]]:
    if name == "-":
        yield sys.stdin.buffer, None
        return
    try:
        handle = open(name, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise UsageError("no such layer tar", path=name) from None
    with handle:
        yield handle, os.fstat(handle.fileno()).st_size


def _import(args: argparse.Namespace) -> int:
    from cimsnap.cli.image import byte_progress
    from cimsnap.layers.apply import import_blob, local_target

    target = local_target(args.layer_dir, args.parent, legacy=args.legacy)
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    with (
        _open_input(args.tar) as (raw, total),
        byte_progress(
            f"importing {Path(args.tar).name if args.tar != '-' else 'stdin'}", total, enabled=show
        ) as advance,
    ):
        applied = import_blob(raw, target, name=args.tar, progress=advance)
    result = applied.result
    uvm = result.uvm
    report = {
        "layer_dir": str(result.layer_dir),
        "cim": str(target.cim_path) if target.cim_path is not None else None,
        "size": result.size,
        "entries": result.entries,
        "digest": applied.blob.digest,
        "diff_id": applied.digest,
        "compression": applied.blob.compression,
        "uvm_build": result.uvm_build,
        "uvm": None
        if uvm is None
        else {
            "base_vhd": str(uvm.base_vhd),
            "template_vhd": str(uvm.template_vhd),
            "disk_guid": uvm.disk_guid,
            "partition_guid": uvm.partition_guid,
            "cim_root": uvm.cim_root,
        },
        "merged_hives": result.merged_hives,
    }
    if args.json:
        print_json(report)
        return 0
    where = report["cim"] or f"{result.layer_dir} (legacy layout)"
    print(f"imported {result.entries} entries, {human_size(result.size)} of files into {where}")
    print(f"diff id {applied.digest}")
    if result.merged_hives:
        print("merged hives: " + ", ".join(result.merged_hives))
    if uvm is not None:
        print(
            f"utility VM {result.uvm_build}: {uvm.template_vhd} (disk {uvm.disk_guid}, "
            f"partition {uvm.partition_guid}), boots from {uvm.cim_root}"
        )
    elif result.uvm_build is not None and target.cim_path is None:
        print(
            f"utility VM build {result.uvm_build}: scratch template made (a legacy layer's"
            " utility VM does not boot from a CIM)"
        )
    elif result.uvm_build is not None:
        print(f"utility VM build {result.uvm_build}: too old to boot from a CIM, not set up")
    return 0


def _export(args: argparse.Namespace) -> int:
    from cimsnap.layers.export import export_cim_layer
    from cimsnap.layers.layout import cim_path_for
    from cimsnap.layers.legacy import TOMBSTONES_FILE, export_legacy_layer

    layer_dir: Path = args.layer_dir
    if cim_path_for(layer_dir).is_file():
        kind = "cim"
    elif (layer_dir / TOMBSTONES_FILE).is_file():
        kind = "legacy"
    else:
        raise UsageError(
            f"not a layer: no CIM at {cim_path_for(layer_dir)} and no {TOMBSTONES_FILE}",
            path=layer_dir,
        )

    def run(out: BinaryIO) -> Any:
        if kind == "cim":
            return export_cim_layer(layer_dir, out, args.parent)
        return export_legacy_layer(layer_dir, out, args.parent)

    if args.tar == "-":
        result = run(sys.stdout.buffer)
        sys.stdout.buffer.flush()
    else:
        final = Path(args.tar)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as out:
                result = run(out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
    report = {
        "layer_dir": str(layer_dir),
        "format": kind,
        "tar": args.tar,
        "entries": result.entries,
        "files": result.files,
        "links": result.links,
        "whiteouts": result.whiteouts,
        "bytes": result.bytes,
    }
    if args.json and args.tar != "-":
        print_json(report)
    elif args.tar != "-":
        print(
            f"exported {result.entries} entries ({result.files} files, {result.links} links, "
            f"{result.whiteouts} whiteouts, {human_size(result.bytes)}) to {args.tar}"
        )
    return 0


def _add_parent_dirs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--parent",
        action="append",
        default=[],
        type=Path,
        metavar="PARENTDIR",
        help="parent layer directory (repeat, nearest first)",
    )
