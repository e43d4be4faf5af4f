"""The container scratch template pair and its start-up rules.

A template is a formatted dynamic base disk (``blank-base.vhdx``: 1 MiB blocks, 10 GiB, GPT with
an MSR and an NTFS basic-data partition, like Windows' FormatWritableLayerVhd) plus a
differencing child (``blank.vhdx``) that is copied for every container.  The CimFS snapshotter
keeps one pair in its root; the legacy per-base-layer mode keeps one pair in every base layer
directory.  Facts: containerd ``createDifferencingScratchVHDs`` (commit 994fdd74e and later).

Start-up rules (:func:`ensure_template`):

- if ``blank-base.vhdx`` exists it is kept; if ``blank.vhdx`` exists *and* the base existed it is
  kept, otherwise a stale ``blank.vhdx`` is deleted and recreated from the base;
- on any failure both files are removed: a half-made template is never left behind;
- beyond the Go code: an existing file is verified (VHDX check, GPT layout of the base, the
  child's parent link) and remade when corrupt instead of being copied into containers.

Concurrency: the pair is created and repaired under an exclusive ``flock`` on ``.template.lock``
in the template's directory; copies hold the shared lock (:meth:`Template.copy_lock`), so several
processes starting on a fresh root make exactly one template, and nobody copies a template that
is being replaced.  New files are made under temporary names and renamed into place, so a process
killed at any point leaves either no file or a complete one (hidden ``.<name>*`` temporaries
are removed under the exclusive lock).  :meth:`Template.copy_lock` re-checks cheaply (stat
fingerprint) before each copy and re-verifies when a file changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cimsnap.errors import CimsnapError

log = logging.getLogger(__name__)

BASE_VHD_NAME = "blank-base.vhdx"
TEMPLATE_VHD_NAME = "blank.vhdx"
DEFAULT_TEMPLATE_SIZE = 10 << 30  # today's containerd: defaultScratchVHDSizeInBytes
TEMPLATE_BLOCK_SIZE = 1 << 20  # vhdBlockSizeInBytes
LOCK_NAME = ".template.lock"


class TemplateError(CimsnapError):
    """The scratch template could not be made or verified."""


@contextlib.contextmanager
def _flock(lock_path: Path, exclusive: bool) -> Iterator[None]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing releases the lock


Fingerprint = tuple[int, int, int, int]


def _fingerprint(path: Path) -> Fingerprint | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _verify_base(path: Path) -> str | None:
    """None if ``path`` is a sound formatted scratch base, else why not."""
    from cimsnap.formats import vhdx
    from cimsnap.scratch import partition_info

    try:
        vhdx.check(path)
        partition_info(path)
    except (CimsnapError, OSError) as err:
        return str(err)
    return None


def _verify_child(path: Path, base: Path) -> str | None:
    """None if ``path`` is a sound differencing disk whose parent is ``base``, else why not.

    Copies of the child live elsewhere (``snapshots/<id>/``), where its relative parent path
    does not resolve: they find the base by the locator's absolute path, so that must name
    ``base`` too (it does not after the root was moved or restored elsewhere).
    """
    from cimsnap.formats import vhdx

    try:
        vhdx.check(path)  # the whole chain, parent linkage (DataWriteGuid) included
        parent = vhdx.info(path).get("parent") or {}
    except (CimsnapError, OSError) as err:
        return str(err)
    for key in ("resolved_path", "absolute_path"):
        named = parent.get(key)
        if named is None or os.path.abspath(named) != str(base.absolute()):
            return f"parent {key.replace('_', ' ')} is {named}, not {base}"
    return None


@dataclass
class Template:
    """A verified template pair in ``directory``."""

    directory: Path
    size: int = DEFAULT_TEMPLATE_SIZE
    block_size: int = TEMPLATE_BLOCK_SIZE
    base_name: str = BASE_VHD_NAME
    child_name: str = TEMPLATE_VHD_NAME

    def __post_init__(self) -> None:
        self.directory = Path(self.directory).absolute()
        self._verified: tuple[Fingerprint | None, Fingerprint | None] | None = None
        self._mutex = threading.Lock()

    @property
    def base(self) -> Path:
        return self.directory / self.base_name

    @property
    def child(self) -> Path:
        return self.directory / self.child_name

    @property
    def lock_path(self) -> Path:
        return self.directory / LOCK_NAME

    def _fingerprints(self) -> tuple[Fingerprint | None, Fingerprint | None]:
        return _fingerprint(self.base), _fingerprint(self.child)

    @contextlib.contextmanager
    def copy_lock(self) -> Iterator[Path]:
        """Hold the template steady while copying it; yields the child path to copy.

        Verifies the pair first when it changed since it was last verified (or was never).
        """
        while True:
            with _flock(self.lock_path, exclusive=False):
                if self._verified is not None and self._fingerprints() == self._verified:
                    yield self.child
                    return
            self.ensure()

    def ensure(self) -> None:
        """Apply the start-up rules (see the module docstring) under the exclusive lock."""
        with self._mutex:
            self.directory.mkdir(parents=True, exist_ok=True)
            with _flock(self.lock_path, exclusive=True):
                self._ensure_locked()
                self._verified = self._fingerprints()

    def _ensure_locked(self) -> None:
        base, child = self.base, self.child
        self._remove_temporaries()
        base_exists = base.exists()
        if base_exists:
            problem = _verify_base(base)
            if problem is not None:
                log.warning("scratch template %s cannot be used (%s): remaking it", base, problem)
                base.unlink()
                base_exists = False
        child_exists = base_exists and child.exists()
        if child_exists:
            problem = _verify_child(child, base)
            if problem is not None:
                log.warning("scratch template %s cannot be used (%s): remaking it", child, problem)
                child_exists = False
        if not child_exists:
            child.unlink(missing_ok=True)
        if base_exists and child_exists:
            return
        try:
            if not base_exists:
                self._create_base()
            self._create_child()
        except BaseException:
            base.unlink(missing_ok=True)
            child.unlink(missing_ok=True)
            self._remove_temporaries()
            raise

    def _remove_temporaries(self) -> None:
        """Delete what an interrupted creation left (only while holding the exclusive lock).

        Both creators write under a hidden name derived from the final one (``.<name>...``)
        and link it into place when complete.
        """
        for name in (self.base_name, self.child_name):
            for leftover in self.directory.glob(f".{name}*"):
                leftover.unlink(missing_ok=True)

    def _create_base(self) -> None:
        from cimsnap.scratch import create_scratch

        log.info("creating scratch template %s (%d bytes)", self.base, self.size)
        try:
            create_scratch(self.base, size=self.size, block_size=self.block_size)
        except CimsnapError as err:
            raise TemplateError(f"failed to create base vhd: {err}", path=self.base) from err

    def _create_child(self) -> None:
        from cimsnap.formats import vhdx

        try:
            vhdx.create_differencing(self.child, self.base, block_size=self.block_size)
        except CimsnapError as err:
            raise TemplateError(
                f"failed to create differencing disk: {err}", path=self.child
            ) from err


def ensure_template(
    directory: str | os.PathLike[str],
    *,
    size: int = DEFAULT_TEMPLATE_SIZE,
    block_size: int = TEMPLATE_BLOCK_SIZE,
) -> Template:
    """The template pair in ``directory``, made or repaired by the start-up rules."""
    template = Template(Path(directory), size=size, block_size=block_size)
    template.ensure()
    return template
