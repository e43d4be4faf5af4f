"""Files a layer keeps on the host, beside its CIM: creating them safely, cleaning up.

A layer directory is where hcsshim keeps what lives outside the CIM (hives, BCD and boot manager
written before they are added to the CIM, the utility VM's VHDs, ``layout``).  An import starts
from an empty (or absent) directory and, when it fails, leaves the directory as it found it:
empty, or gone if the import created it.  Host files are only ever created under names the
importer chose or validated; they are opened with ``O_NOFOLLOW | O_EXCL`` and their directories
are checked not to be symlinks, so nothing is written outside the layer directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import BinaryIO

from cimsnap.layers.errors import LayerError

COPY_CHUNK = 1 << 20


def prepare_layer_dir(layer_dir: Path) -> bool:
    """Make sure ``layer_dir`` exists and is empty; returns True if it was created here."""
    layer_dir.parent.mkdir(mode=0o755, parents=True, exist_ok=True)  # hcsshim: MkdirAll
    try:
        layer_dir.mkdir(mode=0o755)
        return True
    except FileExistsError:
        pass
    if layer_dir.is_symlink() or not layer_dir.is_dir():
        raise LayerError("the layer path exists and is not a directory", path=layer_dir)
    if any(layer_dir.iterdir()):
        raise LayerError(
            "the layer directory is not empty (a layer is imported into a new directory)",
            path=layer_dir,
        )
    return False


def discard_layer_dir(layer_dir: Path, created: bool) -> None:
    """Undo what an import wrote into ``layer_dir`` (remove it if the import made it)."""
    if not layer_dir.is_dir() or layer_dir.is_symlink():
        return
    if created:
        shutil.rmtree(layer_dir, ignore_errors=True)
        return
    for child in list(layer_dir.iterdir()):
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                child.unlink()


def make_dirs(root: Path, relative_parts: tuple[str, ...]) -> Path:
    """Create ``root/<parts>`` directory by directory, refusing to pass through a symlink."""
    current = root
    for part in relative_parts:
        current = current / part
        try:
            current.mkdir(mode=0o755)
        except FileExistsError:
            if current.is_symlink() or not current.is_dir():
                raise LayerError(
                    "a path component on the host is not a directory", path=current
                ) from None
    return current


def write_new_file(path: Path, data: BinaryIO | bytes, size: int | None = None) -> int:
    """Create ``path`` (it must not exist) with ``data`` (exactly ``size`` bytes if given)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except FileExistsError:
        raise LayerError("the layer has this file twice", path=path) from None
    written = 0
    try:
        if isinstance(data, bytes):
            write_all(fd, memoryview(data))
            written = len(data)
        else:
            buffer = bytearray(COPY_CHUNK)
            view = memoryview(buffer)
            while size is None or written < size:
                want = COPY_CHUNK if size is None else min(COPY_CHUNK, size - written)
                got = data.readinto(view[:want])  # type: ignore[attr-defined]
                if not got:
                    if size is not None:
                        raise LayerError(f"data ended after {written} of {size} bytes", path=path)
                    break
                write_all(fd, view[:got])
                written += got
    finally:
        os.close(fd)
    return written


def write_all(fd: int, view: memoryview) -> None:
    """os.write until every byte is written (a regular file may take less at a time)."""
    while view:
        view = view[os.write(fd, view) :]


def file_size(handle: BinaryIO) -> int:
    return os.fstat(handle.fileno()).st_size
