"""Error types shared by every layer, and their one-line rendering for the command line.

Each format or subsystem raises its own subclass of :class:`CimsnapError`, carrying the file it
was reading or writing and, where it helps, the offset or path inside it.  The CLI prints
``render_error(err)`` as a single line; only ``--debug`` shows a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

# containerd's error kinds (errdefs); the gRPC service maps them to status codes.
KIND_UNKNOWN = "unknown"
KIND_NOT_FOUND = "not found"
KIND_ALREADY_EXISTS = "already exists"
KIND_FAILED_PRECONDITION = "failed precondition"
KIND_INVALID_ARGUMENT = "invalid argument"
KIND_UNAVAILABLE = "unavailable"
KIND_NOT_IMPLEMENTED = "not implemented"


class CimsnapError(Exception):
    """Base class of every error cimsnap reports to a user.

    ``path`` names the file (or image) concerned, ``offset`` a byte offset in it, ``inner`` a path
    inside an image.  ``kind`` is one of the ``KIND_*`` constants for errors that cross the gRPC
    boundary.
    """

    kind: str = KIND_UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] | None = None,
        offset: int | None = None,
        inner: str | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = Path(path) if path is not None else None
        self.offset = offset
        self.inner = inner
        if kind is not None:
            self.kind = kind

    def __str__(self) -> str:
        where = []
        if self.path is not None:
            where.append(str(self.path))
        if self.inner is not None:
            where.append(self.inner)
        if self.offset is not None:
            where.append(f"offset {self.offset:#x}")
        text = " ".join(self.message.splitlines()) or self.__class__.__name__
        return f"{': '.join(where)}: {text}" if where else text


class FormatError(CimsnapError):
    """An on-disk structure is malformed (bad magic, checksum, offset, count...)."""

    kind = KIND_INVALID_ARGUMENT


class UsageError(CimsnapError):
    """The user asked for something that cannot be done as asked (bad size, missing file...)."""

    kind = KIND_INVALID_ARGUMENT


class NotFoundError(CimsnapError):
    kind = KIND_NOT_FOUND


class AlreadyExistsError(CimsnapError):
    kind = KIND_ALREADY_EXISTS


class FailedPreconditionError(CimsnapError):
    kind = KIND_FAILED_PRECONDITION


def render_error(err: BaseException) -> str:
    """One line for the user: ``cimsnap: error: <where>: <what>``."""
    if isinstance(err, CimsnapError):
        text = str(err)
    elif isinstance(err, OSError):
        name = err.filename if err.filename is not None else ""
        reason = err.strerror or err.__class__.__name__
        text = f"{name}: {reason}" if name else reason
    else:
        text = f"{err.__class__.__name__}: {err}"
    return "cimsnap: error: " + " ".join(text.splitlines())
