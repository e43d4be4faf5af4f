"""Where things are in a Windows layer: the names hcsshim uses, in one place.

Facts from hcsshim at the seed commit (c767380, internal/wclayer/legacy.go constants,
internal/wclayer/cim/{LayerWriter,common,process}.go):

* layer paths are Windows paths relative to the layer root: ``Files\\...`` (the container's
  C:\\), ``Hives\\...``, ``UtilityVM\\Files\\...``;
* the registry hives of a base layer are ``Files\\Windows\\System32\\config\\{SYSTEM, SOFTWARE,
  SAM, SECURITY, DEFAULT}``; ``Hives\\<X>_BASE`` are their hard links (DEFAULT ->
  ``DEFAULTUSER_BASE``) and ``Hives\\<X>_DELTA`` the differencing hives of later layers;
* "std files" are written outside the CIM first and added at the end: the five hives, the five
  delta hives, the utility VM's SYSTEM and SOFTWARE hives, its BCD and ``bootmgfw.efi``;
* a layer's CIM is ``<dirname(layer)>/cim-layers/<basename(layer)>.cim``; the utility VM's BCD
  names it relative to the snapshots directory (``\\cim-layers\\<id>.cim``).

hcsshim compares the hive names case-insensitively and the utility VM names exactly; this
project compares all of them case-insensitively (Windows paths are case-insensitive; a choice).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

FILES = "Files"
HIVES = "Hives"
UTILITY_VM = "UtilityVM"
UTILITY_VM_FILES = "UtilityVM\\Files"
REG_FILES = "Files\\Windows\\System32\\config"
UVM_REG_FILES = "UtilityVM\\Files\\Windows\\System32\\config"
BCD_FILE = "UtilityVM\\Files\\EFI\\Microsoft\\Boot\\BCD"
BOOTMGR_FILE = "UtilityVM\\Files\\EFI\\Microsoft\\Boot\\bootmgfw.efi"
UVM_SYSTEM_HIVE = UVM_REG_FILES + "\\SYSTEM"
UVM_SOFTWARE_HIVE = UVM_REG_FILES + "\\SOFTWARE"

# Outside-the-CIM files of a base layer with a utility VM (hcsshim wclayer constants).
UVM_BASE_VHD = "SystemTemplateBase.vhdx"
UVM_TEMPLATE_VHD = "SystemTemplate.vhdx"
UVM_VHD_SIZE = 10 << 30  # processUtilityVMLayer: defaultVhdSize 10 GiB
UVM_VHD_BLOCK_SIZE = 1 << 20  # defaultVHDXBlockSizeInMB
# The layout file of a base layer and its contents (processLayoutFile).
LAYOUT_FILE = "layout"
LAYOUT_CONTENTS = b"vhd-with-hives\n"
# The utility VM's build number, written for the shim (wclayer.WriteLayerUvmBuildFile).
UVM_BUILD_FILE = "uvmbuildversion"
# CIM boot of the utility VM needs a build newer than Windows Server 2022 (osversion.LTSC2022).
LTSC2022_BUILD = 20348
UVM_BUILD_KEY = "Microsoft\\Windows NT\\CurrentVersion"
UVM_BUILD_VALUE = "CurrentBuild"

CIM_LAYERS_DIR = "cim-layers"


@dataclass(frozen=True)
class HiveNames:
    """One registry hive: its file under config, its base copy and its delta under Hives."""

    name: str
    base: str
    delta: str

    @property
    def config_path(self) -> str:
        return f"{REG_FILES}\\{self.name}"

    @property
    def base_path(self) -> str:
        return f"{HIVES}\\{self.base}"

    @property
    def delta_path(self) -> str:
        return f"{HIVES}\\{self.delta}"


HIVE_TABLE = (
    HiveNames("SYSTEM", "SYSTEM_BASE", "SYSTEM_DELTA"),
    HiveNames("SOFTWARE", "SOFTWARE_BASE", "SOFTWARE_DELTA"),
    HiveNames("SAM", "SAM_BASE", "SAM_DELTA"),
    HiveNames("SECURITY", "SECURITY_BASE", "SECURITY_DELTA"),
    HiveNames("DEFAULT", "DEFAULTUSER_BASE", "DEFAULTUSER_DELTA"),
)


def fold(path: str) -> str:
    """The comparison form of a layer path (Windows paths are case-insensitive)."""
    return path.replace("/", "\\").casefold()


_STD_FILES = frozenset(
    fold(p)
    for p in (
        *(h.config_path for h in HIVE_TABLE),
        *(h.delta_path for h in HIVE_TABLE),
        UVM_SYSTEM_HIVE,
        UVM_SOFTWARE_HIVE,
        BCD_FILE,
        BOOTMGR_FILE,
    )
)


def is_std_file(path: str) -> bool:
    """True for the files written outside the CIM first (hcsshim isStdFile)."""
    return fold(path) in _STD_FILES


def is_std_folded(folded: str) -> bool:
    """:func:`is_std_file` of a path already :func:`fold`-ed."""
    return folded in _STD_FILES


def host_path(layer_dir: Path, layer_path: str) -> Path:
    """The host path of a layer path inside ``layer_dir`` (components are already validated)."""
    return layer_dir.joinpath(*PureWindowsPath(layer_path).parts)


def cim_dir_for(layer_dir: str | os.PathLike[str]) -> Path:
    return Path(layer_dir).absolute().parent / CIM_LAYERS_DIR


def cim_path_for(layer_dir: str | os.PathLike[str]) -> Path:
    """``<dirname(layer)>/cim-layers/<basename(layer)>.cim`` (hcsshim GetCimPathFromLayer)."""
    layer = Path(layer_dir).absolute()
    return cim_dir_for(layer) / f"{layer.name}.cim"


def relative_cim_path(cim_path: str | os.PathLike[str]) -> str:
    """The CIM's path relative to the snapshots directory, Windows style (``cim-layers\\1.cim``).

    The snapshots directory is shared into the utility VM over VSMB, so its BCD names the CIM
    this way (processUtilityVMLayer).
    """
    cim = Path(cim_path)
    return f"{cim.parent.name}\\{cim.name}"
