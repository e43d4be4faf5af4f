"""The snapshotter's two needs of a layer CIM (`cim-layers/<id>.cim` + region/objectid files).

- :func:`cim_usage`: Usage of a committed snapshot adds its CIM's own files (hcsshim
  GetCimUsage, via :meth:`cimsnap.formats.cim.CimImage.usage`);
- :func:`destroy_cim`: Remove and Cleanup delete the CIM and its own region set (hcsshim
  DestroyCim, via :func:`cimsnap.formats.cim.destroy_image`); parents' files are left alone.

A snapshot that has no CIM (nothing was imported into it) counts 0 and destroys nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from cimsnap.formats.cim import CimImage, destroy_image


def cim_usage(cim_path: str | os.PathLike[str]) -> int:
    """Bytes of the CIM's own region and object-ID files; 0 if there is no CIM."""
    cim_path = Path(cim_path)
    if not cim_path.exists():
        return 0
    with CimImage.open_image(cim_path) as image:
        return int(image.usage().total)


def destroy_cim(cim_path: str | os.PathLike[str]) -> list[Path]:
    """Delete the CIM and its own files; returns what was removed ([] if there is no CIM).

    Refused (FailedPreconditionError) while a fork of it still exists beside it.
    """
    cim_path = Path(cim_path)
    if not cim_path.exists():
        return []
    return list(destroy_image(cim_path))
