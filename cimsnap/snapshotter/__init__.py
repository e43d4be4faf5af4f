"""containerd's CimFS snapshotter, in Python: metadata store, policy, mounts.

- :mod:`.metastore`    SQLite store with containerd's snapshot storage semantics
- :mod:`.filters`      containerd filter expressions (List/Walk)
- :mod:`.snapshotter`  the CimFS snapshotter (shared scratch template; legacy wcifs mode)
- :mod:`.model`        Kind, Info, Usage, Mount and the labels/options containerd agrees on
- :mod:`.layout`       where things live under a root
- :mod:`.cimfiles`     usage and destruction of a snapshot's layer CIM
- :mod:`.diskusage`    a directory's allocated bytes and inodes

Typical use::

    with CimFSSnapshotter("/var/lib/cimsnap") as sn:
        sn.prepare("extract-1 sha256:...")          # the differ imports a layer there
        sn.commit("layer", "extract-1 sha256:...")
        mounts = sn.prepare("container-1", "layer")  # sandbox.vhdx copied from blank.vhdx
"""

from cimsnap.snapshotter.metastore import MetaStore
from cimsnap.snapshotter.model import Info, Kind, Mount, Snapshot, Usage
from cimsnap.snapshotter.snapshotter import CimFSSnapshotter, Mode, SnapshotterError

__all__ = [
    "CimFSSnapshotter",
    "Info",
    "Kind",
    "MetaStore",
    "Mode",
    "Mount",
    "Snapshot",
    "SnapshotterError",
    "Usage",
]
