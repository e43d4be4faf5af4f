"""``cimsnap snapshot ...``: use a snapshotter root directly, without containerd.

    cimsnap snapshot [--root DIR] [--mode cimfs|wcifs] prepare KEY [PARENT] [--label K=V]...
    cimsnap snapshot view KEY PARENT [--label K=V]...
    cimsnap snapshot commit NAME KEY [--label K=V]...
    cimsnap snapshot rm KEY...
    cimsnap snapshot ls [--filter EXPR]... [--json]
    cimsnap snapshot mounts KEY [--json]
    cimsnap snapshot usage [KEY...] [--json]
    cimsnap snapshot label KEY [K=V | K=]...          (K= removes the label)
    cimsnap snapshot cleanup

The names follow ``ctr snapshots``.  Output for humans by default, ``--json`` for scripts.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from typing import Any

from cimsnap.cli.common import add_root_arguments, human_size, open_local_snapshotter, print_json
from cimsnap.errors import UsageError


def _labels(pairs: list[str] | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"invalid label {pair!r}: use KEY=VALUE")
        labels[key] = value
    return labels


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "snapshot",
        help="prepare, commit, list and remove snapshots in a snapshotter root",
        description=(__doc__ or "").replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_root_arguments(parser)
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True

    for name, helptext in (("prepare", "create an active snapshot"), ("view", "create a view")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("key")
        p.add_argument("parent", nargs="?" if name == "prepare" else None, default="")
        p.add_argument("--label", action="append", metavar="K=V")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=_create)

    p = sub.add_parser("commit", help="commit an active (unpack) snapshot")
    p.add_argument("name")
    p.add_argument("key")
    p.add_argument("--label", action="append", metavar="K=V")
    p.set_defaults(func=_commit)

    p = sub.add_parser("rm", aliases=["remove", "delete"], help="remove snapshots")
    p.add_argument("keys", nargs="+", metavar="KEY")
    p.set_defaults(func=_remove)

    p = sub.add_parser("ls", aliases=["list"], help="list snapshots")
    p.add_argument("--filter", action="append", metavar="EXPR", help="containerd filter (OR-ed)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_list)

    p = sub.add_parser("info", help="show a snapshot's information")
    p.add_argument("key")
    p.set_defaults(func=_info)

    p = sub.add_parser("mounts", help="show the mounts of an active snapshot or view")
    p.add_argument("key")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_mounts)

    p = sub.add_parser("usage", help="disk usage of snapshots")
    p.add_argument("keys", nargs="*", metavar="KEY")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_usage)

    p = sub.add_parser("label", help="set (K=V) or remove (K=) labels")
    p.add_argument("key")
    p.add_argument("labels", nargs="*", metavar="K=V")
    p.set_defaults(func=_label)

    p = sub.add_parser("cleanup", help="finish interrupted removals, delete orphaned files")
    p.set_defaults(func=_cleanup)


def _info_json(info: Any) -> dict[str, Any]:
    def iso(ns: int) -> str:
        return datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC).isoformat()

    return {
        "name": info.name,
        "parent": info.parent,
        "kind": info.kind.display_name,
        "created": iso(info.created_ns),
        "updated": iso(info.updated_ns),
        "labels": info.labels,
    }


def _mounts_json(mounts: Any) -> list[dict[str, Any]]:
    return [{"type": m.type, "source": m.source, "options": list(m.options)} for m in mounts]


def _print_mounts(mounts: Any) -> None:
    for m in mounts:  # same shape as `ctr snapshots mounts`
        print(f"mount -t {m.type} {m.source} <target> -o {','.join(m.options)}")


def _create(args: argparse.Namespace) -> int:
    labels = _labels(args.label)
    with open_local_snapshotter(args) as sn:
        fn = sn.prepare if args.action == "prepare" else sn.view
        mounts = fn(args.key, args.parent, labels)
    if args.json:
        print_json(_mounts_json(mounts))
    else:
        _print_mounts(mounts)
    return 0


def _commit(args: argparse.Namespace) -> int:
    with open_local_snapshotter(args) as sn:
        sn.commit(args.name, args.key, _labels(args.label))
    return 0


def _remove(args: argparse.Namespace) -> int:
    with open_local_snapshotter(args) as sn:
        for key in args.keys:
            sn.remove(key)
    return 0


def _list(args: argparse.Namespace) -> int:
    with open_local_snapshotter(args) as sn:
        infos = list(sn.walk(args.filter or []))
    if args.json:
        print_json([_info_json(i) for i in infos])
        return 0
    rows = [("KEY", "PARENT", "KIND")] + [(i.name, i.parent, i.kind.display_name) for i in infos]
    widths = [max(len(r[c]) for r in rows) for c in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _info(args: argparse.Namespace) -> int:
    with open_local_snapshotter(args) as sn:
        print_json(_info_json(sn.stat(args.key)))
    return 0


def _mounts(args: argparse.Namespace) -> int:
    with open_local_snapshotter(args) as sn:
        mounts = sn.mounts(args.key)
    if args.json:
        print_json(_mounts_json(mounts))
    else:
        _print_mounts(mounts)
    return 0


def _usage(args: argparse.Namespace) -> int:
    with open_local_snapshotter(args) as sn:
        keys = args.keys or [i.name for i in sn.walk()]
        usages = {key: sn.usage(key) for key in keys}
    if args.json:
        print_json({k: {"size": u.size, "inodes": u.inodes} for k, u in usages.items()})
        return 0
    print(f"{'KEY':<40} {'SIZE':>12} {'INODES':>8}")
    for key, u in usages.items():
        print(f"{key:<40} {human_size(u.size):>12} {u.inodes:>8}")
    return 0


def _label(args: argparse.Namespace) -> int:
    from cimsnap.snapshotter.model import Info

    labels = _labels(args.labels)
    with open_local_snapshotter(args) as sn:
        if labels:
            info = sn.update(Info(name=args.key, labels=labels), [f"labels.{k}" for k in labels])
        else:
            info = sn.stat(args.key)
    sys.stdout.write(",".join(f"{k}={v}" for k, v in sorted(info.labels.items())) + "\n")
    return 0


def _cleanup(args: argparse.Namespace) -> int:
    with open_local_snapshotter(args) as sn:
        for action in sn.cleanup():
            print(action)
    return 0
