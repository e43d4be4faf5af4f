"""Errors raised by the VHDX engine (all carry the file and, where known, the byte offset)."""

from __future__ import annotations

from cimsnap.errors import FormatError


class VhdxError(FormatError):
    """A VHDX file is malformed, inconsistent or cannot be used as asked."""


class ParentNotFoundError(VhdxError):
    """A differencing disk's parent could not be found by any of its locator paths."""


class ParentLinkageError(VhdxError):
    """A parent's DataWriteGuid no longer matches the linkage recorded in its child."""
