"""``cimsnap image unpack``: unpack an OCI image layout into the snapshotter, like containerd.

    cimsnap image unpack OCI_LAYOUT [--ref NAME] [--root DIR] [--mode cimfs|wcifs] [--json]
    cimsnap image unpack OCI_LAYOUT [--ref NAME] --address SOCKET
                         [--snapshotter NAME] [--namespace NS] [--json]

Reads the layout's index, picks the image (``--ref`` matches the
``org.opencontainers.image.ref.name`` or ``io.containerd.image.name`` annotation, or a tag;
without it the layout must hold one image), verifies the manifest, config and every layer blob
(compressed digest and diff ID), and unpacks the layers bottom to top as containerd's unpacker
does: each layer is prepared with an unpack key ``extract-<nanos>-<rand> <chainID>``, imported
into its CIM, and committed as its chain ID (layers already there are skipped).

Without ``--address`` the snapshotter root (``--root``, default as ``cimsnap serve``) is used
directly.  With ``--address`` the snapshots go through a snapshots API: containerd's socket
(then containerd records them: ``ctr snapshots ls`` shows the chain; ``--snapshotter`` names
the proxy plugin, ``--namespace`` the containerd namespace) or ``cimsnap serve``'s.  The layers
are imported here, into the directories the mounts name; as no containerd image record refers
to the snapshots, they get the ``containerd.io/gc.root`` label so containerd's garbage collector
keeps them (remove them with ``ctr snapshots rm``).

Afterwards a container gets its scratch with ``cimsnap snapshot prepare <key> <top chain ID>``
(or ``ctr snapshots prepare``).  ``--json`` prints ``{"layout", "ref", "manifest", "config",
"chain_id", "layers": [{"index", "digest", "media_type", "size", "diff_id", "chain_id", "key",
"skipped", "uncompressed_size"}]}``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cimsnap.cli.common import add_root_arguments, human_size, open_local_snapshotter, print_json

# containerd's GC root label (pkg/gc): snapshots carrying it are never collected.
GC_ROOT_LABEL = "containerd.io/gc.root"


@contextlib.contextmanager
def byte_progress(
    description: str, total: int | None, *, enabled: bool
) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields ``advance(bytes_done)`` (a no-op when disabled)."""
    if not enabled:
        yield lambda _done: None
        return
    with _byte_bars() as bar:
        task = bar.add_task(description, total=total)
        yield lambda done: bar.update(task, completed=done)


def _byte_bars() -> Any:
    """rich progress bars on stderr for byte counts: description, bar, bytes, speed, ETA."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    return Progress(*columns, console=Console(stderr=True))


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "image",
        help="unpack an OCI image layout into the snapshotter (as containerd's unpacker does)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    p = sub.add_parser("unpack", help="unpack an OCI image layout's layers as CimFS layers")
    p.add_argument("layout", metavar="OCI_LAYOUT", type=Path)
    p.add_argument("--ref", default=None, help="image name or tag in the layout's index")
    add_root_arguments(p)
    p.add_argument(
        "--address", default=None, help="snapshots API socket (containerd's, or cimsnap serve's)"
    )
    p.add_argument("--snapshotter", default="cimsnap", help="proxy snapshotter name (--address)")
    p.add_argument("--namespace", default="default", help="containerd namespace (--address)")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--progress",
        action="store_true",
        default=None,
        help="show progress bars (default: when stderr is a terminal)",
    )
    p.set_defaults(func=_unpack)


@contextlib.contextmanager
def _snapshots(args: argparse.Namespace) -> Iterator[Any]:
    if args.address is not None:
        from cimsnap.service.client import SnapshotsClient

        client = SnapshotsClient(
            args.address, snapshotter=args.snapshotter, namespace=args.namespace, timeout=None
        )
        try:
            yield client
        finally:
            client.close()
        return
    sn = open_local_snapshotter(args)
    try:
        yield sn
    finally:
        sn.close()


def _unpack(args: argparse.Namespace) -> int:
    from cimsnap.layers.oci import OciLayout
    from cimsnap.layers.unpack import unpack_image

    layout = OciLayout(args.layout)
    image = layout.image(args.ref)
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    extra: dict[str, str] = {}
    if args.address is not None:
        # containerd knows no image holding these snapshots: keep them from its GC.
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        extra[GC_ROOT_LABEL] = now
    with _snapshots(args) as sn, _bars(image, show) as progress:
        unpacked = unpack_image(layout, image, sn, progress=progress, extra_labels=extra)
    layers: list[dict[str, Any]] = []
    for index, (layer, done) in enumerate(zip(image.layers, unpacked, strict=True)):
        layers.append(
            {
                "index": index,
                "digest": layer.descriptor.digest,
                "media_type": layer.descriptor.media_type,
                "size": layer.descriptor.size,
                "diff_id": layer.diff_id,
                "chain_id": layer.chain_id,
                "key": done.key,
                "skipped": done.skipped,
                "uncompressed_size": done.applied.size if done.applied else None,
            }
        )
    report = {
        "layout": str(args.layout),
        "ref": args.ref,
        "manifest": image.manifest.digest,
        "config": image.config.digest,
        "chain_id": image.chain_id,
        "layers": layers,
    }
    if args.json:
        print_json(report)
        return 0
    for entry in layers:
        state = (
            "already unpacked"
            if entry["skipped"]
            else (f"unpacked {human_size(entry['uncompressed_size'] or 0)}")
        )
        print(f"layer {entry['index'] + 1}/{len(layers)} {entry['digest']}: {state}")
    print(f"image {image.manifest.digest}: top chain ID {image.chain_id}")
    print(f"give a container its scratch: cimsnap snapshot prepare <key> {image.chain_id}")
    return 0


@contextlib.contextmanager
def _bars(image: Any, enabled: bool) -> Iterator[Any]:
    from cimsnap.layers.unpack import Progress

    if not enabled:
        yield Progress()
        return
    with _byte_bars() as bars:
        tasks = [
            bars.add_task(
                f"layer {i + 1}/{len(image.layers)} {layer.descriptor.digest[7:19]}",
                total=layer.descriptor.size,
                start=False,
            )
            for i, layer in enumerate(image.layers)
        ]
        overall = bars.add_task("image", total=sum(layer.descriptor.size for layer in image.layers))
        done_before = [0]

        def started(index: int, _layer: Any) -> None:
            bars.start_task(tasks[index])

        def read(index: int, count: int) -> None:
            bars.update(tasks[index], completed=count)
            bars.update(overall, completed=done_before[0] + count)

        def finished(index: int, unpacked: Any) -> None:
            size = image.layers[index].descriptor.size
            label = " (already unpacked)" if unpacked.skipped else ""
            bars.update(
                tasks[index],
                completed=size,
                description=bars.tasks[tasks[index]].description + label,
            )
            done_before[0] += size
            bars.update(overall, completed=done_before[0])

        yield Progress(layer_started=started, bytes_read=read, layer_done=finished)
