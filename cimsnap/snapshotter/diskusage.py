"""Disk usage of a snapshot directory, as containerd's continuity ``fs.DiskUsage`` counts it.

Every distinct inode under the directory (the directory itself included) is counted once, and
its size is what the filesystem allocates for it (``st_blocks`` * 512), so sparse scratch disks
count for what they really use.  Missing entries (removed while walking) are skipped.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .model import Usage

_BLOCK_UNIT = 512  # st_blocks is always in 512-byte units


def disk_usage(root: str | os.PathLike[str]) -> Usage:
    seen: set[tuple[int, int]] = set()
    size = 0
    pending = [Path(root)]
    first = True
    while pending:
        path = pending.pop()
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if first:
                return Usage(0, 0)
            continue
        first = False
        key = (st.st_dev, st.st_ino)
        if key not in seen:
            seen.add(key)
            size += st.st_blocks * _BLOCK_UNIT
        if stat.S_ISDIR(st.st_mode):
            try:
                with os.scandir(path) as entries:
                    pending.extend(Path(entry.path) for entry in entries)
            except FileNotFoundError:
                continue
    return Usage(size=size, inodes=len(seen))
