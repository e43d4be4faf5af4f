"""Errors raised by the NTFS package."""

from __future__ import annotations

from cimsnap.errors import FormatError


class NtfsError(FormatError):
    """An NTFS structure is malformed, or a volume cannot be made or changed as asked."""
