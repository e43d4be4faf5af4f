"""Service plugins: further gRPC services served next to snapshots.v1 on the same socket.

A plugin is a module in this package (``cimsnap/service/plugins/<name>.py``) defining::

    PROXY_PLUGIN_TYPE: str | None = "diff"      # containerd proxy_plugins type, or None
    def handlers(context: PluginContext) -> Sequence[grpc.GenericRpcHandler]: ...

The server calls ``handlers`` once at start-up with the running snapshotter (so e.g. a differ's
``containerd.services.diff.v1.Diff/Apply`` can import a layer into the snapshot a CimFS mount
names) and registers what it returns.  A plugin with a type gets an entry in the printed
containerd 2.x configuration, ``[proxy_plugins.cimsnap-<module>]`` (1.6/1.7 proxy only
snapshotters and content stores).  Modules whose name starts with ``_`` are skipped.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc


@dataclass(frozen=True)
class PluginContext:
    snapshotter: Any  # cimsnap.snapshotter.snapshotter.CimFSSnapshotter
    root: Path


@dataclass(frozen=True)
class ServicePlugin:
    name: str
    type: str | None
    handlers: Callable[[PluginContext], Sequence[grpc.GenericRpcHandler]]


def discover() -> list[ServicePlugin]:
    """Every plugin module of this package, by name."""
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        handlers = getattr(module, "handlers", None)
        if callable(handlers):
            found.append(
                ServicePlugin(info.name, getattr(module, "PROXY_PLUGIN_TYPE", None), handlers)
            )
    return found
