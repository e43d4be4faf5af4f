"""Command line: argument parsing, progress, human and ``--json`` output.

Each command group lives in its own module of this package and exposes
``register(subparsers) -> None``; :mod:`cimsnap.cli.main` discovers them, so adding a command group
never edits a shared file.
"""
