"""VHDX virtual disks ([MS-VHDX] v1.0): create, open, read/write, differencing chains, log replay.

Public API (the rest of cimsnap uses only these names):

* :func:`create`, :func:`create_differencing`: new dynamic/fixed and differencing disks.
* :func:`open_disk` -> :class:`VhdxDisk`: a :class:`~cimsnap.formats.blockdev.BlockDevice`
  over the virtual disk (parent chain included).
* :func:`resize`, :func:`check`, :func:`info`, :func:`export_raw`, :func:`import_raw`.
* :class:`VhdxError` (a :class:`~cimsnap.errors.FormatError`) for every malformed or unusable
  file; :class:`ParentNotFoundError` and :class:`ParentLinkageError` are kinds of it.
"""

from cimsnap.formats.vhdx.create import create, create_differencing
from cimsnap.formats.vhdx.disk import VhdxDisk, open_disk
from cimsnap.formats.vhdx.errors import ParentLinkageError, ParentNotFoundError, VhdxError
from cimsnap.formats.vhdx.ops import check, export_raw, import_raw, info, resize

__all__ = [
    "ParentLinkageError",
    "ParentNotFoundError",
    "VhdxDisk",
    "VhdxError",
    "check",
    "create",
    "create_differencing",
    "export_raw",
    "import_raw",
    "info",
    "open_disk",
    "resize",
]
