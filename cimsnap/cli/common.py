"""Helpers shared by the command modules: sizes, JSON output, the local snapshotter root."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from cimsnap.errors import UsageError

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGTP]?)(i?B)?\s*$", re.IGNORECASE)
_SIZE_SHIFT = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40, "P": 50}


def parse_size(text: str) -> int:
    """Plain bytes or a K/M/G/T/P suffix in powers of 1024 (``10G``, ``1MiB``, ``4096``)."""
    match = _SIZE_RE.match(text)
    if not match:
        raise UsageError(f"invalid size {text!r}: use bytes or a K/M/G/T suffix (powers of 1024)")
    return int(match.group(1)) << _SIZE_SHIFT[match.group(2).upper()]


def size_arg(text: str) -> int:
    """argparse ``type=`` wrapper around :func:`parse_size`."""
    import argparse

    try:
        return parse_size(text)
    except UsageError as err:
        raise argparse.ArgumentTypeError(err.message) from None


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n = n / 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def print_json(obj: Any) -> None:
    """Stable JSON: sorted keys, two-space indent, trailing newline."""
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def add_root_arguments(parser: argparse.ArgumentParser, *, mode: bool = True) -> None:
    """``--root`` (a snapshotter root, default the service's) and, with ``mode``, ``--mode``."""
    from cimsnap.service.server import default_root

    parser.add_argument(
        "--root", type=Path, default=None, help=f"snapshotter root (default {default_root()})"
    )
    if mode:
        parser.add_argument("--mode", choices=("cimfs", "wcifs"), default="cimfs")


def open_local_snapshotter(args: argparse.Namespace) -> Any:
    """The snapshotter at ``args.root`` for local commands (see :func:`add_root_arguments`).

    The scratch template is made when a container snapshot first needs it, not for ``ls``.
    """
    from cimsnap.service.server import default_root
    from cimsnap.snapshotter.snapshotter import CimFSSnapshotter

    return CimFSSnapshotter(args.root or default_root(), mode=args.mode, template_at_start=False)
