"""What a snapshotter root must look like after Cleanup, whatever happened before."""

from __future__ import annotations

from pathlib import Path

from cimsnap.formats import vhdx
from cimsnap.snapshotter.model import Kind, is_unpack_key
from cimsnap.snapshotter.snapshotter import CimFSSnapshotter


def assert_consistent(sn: CimFSSnapshotter) -> None:
    """Metadata and directories agree; every scratch disk and the template are sound."""
    root = sn.root
    with sn.ms.transaction() as tx:
        records = {sid: tx.get_info(name)[1] for sid, name in tx.id_map().items()}
    snapshots = root / "snapshots"
    entries = {p.name for p in snapshots.iterdir()} - {"cim-layers"}
    assert not [e for e in entries if e.startswith("rm-")], entries
    assert entries == set(records), (entries, set(records))
    for sid, info in records.items():
        directory = snapshots / sid
        assert not list(directory.rglob(".*tmp*")), list(directory.rglob(".*tmp*"))
        needs_scratch = info.kind in (Kind.ACTIVE, Kind.VIEW) and not is_unpack_key(info.name)
        if needs_scratch and info.parent:
            vhdx.check(directory / "sandbox.vhdx")
    for cim in (snapshots / "cim-layers").glob("*.cim"):
        assert cim.stem in records, cim
    if (root / "blank-base.vhdx").exists():
        vhdx.check(root / "blank.vhdx")
    hidden = {p.name for p in Path(root).glob(".*")} - {".template.lock"}
    assert not [n for n in hidden if not n.startswith("metadata.db")], hidden
