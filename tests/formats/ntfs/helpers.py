"""Shared helpers for the NTFS tests: images, external tools, a FUSE mount that always unmounts."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cimsnap.formats.blockdev import RawFileDevice
from cimsnap.formats.ntfs import NtfsLayout, format_volume
from tests.conftest import require_tool

MiB = 1 << 20


def make_volume(path: Path, size: int, **options: Any) -> NtfsLayout:
    """A sparse raw file of ``size`` bytes holding a freshly formatted volume."""
    options.setdefault("zeroed", True)
    with RawFileDevice.create(path, size) as dev:
        return format_volume(dev, **options)


def run_tool(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    tool = require_tool(str(args[0]))
    return subprocess.run(
        [tool, *map(str, args[1:])], capture_output=True, text=True, check=check, timeout=300
    )


def ntfs_checks(image: Path) -> None:
    """ntfsfix -n and ntfsresize --check (which recounts every cluster against $Bitmap)."""
    fix = run_tool("ntfsfix", "-n", image)
    assert "processed successfully" in fix.stdout, fix.stdout + fix.stderr
    run_tool("ntfsresize", "--check", "--force", image)


@contextlib.contextmanager
def ntfs3g_mount(image: Path, mountpoint: Path) -> Iterator[Path]:
    """Mount ``image`` read-write with ntfs-3g (our own foreground process); unmount and wait
    for that process to finish writing on the way out, whatever happens."""
    ntfs3g = require_tool("ntfs-3g")
    fusermount = require_tool("fusermount3")
    mountpoint.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [ntfs3g, "-o", "no_detach", str(image), str(mountpoint)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                output = proc.stdout.read().decode() if proc.stdout else ""
                raise RuntimeError(f"ntfs-3g did not mount {image}: {output}")
            time.sleep(0.05)
        yield mountpoint
    finally:
        if os.path.ismount(mountpoint):
            for attempt in range(20):
                done = subprocess.run([fusermount, "-u", str(mountpoint)], capture_output=True)
                if done.returncode == 0:
                    break
                time.sleep(0.25 * (attempt + 1))
            else:
                subprocess.run([fusermount, "-u", "-z", str(mountpoint)], capture_output=True)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
