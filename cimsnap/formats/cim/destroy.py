"""Destroy a CimFS image: its ``.cim``, region and object-ID files, unless a fork needs them.

Which forks are "known": every ``*.cim`` file in the image's own directory (a fork must live
beside its parent, since it names the parent's region files without a directory).  A sibling
depends on an image when the sibling's header lists the image's region-set GUID among its parent
region sets.  Like hcsshim's DestroyCim, only the image's own region set is removed; its
parents' files are left alone.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from cimsnap.errors import FailedPreconditionError
from cimsnap.formats.cim.errors import CimFormatError
from cimsnap.formats.cim.format import RegionSet
from cimsnap.formats.cim.reader import find_image_file, read_image_header


def sibling_images(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix.lower() == ".cim" and p.is_file())


def images_using(
    directory: Path, region_set: RegionSet, *, exclude: Path | None = None
) -> list[Path]:
    """Images in ``directory`` whose own or parent region sets include ``region_set``.

    Unreadable ``.cim`` files are skipped (they cannot be mounted either).
    """
    users = []
    for candidate in sibling_images(directory):
        if exclude is not None and candidate.resolve() == exclude.resolve():
            continue
        try:
            header = read_image_header(candidate)
        except (CimFormatError, OSError):
            continue
        if any(rs.guid == region_set.guid for rs in (*header.parents, header.regions)):
            users.append(candidate)
    return users


def dependent_forks(image_path: str | os.PathLike[str]) -> list[Path]:
    """The known forks that refer to ``image_path``'s regions."""
    image_path = Path(image_path)
    header = read_image_header(image_path)
    return images_using(image_path.parent, header.regions, exclude=image_path)


def region_set_files(directory: Path, region_set: RegionSet) -> list[Path]:
    files = []
    for i in range(region_set.count):
        for name in (region_set.region_name(i), region_set.objectid_name(i)):
            found = find_image_file(directory, name)
            if found is not None:
                files.append(found)
    return files


def destroy_image(image_path: str | os.PathLike[str], *, force: bool = False) -> list[Path]:
    """Remove an image's files; returns what was removed.

    Refuses (FailedPreconditionError) while a known fork depends on the image's regions, unless
    ``force``, which leaves such forks unmountable.
    """
    image_path = Path(image_path)
    header = read_image_header(image_path)
    forks = images_using(image_path.parent, header.regions, exclude=image_path)
    if forks and not force:
        names = ", ".join(p.name for p in forks)
        raise FailedPreconditionError(
            f"image is the parent of {names}; destroy those first (or force)", path=image_path
        )
    removed = []
    # The .cim goes first, so an interrupted destroy never leaves a mountable half-image.
    image_path.unlink()
    removed.append(image_path)
    for path in region_set_files(image_path.parent, header.regions):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    # A parent region set that no .cim owns or refers to any more was orphaned by an overwrite
    # of the parent image while this fork needed it: it goes too.
    for parent in header.parents:
        files = region_set_files(image_path.parent, parent)
        if remove_region_set_if_unused(image_path.parent, parent):
            removed.extend(files)
    return removed


def remove_region_set_if_unused(directory: Path, region_set: RegionSet) -> bool:
    """Remove a region set no image in ``directory`` refers to any more (after an overwrite)."""
    if images_using(directory, region_set):
        return False
    for path in region_set_files(directory, region_set):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return True
