"""Registry work of a layer import: base-hive links, delta merges, the utility VM's hives.

hcsshim at the seed commit (internal/wclayer/cim/{process,registry}.go), facts only:

* base layer: ``Hives`` is created and every ``Files\\Windows\\System32\\config\\<X>`` gets the
  hard link ``Hives\\<X>_BASE`` (outside the CIM, so children can read it, and in the CIM);
* non-base layer: for every ``Hives\\<X>_DELTA`` the layer brings, the parent's
  ``Hives\\<X>_BASE`` is merged with it (offreg ORMergeHives) and saved as this layer's
  ``Hives\\<X>_BASE``.  hcsshim reads the parent's base hive from the parent's layer directory;
  this project reads it from the parent's CIM, the layer's authoritative content (a choice: it
  works for any parent CIM, whoever wrote its directory);
* utility VM: ``CurrentBuild`` of ``Microsoft\\Windows NT\\CurrentVersion`` in its SOFTWARE hive
  says whether CIM boot is possible; CIM boot is enabled by four values in its SYSTEM hive.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from cimsnap.errors import CimsnapError, NotFoundError
from cimsnap.formats.bcd.assumptions import UVM_BOOT_CONTAINER_GUID
from cimsnap.formats.cim import CimImage
from cimsnap.formats.regf import Hive, RegType, merge_into
from cimsnap.layers import layout
from cimsnap.layers.errors import LayerError

# enableCimBoot (registry.go): key path, value name, type, data.
CIM_BOOT_VALUES: tuple[tuple[str, str, int, str | int], ...] = (
    (
        "ControlSet001\\Control",
        "BootContainerGuid",
        RegType.REG_SZ,
        f"{{{UVM_BOOT_CONTAINER_GUID}}}",
    ),
    ("ControlSet001\\Services\\UnionFS", "Start", RegType.REG_DWORD, 0),
    ("ControlSet001\\Services\\wcifs", "Start", RegType.REG_DWORD, 4),
    ("Setup", "BootPathOverride", RegType.REG_SZ, "\\Windows\\"),
)


def link_base_hives(layer_dir: Path) -> list[tuple[str, str]]:
    """Create ``Hives`` and the ``<X>_BASE`` hard links on the host; returns the
    ``(link, target)`` layer paths to repeat in the CIM."""
    hives_dir = layout.host_path(layer_dir, layout.HIVES)
    with contextlib.suppress(FileExistsError):
        hives_dir.mkdir(mode=0o755)
    if hives_dir.is_symlink() or not hives_dir.is_dir():
        raise LayerError("Hives is not a directory", path=layer_dir)
    links = []
    for hive in layout.HIVE_TABLE:
        source = layout.host_path(layer_dir, hive.config_path)
        if not source.is_file():
            raise LayerError(
                f"a base layer needs its registry hive {hive.config_path}; the layer has none",
                path=layer_dir,
            )
        os.link(source, layout.host_path(layer_dir, hive.base_path), follow_symlinks=False)
        links.append((hive.base_path, hive.config_path))
    return links


def merge_delta_hives(layer_dir: Path, parent_cim: Path) -> list[str]:
    """Merge each delta hive the layer brought with the parent's base hive; returns the layer
    paths of the ``<X>_BASE`` hives written (on the host, to be added to the CIM)."""
    written: list[str] = []
    deltas = [h for h in layout.HIVE_TABLE if layout.host_path(layer_dir, h.delta_path).is_file()]
    if not deltas:
        return written
    with CimImage.open(parent_cim) as parent:
        for hive in deltas:
            try:
                base_bytes = parent.read(hive.base_path)
            except NotFoundError:
                raise LayerError(
                    f"the parent layer has no {hive.base_path} to merge {hive.delta_path} into",
                    path=parent_cim,
                ) from None
            target = layout.host_path(layer_dir, hive.base_path)
            try:
                base = Hive.from_bytes(base_bytes, source=f"{parent_cim}:{hive.base_path}")
                delta = Hive.open(layout.host_path(layer_dir, hive.delta_path), recover=False)
                merge_into(base, delta)
                base.save(target)
            except CimsnapError as err:
                raise LayerError(
                    f"merging {hive.delta_path} with the parent's {hive.base_path}: {err}",
                    path=layer_dir,
                ) from err
            written.append(hive.base_path)
    return written


def uvm_build_number(software_hive: Path) -> int:
    """The utility VM's build (getOsBuildNumberFromRegistry): CurrentBuild, a REG_SZ number."""
    where = f"{layout.UVM_BUILD_KEY}\\{layout.UVM_BUILD_VALUE}"
    try:
        hive = Hive.open(software_hive, recover=False)
        key = hive.find_key(layout.UVM_BUILD_KEY)
        value = key.value(layout.UVM_BUILD_VALUE) if key is not None else None
    except FileNotFoundError:
        raise LayerError(
            f"the utility VM has no SOFTWARE hive ({layout.UVM_SOFTWARE_HIVE}) to read its build"
            " number from",
            path=software_hive,
        ) from None
    except CimsnapError as err:
        raise LayerError(
            f"reading the utility VM's SOFTWARE hive: {err}", path=software_hive
        ) from err
    if value is None:
        raise LayerError(f"the utility VM's SOFTWARE hive has no {where}", path=software_hive)
    if value.type != RegType.REG_SZ:
        raise LayerError(
            f"unexpected build number data type ({value.type}) in {where}", path=software_hive
        )
    text = str(value.decoded()).strip()
    if not text.isdigit() or int(text) > 0xFFFF:
        raise LayerError(f"parse os version string ({text!r}) of {where}", path=software_hive)
    return int(text)


def enable_cim_boot(system_hive: Path, out: Path | None = None) -> None:
    """Set the four CIM-boot values in the utility VM's SYSTEM hive (enableCimBoot)."""
    try:
        hive = Hive.open(system_hive, recover=False)
        for key, name, value_type, data in CIM_BOOT_VALUES:
            hive.set_value(key, name, value_type, data)
        hive.save(out if out is not None else system_hive)
    except CimsnapError as err:
        raise LayerError(
            f"enabling CIM boot in the utility VM's SYSTEM hive: {err}", path=system_hive
        ) from err
