"""The command line's contract: one-line errors, --debug tracebacks, sizes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cimsnap.cli.common import parse_size
from cimsnap.errors import FormatError, UsageError, render_error


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4096", 4096),
        ("1K", 1024),
        ("1M", 1 << 20),
        ("10G", 10 << 30),
        ("1T", 1 << 40),
        ("2MiB", 2 << 20),
        ("3g", 3 << 30),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "abc", "-1", "1.5G", "10X", "G"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_size(text)


def test_render_error_is_one_line_and_names_file() -> None:
    err = FormatError("bad checksum\nin header", path="/tmp/x.vhdx", offset=0x10000)
    line = render_error(err)
    assert "\n" not in line
    assert line == "cimsnap: error: /tmp/x.vhdx: offset 0x10000: bad checksum in header"


def test_render_os_error() -> None:
    line = render_error(FileNotFoundError(2, "No such file or directory", "/nope"))
    assert line == "cimsnap: error: /nope: No such file or directory"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cimsnap.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_cli_version() -> None:
    proc = _run("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith("cimsnap ")


def test_cli_without_command_fails_with_usage() -> None:
    proc = _run()
    assert proc.returncode == 2
    assert "usage: cimsnap" in proc.stderr
