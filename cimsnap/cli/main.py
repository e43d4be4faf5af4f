"""Entry point of the ``cimsnap`` command.

Command groups are the modules of :mod:`cimsnap.cli` that define ``register(subparsers)``; each
sets ``func`` on its parsers.  Errors derived from :class:`~cimsnap.errors.CimsnapError` (and
OSError) print one line and exit 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

import cimsnap
import cimsnap.cli
from cimsnap.errors import CimsnapError, render_error

_NOT_COMMANDS = {"main", "common", "__main__"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cimsnap",
        description="CimFS layer store and containerd snapshotter for Windows containers.",
    )
    parser.add_argument("--version", action="version", version=f"cimsnap {cimsnap.__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(cimsnap.cli.__path__), key=lambda m: m.name):
        if info.name in _NOT_COMMANDS or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"cimsnap.cli.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        result = args.func(args)
    except (CimsnapError, OSError) as err:
        if args.debug:
            raise
        print(render_error(err), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cimsnap: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
