"""``cimsnap serve``: run the containerd proxy snapshotter until SIGTERM/SIGINT.

Prints the containerd ``proxy_plugins`` configuration for the chosen socket on stdout, then logs
(structured, to stderr) while serving.  Defaults: root /var/lib/cimsnap and socket
/run/cimsnap/cimsnap.sock as root, ``$XDG_DATA_HOME/cimsnap`` (root and socket) otherwise.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from cimsnap.cli.common import size_arg


def register(subparsers: Any) -> None:
    from cimsnap.service.server import DEFAULT_WORKERS, PLUGIN_NAME, default_address, default_root

    parser = subparsers.add_parser(
        "serve",
        help="serve containerd's snapshots API on a unix socket (proxy snapshotter)",
        description=(__doc__ or "").replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--root", type=Path, default=None, help=f"snapshotter root (default {default_root()})"
    )
    parser.add_argument(
        "--address",
        type=Path,
        default=None,
        help=f"unix socket to listen on (default {default_address()})",
    )
    parser.add_argument(
        "--mode",
        choices=("cimfs", "wcifs"),
        default="cimfs",
        help="cimfs: one shared scratch template (default); wcifs: legacy template per base layer",
    )
    parser.add_argument(
        "--name",
        default=PLUGIN_NAME,
        help="proxy plugin name used in the printed containerd configuration",
    )
    parser.add_argument(
        "--template-size",
        type=size_arg,
        default=None,
        help="size of a newly made scratch template (default 10G)",
    )
    parser.add_argument(
        "--durability",
        choices=("full", "fast"),
        default="full",
        help="full: every acknowledged operation survives a power loss (fsync, default); "
        "fast: it survives a crash of this process, a power loss may undo the last ones",
    )
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help=argparse.SUPPRESS)
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error")
    )
    parser.add_argument("--log-format", default="text", choices=("text", "json"))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cimsnap.scratch.template import DEFAULT_TEMPLATE_SIZE
    from cimsnap.service import logs
    from cimsnap.service.server import (
        SnapshotterServer,
        default_address,
        default_root,
        proxy_plugin_snippet,
    )
    from cimsnap.snapshotter.snapshotter import CimFSSnapshotter

    logs.configure("debug" if args.debug else args.log_level, args.log_format)
    root = (args.root or default_root()).absolute()
    address = (args.address or default_address()).absolute()

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        snapshotter = CimFSSnapshotter(
            root,
            mode=args.mode,
            template_size=args.template_size or DEFAULT_TEMPLATE_SIZE,
            durable=args.durability == "full",
        )
        server = SnapshotterServer(snapshotter, address, workers=args.workers)
        try:
            server.start()
        except BaseException:
            snapshotter.close()
            raise
        try:
            sys.stdout.write(proxy_plugin_snippet(address, args.name))
            sys.stdout.flush()
            while not stop.wait(3600):
                pass
        finally:
            server.stop()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0
