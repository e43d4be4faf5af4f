"""Errors raised by the CimFS package (all :class:`cimsnap.errors.CimsnapError` subclasses)."""

from __future__ import annotations

from cimsnap.errors import FormatError


class CimFormatError(FormatError):
    """A CIM file is malformed: bad magic or version, an offset, length or count out of range,
    a truncated file, an unsorted link table or a directory cycle.  Carries the file and, where
    known, the byte offset in it or the path inside the image."""
