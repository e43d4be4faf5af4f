"""``cimsnap serve``: containerd configuration, structured logs, clean shutdown, socket hygiene,
and the service-plugin hook the differ uses."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cimsnap.errors import NotFoundError
from cimsnap.service import plugins
from cimsnap.service.client import SnapshotsClient
from cimsnap.service.server import (
    ServerError,
    SnapshotterServer,
    default_address,
    default_root,
    proxy_plugin_snippet,
)
from tests.conftest import PROJECT_ROOT


def start_serve(root: Path, address: Path, *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cimsnap.cli",
            "serve",
            "--root",
            str(root),
            "--address",
            str(address),
            "--mode",
            "wcifs",
            *extra,
        ],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not address.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"serve did not start: {proc.communicate()}")
        time.sleep(0.02)
    return proc


@pytest.fixture
def served(short_dir: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    address = short_dir / "run" / "cs.sock"
    proc = start_serve(short_dir / "root", address)
    try:
        yield proc, address
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def split_snippet(text: str) -> tuple[dict, dict]:  # type: ignore[type-arg]
    v2, _, v3 = text.partition("# containerd 2.x")
    return tomllib.loads(v2), tomllib.loads(v3.split("\n", 1)[1])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_prints_config_and_stops_cleanly(
    served: tuple[subprocess.Popen[str], Path], signum: int
) -> None:
    proc, address = served
    with SnapshotsClient(str(address)) as client:
        client.prepare("extract-1")
        assert [i.name for i in client.walk()] == ["extract-1"]
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    v2, v3 = split_snippet(out)
    assert v2["version"] == 2 and v3["version"] == 3
    for config in (v2, v3):
        plugin = config["proxy_plugins"]["cimsnap"]
        assert plugin["type"] == "snapshot" and plugin["address"] == str(address)
    assert v3["proxy_plugins"]["cimsnap"]["platform"] == "windows/amd64"
    assert v3["proxy_plugins"]["cimsnap-diff"] == {
        "type": "diff",
        "address": str(address),
        "platform": "windows/amd64",
    }
    (unpack,) = v3["plugins"]["io.containerd.transfer.v1.local"]["unpack_config"]
    assert unpack == {
        "platform": "windows/amd64",
        "snapshotter": "cimsnap",
        "differ": "cimsnap-diff",
    }
    assert not address.exists()  # the socket is removed on the way out
    lines = err.strip().splitlines()
    serving = [line for line in lines if line.split()[1:3] == ["level=info", "msg=serving"]]
    assert len(serving) == 1 and f"address={address}" in serving[0]
    assert lines[-1].split()[1:3] == ["level=info", "msg=stopped"]


def test_json_logs(short_dir: Path) -> None:
    address = short_dir / "cs.sock"
    proc = start_serve(short_dir / "root", address, "--log-format", "json", "--log-level", "debug")
    with SnapshotsClient(str(address)) as client, pytest.raises(NotFoundError):
        client.stat("missing")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    records = [json.loads(line) for line in err.splitlines()]
    assert {"time", "level", "msg"} <= set(records[0])
    failed = [r for r in records if r.get("method") == "Stat"]
    assert failed and failed[0]["code"] == "NOT_FOUND" and failed[0]["key"] == "missing"


def test_refuses_an_address_in_use(served: tuple[subprocess.Popen[str], Path]) -> None:
    _, address = served
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "cimsnap.cli",
            "serve",
            "--root",
            str(address.parent / "r2"),
            "--address",
            str(address),
            "--mode",
            "wcifs",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    assert (
        second.stderr.strip()
        .splitlines()[-1]
        .endswith("address in use: another server is listening")
    )
    assert address.exists()  # the running server's socket is untouched


def test_replaces_a_stale_socket_and_refuses_other_files(
    make_snapshotter,
    short_dir: Path,  # type: ignore[no-untyped-def]
) -> None:
    stale = short_dir / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()  # a socket file nobody listens on: what a killed server leaves
    server = SnapshotterServer(make_snapshotter(), stale)
    server.start()
    try:
        with SnapshotsClient(str(stale)) as client:
            assert list(client.walk()) == []
    finally:
        server.stop()
    regular = short_dir / "file"
    regular.write_text("not a socket")
    with pytest.raises(ServerError, match="not a socket"):
        SnapshotterServer(make_snapshotter(short_dir / "r2", mode="wcifs"), regular).start()
    assert regular.read_text() == "not a socket"


def test_default_locations(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert (default_root(), default_address()) == (
        Path("/var/lib/cimsnap"),
        Path("/run/cimsnap/cimsnap.sock"),
    )
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_root() == tmp_path / "cimsnap"
    assert default_address() == tmp_path / "cimsnap" / "cimsnap.sock"


ECHO_PLUGIN = """
import grpc
PROXY_PLUGIN_TYPE = "content"

def handlers(context):
    def apply(request, ctx):
        return str(context.root).encode() + b"|" + request
    return [grpc.method_handlers_generic_handler(
        "cimsnap.test.Echo",
        {"Echo": grpc.unary_unary_rpc_method_handler(apply)},
    )]
"""


def test_service_plugins_share_the_server(
    make_snapshotter,
    short_dir: Path,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    plugin_dir = short_dir / "plugins"
    plugin_dir.mkdir()
    (plugin_dir / "echo_plugin.py").write_text(ECHO_PLUGIN)
    monkeypatch.setattr(plugins, "__path__", [*plugins.__path__, str(plugin_dir)])
    sn = make_snapshotter(short_dir / "root", mode="wcifs")
    server = SnapshotterServer(sn, short_dir / "p.sock")
    server.start()
    try:
        with grpc.insecure_channel(f"unix:{server.address}") as channel:
            echo = channel.unary_unary("/cimsnap.test.Echo/Echo")
            assert echo(b"layer", timeout=10) == str(sn.root).encode() + b"|layer"
        with SnapshotsClient(str(server.address)) as client:  # snapshots.v1 still served
            assert list(client.walk()) == []
    finally:
        server.stop()
    _, v3 = split_snippet(proxy_plugin_snippet(short_dir / "p.sock"))
    assert v3["proxy_plugins"]["cimsnap-echo_plugin"] == {
        "type": "content",
        "address": str(short_dir / "p.sock"),
    }
