"""BCD stores (Boot Configuration Data): bcdedit's object model on a registry hive.

API (what other packages call)::

    from cimsnap.formats.bcd import BcdStore, configure_cim_boot

    store = BcdStore.create()                     # bcdedit /createstore (in memory)
    store = BcdStore.open(path)                   # any BCD hive, logs applied when dirty
    store.create_object("{guid}", "Description", "device")      # /create ... /device
    store.create_object("{guid}", "Windows", "osloader")        # /create ... /application osloader
    store.set_element("{default}", "device", "composite=0,{e1787220-...}")   # /set
    store.set_element("{bootmgr}", "displayorder", ["{default}", "{memdiag}"])
    store.delete_element("{default}", "restartonfailure")       # /deletevalue
    for obj in store.enum(): obj.identifier, obj.type_name, obj.elements   # /enum all
    format_objects(store.enum("{default}"))       # bcdedit's text layout
    configure_cim_boot(store, disk_guid, partition_guid, r"cim-layers\\1.cim")  # hcsshim's edit
    store.save(path)                              # temp file + fsync + rename

Element names follow bcdedit (``custom:XXXXXXXX`` and ``0xXXXXXXXX`` work for any element);
devices use bcdedit's text (see :mod:`.devices`).  Encodings that rest on one source or on a
guess are all in :mod:`.assumptions`.
"""

from .devices import (
    BootDevice,
    CimfsDevice,
    CompositeDevice,
    Device,
    GptPartition,
    MbrPartition,
    RawDevice,
    VmbusDevice,
    decode_device,
    encode_device,
    format_device,
    parse_device,
)
from .store import BcdObject, BcdStore, Element, format_objects
from .uvm import cim_boot_commands, configure_cim_boot, run_bcdedit

__all__ = [
    "BcdObject",
    "BcdStore",
    "BootDevice",
    "CimfsDevice",
    "CompositeDevice",
    "Device",
    "Element",
    "GptPartition",
    "MbrPartition",
    "RawDevice",
    "VmbusDevice",
    "cim_boot_commands",
    "configure_cim_boot",
    "decode_device",
    "encode_device",
    "format_device",
    "format_objects",
    "parse_device",
    "run_bcdedit",
]
