"""The error a layer import or export raises (one line for the user, file and offset included)."""

from __future__ import annotations

from cimsnap.errors import KIND_INVALID_ARGUMENT, CimsnapError


class LayerError(CimsnapError):
    """A layer cannot be imported or exported: unsafe or malformed input, or a failed step.

    ``path`` is the tar (or layer directory), ``offset`` the tar header offset of the entry
    concerned and ``inner`` its layer path, when known.
    """

    kind = KIND_INVALID_ARGUMENT
