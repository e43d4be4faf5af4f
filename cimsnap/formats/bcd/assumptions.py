"""THE table of BCD encodings that rest on a single public source or on a guess.

Everything here is used by :mod:`.elements` and :mod:`.devices` through the constants at the
bottom, so a correction (e.g. from a real bcdedit dump of a utility VM's BCD) is one change in
this file.  The README's compatibility notes list the same entries.  Tests state the bytes these
choices produce, so any change shows up there too.

Sources named below:
  [DU-CIM]  mcleishk/DiscUtils-CompositeCimFs (2024, MIT): WellKnownElement.cs,
            CompositeDeviceRecord.cs, CimfsDeviceRecord.cs, DeviceRecord.cs
  [PHNT]    System Informer phnt/include/ntbcd.h: BcdLibraryElementTypes, BCD_ELEMENT_DEVICE_TYPE
  [REACTOS] ReactOS boot/environ/include/bcd.h
  [OPENVMM] microsoft/openvmm: the VmbFs interface type GUID
  [HCSSHIM] hcsshim's bcdedit sequence for booting the utility VM from a CIM
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class Assumption:
    value: int | str
    confidence: str  # "one source" or "guess"
    source: str


ASSUMPTIONS: dict[str, Assumption] = {
    # --- element identifiers ---------------------------------------------------------------------
    "element.restartonfailure": Assumption(
        0x16000053,
        "one source",
        "[REACTOS] BcdLibraryBoolean_RestartOnFailure; the same value in [PHNT]; name from "
        "bcdedit's element tables",
    ),
    "element.primarydevice": Assumption(
        0x3100000E, "one source", "[DU-CIM] WellKnownElement.PrimaryDevice"
    ),
    "element.secondarydevice": Assumption(
        0x3100000F, "one source", "[DU-CIM] WellKnownElement.SecondaryDevice"
    ),
    "element.cimfsrootdirectory": Assumption(
        0x32000011, "one source", "[DU-CIM] WellKnownElement.CimfsRootDirectory"
    ),
    "element.cimfsparentdevice": Assumption(
        0x31000012, "one source", "[DU-CIM] WellKnownElement.CimfsParentDevice"
    ),
    # --- device record types ---------------------------------------------------------------------
    "device.type.vmbus": Assumption(
        7, "one source", "[PHNT] BCD_ELEMENT_DEVICE_TYPE_VMBUS (an API enum, used as record type)"
    ),
    "device.type.composite": Assumption(10, "one source", "[DU-CIM] DeviceRecord.Parse case 10"),
    "device.type.cimfs": Assumption(11, "one source", "[DU-CIM] DeviceRecord.Parse case 11"),
    # --- vmbus record ----------------------------------------------------------------------------
    "device.vmbus.interface_type": Assumption(
        "c376c1c3-d276-48d2-90a9-c04748072c60",
        "one source",
        "[OPENVMM] VmbFs interface type; written at record offset 0x20",
    ),
    "device.vmbus.layout": Assumption(
        0x30,
        "guess",
        "record size 0x30: interface type GUID at 0x20, the GUID given to vmbus= (the VmbFs "
        "boot instance) at 0x30",
    ),
    # --- composite record ------------------------------------------------------------------------
    "device.composite.size": Assumption(
        0x2C, "one source", "[DU-CIM] CompositeDeviceRecord: signature GUID, version, 2 offsets"
    ),
    "device.composite.number": Assumption(
        "version",
        "guess",
        "the N of composite=N,{options} is stored in the version field at 0x30 ([DU-CIM] only "
        "knows version 0); the signature GUID at 0x20 is zero and the primary/secondary device "
        "offsets are 0 because the options object supplies both devices",
    ),
    # --- cimfs record ----------------------------------------------------------------------------
    "device.cimfs.size": Assumption(
        0x30, "one source", "[DU-CIM] CimfsDeviceRecord: version, 3 u32 fields, volume GUID"
    ),
    "device.cimfs.version": Assumption(2, "one source", "[DU-CIM] CompatibleVersion2"),
    "device.cimfs.fields": Assumption(
        "volume",
        "guess",
        "cimfs={X},{options}: X is the target mount volume GUID at 0x30, {options} the "
        "additional-options object; parent offset, root path offset and length are 0 because "
        "the options object supplies cimfsparentdevice and cimfsrootdirectory",
    ),
    # --- the utility VM sequence -----------------------------------------------------------------
    "uvm.boot_container_guid": Assumption(
        "b890454c-80de-4e98-a7ab-56b74b4fbd0c", "one source", "[HCSSHIM] cimfs={...} volume"
    ),
}


def _int(name: str) -> int:
    value = ASSUMPTIONS[name].value
    assert isinstance(value, int)
    return value


def _guid(name: str) -> uuid.UUID:
    value = ASSUMPTIONS[name].value
    assert isinstance(value, str)
    return uuid.UUID(value)


ELEMENT_RESTART_ON_FAILURE = _int("element.restartonfailure")
ELEMENT_PRIMARY_DEVICE = _int("element.primarydevice")
ELEMENT_SECONDARY_DEVICE = _int("element.secondarydevice")
ELEMENT_CIMFS_ROOT_DIRECTORY = _int("element.cimfsrootdirectory")
ELEMENT_CIMFS_PARENT_DEVICE = _int("element.cimfsparentdevice")
DEVICE_TYPE_VMBUS = _int("device.type.vmbus")
DEVICE_TYPE_COMPOSITE = _int("device.type.composite")
DEVICE_TYPE_CIMFS = _int("device.type.cimfs")
VMBUS_INTERFACE_TYPE = _guid("device.vmbus.interface_type")
VMBUS_RECORD_SIZE = _int("device.vmbus.layout")
COMPOSITE_RECORD_SIZE = _int("device.composite.size")
CIMFS_RECORD_SIZE = _int("device.cimfs.size")
CIMFS_VERSION = _int("device.cimfs.version")
UVM_BOOT_CONTAINER_GUID = _guid("uvm.boot_container_guid")
