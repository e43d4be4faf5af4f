"""The utility VM of a layer: its scratch template and its boot-from-CIM configuration.

hcsshim processUtilityVMLayer (internal/wclayer/cim/process.go at the seed commit), in this
order, in ``<layer>/UtilityVM``:

1. create ``SystemTemplateBase.vhdx`` (dynamic, 1 MiB blocks, 10 GiB) and format it like
   FormatWritableLayerVhd (GPT: MSR + basic-data NTFS; :func:`cimsnap.scratch.create_scratch`);
2. read its partition info (GPT disk GUID, basic-data partition GUID; GetScratchVhdPartitionInfo);
3. update the BCD with those GUIDs and the CIM path relative to the snapshots directory (the
   bcdedit sequence of :func:`cimsnap.formats.bcd.configure_cim_boot`), then enable CIM boot in
   the utility VM's SYSTEM hive;
4. only then create the differencing ``SystemTemplate.vhdx`` (1 MiB blocks) from the base: doing
   it before step 2 corrupted the parent chain on Windows.

On failure both VHDs are removed.  The BCD and the SYSTEM hive are edited where they are (the
utility VM boots from the host copies, shared over VSMB, as well as from the CIM).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from cimsnap.errors import CimsnapError
from cimsnap.formats import vhdx
from cimsnap.formats.bcd import BcdStore, configure_cim_boot
from cimsnap.layers import layout
from cimsnap.layers.errors import LayerError
from cimsnap.layers.hives import enable_cim_boot
from cimsnap.scratch import create_scratch, partition_info


@dataclass(frozen=True)
class UvmResult:
    base_vhd: Path
    template_vhd: Path
    disk_guid: str
    partition_guid: str
    cim_root: str  # what cimfsrootdirectory names


def process_utility_vm(layer_dir: Path, cim_path: Path) -> UvmResult:
    """Make the layer's utility VM scratch template and point its BCD at ``cim_path``."""
    uvm_dir = layout.host_path(layer_dir, layout.UTILITY_VM)
    base = uvm_dir / layout.UVM_BASE_VHD
    template = uvm_dir / layout.UVM_TEMPLATE_VHD
    bcd = layout.host_path(layer_dir, layout.BCD_FILE)
    system = layout.host_path(layer_dir, layout.UVM_SYSTEM_HIVE)
    relative = layout.relative_cim_path(cim_path)
    try:
        uvm_dir.mkdir(mode=0o755, exist_ok=True)
        create_scratch(base, size=layout.UVM_VHD_SIZE, block_size=layout.UVM_VHD_BLOCK_SIZE)
        info = partition_info(base)
        if not bcd.is_file():
            raise LayerError(
                f"the utility VM has no BCD store ({layout.BCD_FILE}) to configure", path=layer_dir
            )
        try:
            store = BcdStore.open(bcd)
            configure_cim_boot(store, info.disk_guid, info.partition_guid, relative)
            store.save(bcd)
        except CimsnapError as err:
            raise LayerError(f"failed to update BCD: {err}", path=bcd) from err
        if not system.is_file():
            raise LayerError(
                f"the utility VM has no SYSTEM hive ({layout.UVM_SYSTEM_HIVE})", path=layer_dir
            )
        enable_cim_boot(system)
        vhdx.create_differencing(template, base, block_size=layout.UVM_VHD_BLOCK_SIZE)
    except BaseException:
        for leftover in (template, base):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        raise
    return UvmResult(base, template, str(info.disk_guid), str(info.partition_guid), "\\" + relative)
