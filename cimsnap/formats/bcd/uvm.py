"""The utility VM's boot-from-CIM configuration: hcsshim's bcdedit sequence, as one call.

hcsshim prepares ``UtilityVM/Files/EFI/Microsoft/Boot/BCD`` of a base layer with this sequence
(reference "What the system must do with hives", utility VM BCD), which this module replays
exactly, in the same order, on an open :class:`~.store.BcdStore`::

    /set {default} restartonfailure yes
    /create {763e9fea-502d-434f-aad9-5fabe9c91a7b} /d "CimFS Device Options" /device
    /set {763e9fea-...} cimfsparentdevice vmbus={c63c9bdf-5fa5-4208-b03f-6b458b365592}
    /set {763e9fea-...} cimfsrootdirectory \\<CIM path relative to the snapshots directory>
    /create {e1787220-d17f-49e7-977a-d8fe4c8537e2} /d "Composite Device Options" /device
    /set {e1787220-...} primarydevice gpt_partition={<disk GUID>};{<partition GUID>}
    /set {e1787220-...} secondarydevice cimfs={b890454c-80de-4e98-a7ab-56b74b4fbd0c},{763e9fea-...}
    /set {default} device composite=0,{e1787220-...}
    /set {default} osdevice composite=0,{e1787220-...}
    /set {default} path \\UtilityVM\\Files\\Windows\\System32\\winload.efi
    /set {default} systemroot \\UtilityVM\\Files\\Windows

The disk and partition GUIDs are the GPT disk GUID of the utility VM's scratch VHD and the
unique GUID of its basic-data partition.  Nothing here knows about layers.
"""

from __future__ import annotations

import uuid

from .assumptions import UVM_BOOT_CONTAINER_GUID
from .codec import braced
from .store import BcdStore

CIMFS_OPTIONS = uuid.UUID("763e9fea-502d-434f-aad9-5fabe9c91a7b")
COMPOSITE_OPTIONS = uuid.UUID("e1787220-d17f-49e7-977a-d8fe4c8537e2")
VMBUS_BOOT_INSTANCE = uuid.UUID("c63c9bdf-5fa5-4208-b03f-6b458b365592")
WINLOAD_PATH = "\\UtilityVM\\Files\\Windows\\System32\\winload.efi"
SYSTEM_ROOT = "\\UtilityVM\\Files\\Windows"


def cim_boot_commands(
    disk_guid: uuid.UUID, partition_guid: uuid.UUID, cim_relative_path: str
) -> list[tuple[str, ...]]:
    """The bcdedit commands (without ``bcdedit /store``), as hcsshim runs them."""
    cimfs = braced(CIMFS_OPTIONS)
    composite = braced(COMPOSITE_OPTIONS)
    root = "\\" + cim_relative_path.replace("/", "\\").lstrip("\\")
    return [
        ("/set", "{default}", "restartonfailure", "yes"),
        ("/create", cimfs, "/d", "CimFS Device Options", "/device"),
        ("/set", cimfs, "cimfsparentdevice", f"vmbus={braced(VMBUS_BOOT_INSTANCE)}"),
        ("/set", cimfs, "cimfsrootdirectory", root),
        ("/create", composite, "/d", "Composite Device Options", "/device"),
        (
            "/set",
            composite,
            "primarydevice",
            f"gpt_partition={braced(disk_guid)};{braced(partition_guid)}",
        ),
        ("/set", composite, "secondarydevice", f"cimfs={braced(UVM_BOOT_CONTAINER_GUID)},{cimfs}"),
        ("/set", "{default}", "device", f"composite=0,{composite}"),
        ("/set", "{default}", "osdevice", f"composite=0,{composite}"),
        ("/set", "{default}", "path", WINLOAD_PATH),
        ("/set", "{default}", "systemroot", SYSTEM_ROOT),
    ]


def run_bcdedit(store: BcdStore, command: tuple[str, ...]) -> None:
    """Apply one ``/set ID ELEMENT VALUE...``, ``/create ID /d DESC /device|/application T`` or
    ``/deletevalue ID ELEMENT`` command to ``store``."""
    verb = command[0].lower()
    if verb == "/set":
        store.set_element(command[1], command[2], list(command[3:]))
    elif verb == "/deletevalue":
        store.delete_element(command[1], command[2])
    elif verb == "/create":
        args = [a for a in command[2:]]
        description = None
        kind: str | None = None
        i = 0
        while i < len(args):
            flag = args[i].lower()
            if flag == "/d":
                description = args[i + 1]
                i += 2
            elif flag == "/device":
                kind = "device"
                i += 1
            elif flag == "/application":
                kind = args[i + 1]
                i += 2
            else:
                raise ValueError(f"unsupported /create option {args[i]!r}")
        store.create_object(command[1], description, kind)
    else:
        raise ValueError(f"unsupported bcdedit command {command[0]!r}")


def configure_cim_boot(
    store: BcdStore,
    disk_guid: uuid.UUID | str,
    partition_guid: uuid.UUID | str,
    cim_relative_path: str,
) -> None:
    """Make ``store``'s ``{default}`` loader boot from the CIM (hcsshim's sequence, exactly).

    ``cim_relative_path`` is the CIM's path relative to the snapshots directory, e.g.
    ``cim-layers\\1.cim``; it is stored as ``\\cim-layers\\1.cim``.  The store must already have
    a ``{bootmgr}`` whose default is an OS loader (as the utility VM's BCD has).
    """
    disk = disk_guid if isinstance(disk_guid, uuid.UUID) else uuid.UUID(str(disk_guid))
    partition = (
        partition_guid if isinstance(partition_guid, uuid.UUID) else uuid.UUID(str(partition_guid))
    )
    for command in cim_boot_commands(disk, partition, cim_relative_path):
        run_bcdedit(store, command)
