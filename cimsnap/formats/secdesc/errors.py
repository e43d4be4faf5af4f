"""The error raised for malformed or unsupported security descriptors (binary or SDDL).

Formats that carry descriptors (layer tars, hives, NTFS) catch it where they know the file and
offset and re-raise their own error with that context.
"""

from __future__ import annotations

from cimsnap.errors import FormatError


class SecurityDescriptorError(FormatError):
    """A security descriptor (binary or SDDL) is malformed or uses an unsupported feature."""
