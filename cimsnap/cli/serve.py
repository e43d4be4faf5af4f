"""``cimsnap serve``: run the containerd proxy snapshotter until SIGTERM/SIGINT.

Prints the containerd ``proxy_plugins`` configuration for the chosen socket on stdout, then logs
(structured, to stderr) while serving.  Defaults: root /var/lib/cimsnap and socket
/run/cimsnap/cimsnap.sock as root, ``$XDG_DATA_HOME/cimsnap`` (root and socket) otherwise.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from cimsnap.cli.common import add_root_arguments, size_arg

log = logging.getLogger("cimsnap.service.server")

# Seconds into a shutdown after which the stacks of all threads are written to stderr.
SHUTDOWN_DIAGNOSE_AFTER = 8.0


def register(subparsers: Any) -> None:
    from cimsnap.service.server import DEFAULT_WORKERS, PLUGIN_NAME, default_address

    parser = subparsers.add_parser(
        "serve",
        help="serve containerd's snapshots API on a unix socket (proxy snapshotter)",
        description=(__doc__ or "").replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_root_arguments(parser, mode=False)
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
    parser.add_argument(
        "--content-dir",
        type=Path,
        action="append",
        default=None,
        help="containerd content store directory the differ reads layer blobs from (repeatable; "
        "default /var/lib/containerd/io.containerd.content.v1.content if present; same as "
        "CIMSNAP_CONTENT_DIR)",
    )
    parser.add_argument(
        "--containerd-address",
        default=None,
        help="containerd socket whose content API the differ reads blobs through (default "
        "/run/containerd/containerd.sock if present, '' for none; same as "
        "CIMSNAP_CONTAINERD_ADDRESS)",
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
    from cimsnap.service.differ import ENV_CONTAINERD_ADDRESS, ENV_CONTENT_DIR
    from cimsnap.service.server import (
        SnapshotterServer,
        default_address,
        default_root,
        proxy_plugin_snippet,
    )
    from cimsnap.snapshotter.snapshotter import CimFSSnapshotter

    logs.configure("debug" if args.debug else args.log_level, args.log_format)
    # The differ plugin reads its content sources from the environment; the flags set it.
    if args.content_dir is not None:
        os.environ[ENV_CONTENT_DIR] = ":".join(str(d.absolute()) for d in args.content_dir)
    if args.containerd_address is not None:
        os.environ[ENV_CONTAINERD_ADDRESS] = args.containerd_address
    root = (args.root or default_root()).absolute()
    address = (args.address or default_address()).absolute()

    # Block SIGTERM/SIGINT before any thread starts (gRPC's pool inherits the mask) and take them
    # with sigwait in this thread: no Python-level handler runs at an arbitrary point, so none
    # can deadlock on a lock the interrupted code holds.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
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
            signum = signal.sigwait(stop_signals)
            log.info("stopping", extra={"signal": signal.Signals(signum).name})
        finally:
            # A shutdown that hangs prints every thread's stack before the supervisor's kill.
            faulthandler.dump_traceback_later(SHUTDOWN_DIAGNOSE_AFTER, exit=False)
            try:
                server.stop()
            finally:
                faulthandler.cancel_dump_traceback_later()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
    return 0
