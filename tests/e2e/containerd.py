"""A real containerd (Debian's package) with ``cimsnap serve`` as its proxy snapshotter.

Reusable by every end-to-end test (see conftest.py for the fixtures):

- :class:`CimsnapService` runs ``python -m cimsnap.cli serve`` on a socket in a temp dir and
  waits until it answers;
- :class:`Containerd` writes a config for a non-system instance (own root, state, gRPC and
  ttrpc sockets; CRI, the other snapshotters and /opt are disabled; garbage collection runs right
  after a deletion so ``ctr ... rm`` reaches the proxy quickly), starts ``containerd`` and waits
  until ``ctr version`` answers;
- :meth:`Containerd.ctr` runs ``ctr --address ... <args>`` and returns its stdout, raising
  :class:`CtrError` (with stderr) on failure.

Both always stop their process in ``stop()`` (SIGTERM, then SIGKILL), so a failing test leaves
nothing running.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from tests.conftest import PROJECT_ROOT

SNAPSHOTTER_NAME = "cimsnap"
NAMESPACE = "default"


class CtrError(RuntimeError):
    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"ctr {' '.join(args)} failed ({returncode}): {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, proc=None) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def _stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


_Process = TypeVar("_Process", "CimsnapService", "Containerd")


@contextlib.contextmanager
def running(process: _Process) -> Iterator[_Process]:
    """Start ``process`` (a service or containerd), stop it on the way out."""
    process.start()
    try:
        yield process
    finally:
        process.stop()


class CimsnapService:
    """``cimsnap serve`` in a subprocess."""

    def __init__(
        self,
        workdir: Path,
        *,
        mode: str = "cimfs",
        extra_args: Sequence[str] = (),
        root: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.root = root or workdir / "cimsnap-root"
        self.address = workdir / "cimsnap.sock"
        self.mode = mode
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.stdout_path = workdir / "cimsnap.stdout"
        self.stderr_path = workdir / "cimsnap.stderr"

    def start(self, timeout: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "cimsnap.cli",
            "serve",
            "--root",
            str(self.root),
            "--address",
            str(self.address),
            "--mode",
            self.mode,
            "--log-level",
            "debug",
            *self.extra_args,
        ]
        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=PROJECT_ROOT)
        try:
            wait_for(self._ready, timeout, "cimsnap serve", self.proc)
        except BaseException:
            self.stop()
            raise RuntimeError(f"cimsnap serve did not start: {self.logs()}") from None

    def _ready(self) -> bool:
        return self.address.exists() and "proxy_plugins" in self.stdout()

    def stdout(self) -> str:
        return self.stdout_path.read_text() if self.stdout_path.exists() else ""

    def logs(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    def stop(self) -> int | None:
        _stop_process(self.proc)
        return None if self.proc is None else self.proc.returncode


class Containerd:
    """A throw-away containerd using a proxy snapshotter at ``snapshotter_address``."""

    DISABLED_PLUGINS = (
        "io.containerd.grpc.v1.cri",
        "io.containerd.snapshotter.v1.aufs",
        "io.containerd.snapshotter.v1.btrfs",
        "io.containerd.snapshotter.v1.devmapper",
        "io.containerd.snapshotter.v1.zfs",
        "io.containerd.snapshotter.v1.overlayfs",
        "io.containerd.internal.v1.opt",
        "io.containerd.tracing.processor.v1.otlp",
        "io.containerd.internal.v1.tracing",
    )

    def __init__(
        self,
        workdir: Path,
        snapshotter_address: Path,
        snapshotter_name: str = SNAPSHOTTER_NAME,
    ) -> None:
        self.workdir = workdir
        self.snapshotter_address = snapshotter_address
        self.snapshotter_name = snapshotter_name
        self.address = workdir / "containerd.sock"
        self.config = workdir / "containerd.toml"
        self.log_path = workdir / "containerd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def config_text(self) -> str:
        disabled = ", ".join(f'"{p}"' for p in self.DISABLED_PLUGINS)
        w = self.workdir
        return f"""version = 2
root = "{w / "root"}"
state = "{w / "state"}"
disabled_plugins = [{disabled}]

[grpc]
  address = "{self.address}"

[ttrpc]
  address = "{self.address}.ttrpc"

[debug]
  level = "debug"

[proxy_plugins]
  [proxy_plugins.{self.snapshotter_name}]
    type = "snapshot"
    address = "{self.snapshotter_address}"

[plugins."io.containerd.gc.v1.scheduler"]
  deletion_threshold = 1
  schedule_delay = "0s"
  startup_delay = "0s"
"""

    def start(self, timeout: float = 30.0) -> None:
        binary = shutil.which("containerd")
        if binary is None:
            raise RuntimeError("containerd is not installed")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(self.config_text())
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [binary, "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # our signals only, never the test runner's
            )

        def answers() -> bool:
            if not self.address.exists():
                return False
            proc = subprocess.run(
                ["ctr", "--address", str(self.address), "version"],
                capture_output=True,
                timeout=10,
            )
            return proc.returncode == 0

        try:
            wait_for(answers, timeout, "containerd", self.proc)
        except BaseException:
            self.stop()
            raise RuntimeError(f"containerd did not start: {self.logs()[-3000:]}") from None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ctr(self, *args: str, check: bool = True, timeout: float = 60.0) -> str:
        cmd = ["ctr", "--address", str(self.address), "--namespace", NAMESPACE, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise CtrError(args, proc.returncode, proc.stderr)
        return proc.stdout

    def snapshots(self, *args: str, check: bool = True) -> str:
        """``ctr snapshots --snapshotter <name> <args>``."""
        return self.ctr("snapshots", "--snapshotter", self.snapshotter_name, *args, check=check)

    def stop(self) -> None:
        _stop_process(self.proc)
        # containerd may leave shim sockets under its state dir; nothing else runs.
        with contextlib.suppress(OSError):
            self.address.unlink()
