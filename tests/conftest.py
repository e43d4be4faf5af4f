"""Shared test fixtures: locations of Windows-made test data and external tools."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_TESTDATA = PROJECT_ROOT.parent / "shared" / "testdata"


@pytest.fixture(scope="session")
def testdata() -> Path:
    """``../shared/testdata`` (read-only Windows-made files); skips when absent."""
    if not SHARED_TESTDATA.is_dir():
        pytest.skip(f"Windows-made test data not found at {SHARED_TESTDATA}")
    return SHARED_TESTDATA


def require_tool(name: str) -> str:
    """Path of an external program, or skip the test naming the Debian package to install."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (./run.sh test installs it)")
    return path
