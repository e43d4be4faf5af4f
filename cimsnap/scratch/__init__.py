"""Container and utility-VM scratch disks: create, format, inspect, expand.

Public API used by the rest of cimsnap:

* :func:`create_scratch` (path, size=10 GiB, block_size=1 MiB): a new formatted dynamic VHDX;
* :func:`format_scratch` (path or device): GPT with MSR + Basic Data, NTFS with the scratch
  directories, like Windows' FormatWritableLayerVhd;
* :func:`partition_info` (path or device) -> ``(disk_guid, partition_guid)``, validated like
  hcsshim's GetScratchVhdPartitionInfo; :func:`scratch_info` for the full summary;
* :func:`expand` (path, new_size): disk, backup GPT, partition and NTFS volume.

The template and copy modules of this package (the snapshotter's) build on these.
"""

from __future__ import annotations

from cimsnap.scratch.expand import ExpandResult, expand
from cimsnap.scratch.format import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_SIZE,
    ScratchLayout,
    create_scratch,
    format_scratch,
)
from cimsnap.scratch.partition import (
    ScratchError,
    ScratchInfo,
    ScratchPartitionInfo,
    partition_info,
    scratch_info,
)

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_SIZE",
    "ExpandResult",
    "ScratchError",
    "ScratchInfo",
    "ScratchLayout",
    "ScratchPartitionInfo",
    "create_scratch",
    "expand",
    "format_scratch",
    "partition_info",
    "scratch_info",
]
