"""Fixtures of the CimFS tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Skip fsync in these tests: they check content and formats, not crash durability, and
    hundreds of small images would otherwise spend most of their time waiting for the disk."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    yield
