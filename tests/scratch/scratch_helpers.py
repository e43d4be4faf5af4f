"""Helpers for the scratch-disk tests: raw exports and partition extraction, sparse throughout."""

from __future__ import annotations

import os
from pathlib import Path

from cimsnap.formats import vhdx
from cimsnap.formats.blockdev import BlockDevice
from cimsnap.scratch.partition import open_image
from tests.formats.ntfs.helpers import run_tool

MiB = 1 << 20


def qemu_raw(image: Path, out: Path) -> Path:
    """The virtual disk as a sparse raw file, converted by qemu-img (independent of cimsnap)."""
    run_tool("qemu-img", "convert", "-O", "raw", image, out)
    return out


def copy_range_sparse(src: Path, offset: int, length: int, out: Path) -> Path:
    """Bytes [offset, offset+length) of a sparse file into a new sparse file (data extents only)."""
    with open(src, "rb") as fin, open(out, "wb") as fout:
        fout.truncate(length)
        fd_in, fd_out = fin.fileno(), fout.fileno()
        pos = offset
        end = offset + length
        while pos < end:
            try:
                data = os.lseek(fd_in, pos, os.SEEK_DATA)
            except OSError:
                break
            if data >= end:
                break
            hole = min(os.lseek(fd_in, data, os.SEEK_HOLE), end)
            while data < hole:
                n = os.copy_file_range(fd_in, fd_out, hole - data, data, data - offset)
                if n <= 0:
                    raise OSError("copy_file_range made no progress")
                data += n
            pos = hole
    return out


def device_to_sparse(dev: BlockDevice, offset: int, length: int, out: Path) -> Path:
    """Read a range of any device (e.g. a differencing VHDX) into a sparse file."""
    chunk = 1 * MiB
    zero = bytes(chunk)
    with open(out, "wb") as f:
        f.truncate(length)
        for pos in range(0, length, chunk):
            n = min(chunk, length - pos)
            data = dev.read_at(offset + pos, n)
            if data != zero[:n]:
                f.seek(pos)
                f.write(data)
    return out


def extract_partition(image: Path, offset: int, length: int, out: Path) -> Path:
    """The partition of a VHDX (read through the engine, parents included) or raw image."""
    with open_image(image) as dev:
        if isinstance(dev, vhdx.VhdxDisk):
            return device_to_sparse(dev, offset, length, out)
    return copy_range_sparse(image, offset, length, out)
