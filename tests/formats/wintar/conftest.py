"""Fixtures for the Windows layer tar tests: the Go archive/tar tool and hcsshim-style headers."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cimsnap.formats.wintar import WinTarReader, WinTarWriter
from cimsnap.formats.wintar.model import WinTarEntry
from tests.conftest import require_tool

GOTAR_SOURCE = Path(__file__).parent / "gotar" / "main.go"

GoTar = Callable[..., Any]


@pytest.fixture(scope="session")
def gotar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GoTar]:
    """``gotar("dump", tar_bytes) -> [header dicts]`` / ``gotar("write", specs) -> tar bytes``,
    run by Go's archive/tar (the tar library hcsshim uses)."""
    go = require_tool("go")
    work = tmp_path_factory.mktemp("gotar")
    binary = work / "gotar"
    env = {
        **os.environ,
        "GOCACHE": str(work / "cache"),
        "GOPATH": str(work / "gopath"),
        "GO111MODULE": "off",
        "GOFLAGS": "",
        "GOENV": "off",
        "GOTOOLCHAIN": "local",
        "CGO_ENABLED": "0",
        "HOME": os.environ.get("HOME") or str(work),
    }
    subprocess.run(
        [go, "build", "-o", str(binary), str(GOTAR_SOURCE)],
        check=True,
        env=env,
        cwd=work,
        capture_output=True,
        timeout=300,
    )

    def run(mode: str, payload: Any) -> Any:
        if mode == "dump":
            proc = subprocess.run(
                [binary, "dump"], input=payload, capture_output=True, timeout=60, check=False
            )
            if proc.returncode:
                raise GoTarError(proc.stderr.decode().strip())
            lines = [json.loads(line) for line in proc.stdout.splitlines()]
            assert lines[-1] == {"end": True}
            return lines[:-1]
        proc = subprocess.run(
            [binary, "write"],
            input=json.dumps(payload).encode(),
            capture_output=True,
            timeout=60,
            check=False,
        )
        if proc.returncode:
            raise GoTarError(proc.stderr.decode().strip())
        return proc.stdout

    yield run


class GoTarError(Exception):
    """Go's archive/tar refused the input."""


def go_spec(
    name: str,
    typeflag: str,
    *,
    mode: int = 0,
    size: int = 0,
    linkname: str = "",
    mtime_ns: int | None = None,
    atime_ns: int | None = None,
    ctime_ns: int | None = None,
    pax: dict[str, str] | None = None,
    format_pax: bool = False,
    data: bytes = b"",
) -> dict[str, Any]:
    """One header for ``gotar write`` (fields of Go's tar.Header)."""
    return {
        "name": name,
        "typeflag": ord(typeflag),
        "mode": mode,
        "size": size,
        "linkname": linkname,
        "mtime_ns": mtime_ns,
        "atime_ns": atime_ns,
        "ctime_ns": ctime_ns,
        "pax": pax,
        "format_pax": format_pax,
        "data": base64.b64encode(data).decode(),
    }


def write_layer(build: Callable[[WinTarWriter], None], **options: Any) -> bytes:
    out = io.BytesIO()
    with WinTarWriter(out, **options) as writer:
        build(writer)
    return out.getvalue()


def read_layer(data: bytes, name: str = "layer.tar") -> list[tuple[WinTarEntry, bytes]]:
    """Every entry with its data read out."""
    return [(entry, entry.data.read()) for entry in WinTarReader(io.BytesIO(data), name)]
