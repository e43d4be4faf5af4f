"""The gRPC server: snapshots.v1 (and any service plugin) on a unix socket for containerd.

containerd reaches an out-of-process snapshotter through a ``proxy_plugins`` entry naming a
unix socket (:func:`proxy_plugin_snippet` prints it for containerd 1.6/1.7, config version 2,
and 2.x, version 3).  Further services are plugged onto the same server by modules of
:mod:`cimsnap.service.plugins` (see there): e.g. the differ's ``diff.v1`` Apply.

:class:`SnapshotterServer` owns the socket: it refuses an address where a server is listening,
removes a stale socket file, serves with a thread pool, and on :meth:`stop` finishes in-flight
calls (grace period), closes the snapshotter and removes the socket.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from cimsnap.errors import CimsnapError
from cimsnap.service import plugins
from cimsnap.service.snapshots import SnapshotsService, generic_handler
from cimsnap.snapshotter.snapshotter import CimFSSnapshotter

log = logging.getLogger(__name__)

PLUGIN_NAME = "cimsnap"  # the proxy plugin name in the printed configuration
SYSTEM_ROOT = Path("/var/lib/cimsnap")
SYSTEM_ADDRESS = Path("/run/cimsnap/cimsnap.sock")
SOCKET_NAME = "cimsnap.sock"
DEFAULT_WORKERS = 16


class ServerError(CimsnapError):
    """The server could not start (address in use, socket directory not creatable...)."""


def user_data_dir() -> Path:
    """``$XDG_DATA_HOME/cimsnap`` (``~/.local/share/cimsnap``) for a non-root user."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cimsnap"


def default_root() -> Path:
    return SYSTEM_ROOT if os.geteuid() == 0 else user_data_dir()


def default_address() -> Path:
    return SYSTEM_ADDRESS if os.geteuid() == 0 else user_data_dir() / SOCKET_NAME


# The platform containerd 2.x registers the proxy snapshotter and differ for, and the plugin
# types for which it takes one.
PLATFORM = "windows/amd64"
PLATFORM_PLUGIN_TYPES = ("snapshot", "diff")


def proxy_plugin_snippet(address: str | os.PathLike[str], name: str = PLUGIN_NAME) -> str:
    """containerd configuration that makes ``name`` a proxy snapshotter at ``address``."""
    address = str(address)
    extra = ""
    unpack = ""
    for p in plugins.discover():
        if p.type is None:
            continue
        extra += (
            f"\n  [proxy_plugins.{name}-{p.name}]\n"
            f'    type = "{p.type}"\n    address = "{address}"\n'
        )
        if p.type in PLATFORM_PLUGIN_TYPES:
            extra += f'    platform = "{PLATFORM}"\n'
        if p.type == "diff":
            # containerd 2.x unpacks pulled images with the snapshotter/differ pair named here.
            unpack = (
                '\n[plugins."io.containerd.transfer.v1.local"]\n'
                '  [[plugins."io.containerd.transfer.v1.local".unpack_config]]\n'
                f'    platform = "{PLATFORM}"\n'
                f'    snapshotter = "{name}"\n'
                f'    differ = "{name}-{p.name}"\n'
            )
    return (
        "# containerd 1.6 / 1.7 (/etc/containerd/config.toml, config version 2):\n"
        "version = 2\n"
        "[proxy_plugins]\n"
        f"  [proxy_plugins.{name}]\n"
        '    type = "snapshot"\n'
        f'    address = "{address}"\n'
        "\n"
        "# containerd 2.x (config version 3):\n"
        "version = 3\n"
        "[proxy_plugins]\n"
        f"  [proxy_plugins.{name}]\n"
        '    type = "snapshot"\n'
        f'    address = "{address}"\n'
        f'    platform = "{PLATFORM}"\n'
        f"{extra}"
        f"{unpack}"
        "\n"
        f"# use it with: ctr snapshots --snapshotter {name} ...\n"
    )


def _socket_in_use(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _prepare_socket_path(path: Path) -> None:
    try:
        path.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
    except OSError as err:
        raise ServerError(
            f"cannot create socket directory: {err.strerror}", path=path.parent
        ) from err
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise ServerError("address exists and is not a socket", path=path)
        if _socket_in_use(path):
            raise ServerError("address in use: another server is listening", path=path)
        path.unlink()  # stale socket of a process that died


@dataclass
class SnapshotterServer:
    snapshotter: CimFSSnapshotter
    address: Path
    workers: int = DEFAULT_WORKERS
    grace: float = 5.0
    _server: grpc.Server | None = field(default=None, init=False, repr=False)

    def start(self) -> None:
        self.address = Path(self.address).absolute()
        _prepare_socket_path(self.address)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="grpc"),
            options=[("grpc.so_reuseport", 0)],
        )
        server.add_generic_rpc_handlers((generic_handler(SnapshotsService(self.snapshotter)),))
        context = plugins.PluginContext(snapshotter=self.snapshotter, root=self.snapshotter.root)
        for plugin in plugins.discover():
            handlers = plugin.handlers(context)
            server.add_generic_rpc_handlers(tuple(handlers))
            log.info("service plugin registered", extra={"plugin": plugin.name})
        try:
            port = server.add_insecure_port(f"unix:{self.address}")
        except RuntimeError as err:
            raise ServerError(f"cannot listen: {err}", path=self.address) from err
        if port == 0:
            raise ServerError("cannot listen on the socket", path=self.address)
        server.start()
        with contextlib.suppress(OSError):
            os.chmod(self.address, 0o660)
        self._server = server
        log.info(
            "serving",
            extra={
                "address": str(self.address),
                "root": str(self.snapshotter.root),
                "mode": self.snapshotter.mode.value,
            },
        )

    def stop(self) -> None:
        """Finish in-flight calls (up to ``grace`` seconds), then release everything."""
        server, self._server = self._server, None
        if server is not None:
            server.stop(self.grace).wait()
        self.snapshotter.close()
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(self.address).st_mode):
                self.address.unlink()
        log.info("stopped", extra={"address": str(self.address)})
