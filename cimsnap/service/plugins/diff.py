"""Registers the differ (``containerd.services.diff.v1.Diff``, :mod:`cimsnap.service.differ`)
on the snapshotter's socket; containerd 2.x uses it through a ``type = "diff"`` proxy plugin."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from cimsnap.service.plugins import PluginContext

PROXY_PLUGIN_TYPE = "diff"


def handlers(context: PluginContext) -> Sequence[grpc.GenericRpcHandler]:
    from cimsnap.service.differ import DiffService, content_from_environment, generic_handler

    service = DiffService(content_from_environment(), snapshots_dir=context.root / "snapshots")
    return [generic_handler(service)]
