"""Where things live under a snapshotter root (containerd's CimFS snapshotter layout).

```
<root>/metadata.db                      SQLite metadata (metastore.py)
<root>/blank-base.vhdx                  shared container scratch template (cimfs mode)
<root>/blank.vhdx                       its differencing child, copied per container
<root>/snapshots/<id>/                  one directory per snapshot
<root>/snapshots/<id>/sandbox.vhdx      container scratch (active, non-unpack snapshots)
<root>/snapshots/<id>/vm/sandbox.vhdx   utility VM scratch (UVM label)
<root>/snapshots/rm-<id>/               a removed snapshot waiting to be deleted
<root>/snapshots/cim-layers/<id>.cim    layer CIMs (+ region_* and objectid_* files)
```
Facts from containerd `plugins/snapshots/windows/{common,cimfs}.go`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

METADATA_DB = "metadata.db"
SNAPSHOTS_DIR = "snapshots"
CIM_LAYERS_DIR = "cim-layers"
BASE_VHD_NAME = "blank-base.vhdx"
TEMPLATE_VHD_NAME = "blank.vhdx"
SANDBOX_VHD_NAME = "sandbox.vhdx"
UVM_SCRATCH_DIR = "vm"
REMOVED_PREFIX = "rm-"
# The base layer's utility VM scratch template, copied for the UVM label (hcsshim wclayer names).
UVM_DIR = "UtilityVM"
UVM_TEMPLATE_NAME = "SystemTemplate.vhdx"


@dataclass(frozen=True)
class RootLayout:
    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike[str]) -> RootLayout:
        return cls(Path(root).absolute())

    @property
    def metadata_db(self) -> Path:
        return self.root / METADATA_DB

    @property
    def snapshots(self) -> Path:
        return self.root / SNAPSHOTS_DIR

    @property
    def cim_layers(self) -> Path:
        return self.snapshots / CIM_LAYERS_DIR

    @property
    def base_vhd(self) -> Path:
        return self.root / BASE_VHD_NAME

    @property
    def template_vhd(self) -> Path:
        return self.root / TEMPLATE_VHD_NAME

    def snapshot_dir(self, snapshot_id: str) -> Path:
        return self.snapshots / snapshot_id

    def removed_dir(self, snapshot_id: str) -> Path:
        return self.snapshots / (REMOVED_PREFIX + snapshot_id)

    def layer_cim(self, snapshot_id: str) -> Path:
        return self.cim_layers / f"{snapshot_id}.cim"

    def sandbox(self, snapshot_id: str) -> Path:
        return self.snapshot_dir(snapshot_id) / SANDBOX_VHD_NAME

    def uvm_sandbox(self, snapshot_id: str) -> Path:
        return self.snapshot_dir(snapshot_id) / UVM_SCRATCH_DIR / SANDBOX_VHD_NAME
