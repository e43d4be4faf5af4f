"""The snapshot data model shared by the metastore, the snapshotter and the gRPC service.

These are containerd's `core/snapshots` types (Kind, Info, Usage, mount.Mount) and the constants
the Windows snapshotters agree on with containerd and hcsshim: the unpack key prefix, the label
names and the CimFS mount option flags.  Sources (facts only): containerd
`core/snapshots/snapshotter.go`, `plugins/snapshots/windows/windows.go`,
`core/mount/mount_windows.go`.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field

# containerd's unpacker names the snapshot a layer is extracted into "extract-<n> <chainid>"
# (snapshots.UnpackKeyFormat); the Windows snapshotters test `strings.Contains(key, "extract")`.
UNPACK_KEY_PREFIX = "extract"

# Labels the Windows snapshotters read at Prepare (plugins/snapshots/windows/windows.go).
LABEL_UVM_SCRATCH = "containerd.io/snapshot/io.microsoft.vm.storage.scratch"
LABEL_ROOTFS_SIZE_GB = "containerd.io/snapshot/io.microsoft.container.storage.rootfs.size-gb"
LABEL_ROOTFS_SIZE_BYTES = "containerd.io/snapshot/windows/rootfs.sizebytes"

# CimFS mount (core/mount/mount_windows.go).
CIMFS_MOUNT_TYPE = "CimFS"
OPTION_LAYER_CIM_PATH = "cimpath="
OPTION_PARENT_LAYER_PATHS = "parentLayerPaths="
OPTION_PARENT_CIM_PATHS = "parentCimPaths="


class Kind(enum.IntEnum):
    """containerd's snapshots.Kind; the numbers are the wire values of the snapshots.v1 enum."""

    UNKNOWN = 0
    VIEW = 1
    ACTIVE = 2
    COMMITTED = 3

    @property
    def filter_name(self) -> str:
        """The spelling filters use (``kind==active``)."""
        return self.name.lower()

    @property
    def display_name(self) -> str:
        """The spelling containerd prints (``Active``)."""
        return self.name.capitalize()


@dataclass
class Info:
    """What containerd knows about a snapshot (snapshots.Info); times in ns since the epoch."""

    name: str
    kind: Kind = Kind.UNKNOWN
    parent: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    created_ns: int = 0
    updated_ns: int = 0


@dataclass(frozen=True)
class Usage:
    """Disk usage of a snapshot (snapshots.Usage): allocated bytes and distinct inodes."""

    size: int = 0
    inodes: int = 0


@dataclass(frozen=True)
class Snapshot:
    """An active or view snapshot as the snapshotter sees it (storage.Snapshot).

    ``parent_ids`` lists the chain nearest parent first, ending with the base layer.
    """

    id: str
    kind: Kind
    parent_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Mount:
    """containerd's mount.Mount (types.Mount on the wire)."""

    type: str
    source: str
    options: tuple[str, ...] = ()
    target: str = ""

    def option_value(self, flag: str) -> str | None:
        """The value of the first option starting with ``flag`` (e.g. ``cimpath=``)."""
        for option in self.options:
            if option.startswith(flag):
                return option[len(flag) :]
        return None

    def json_list_option(self, flag: str) -> list[str]:
        """Decode a JSON string-list option such as ``parentLayerPaths=[...]``; [] if absent."""
        value = self.option_value(flag)
        if value is None:
            return []
        decoded = json.loads(value)
        if not isinstance(decoded, list) or not all(isinstance(v, str) for v in decoded):
            raise ValueError(f"option {flag}{value!r} is not a JSON list of strings")
        return decoded


def is_unpack_key(key: str) -> bool:
    """True for the snapshots containerd extracts a layer into (they get no scratch disk)."""
    return UNPACK_KEY_PREFIX in key


def go_json_string_list(values: list[str]) -> str:
    """A JSON list exactly as Go's ``json.Marshal([]string)`` writes it.

    Go writes no spaces, keeps non-ASCII as UTF-8, and escapes ``<``, ``>``, ``&``, U+2028 and
    U+2029 as ``\\uXXXX`` (encoding/json's HTML-safe default).
    """
    text = json.dumps(values, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text
