"""Errors raised by the GPT package."""

from __future__ import annotations

from cimsnap.errors import FormatError


class GptError(FormatError):
    """A partition table is missing, damaged, or cannot hold what was asked."""
