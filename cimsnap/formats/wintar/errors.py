"""The error raised for malformed or unsafe Windows layer tar streams.

One class for the whole package, so a caller (the layer importer, the CLI) catches one thing.  It
carries the tar file's name (``path``), the byte offset of the offending header in the stream
(``offset``) and the entry name (``inner``) whenever they are known, and renders as one line.
The reader and the writer re-raise errors of the shared security descriptor code
(:class:`cimsnap.formats.secdesc.SecurityDescriptorError`) as this class, with that context.
"""

from __future__ import annotations

from cimsnap.errors import FormatError


class WinTarError(FormatError):
    """A Windows layer tar stream is truncated, corrupt, unsafe or not representable."""
