"""BCD element types, bcdedit's names for them, object types and well-known object aliases.

Element IDs: class (bits 28-31: 1 library, 2 application, 3 device, 4 setup template) | format
(bits 24-27) | subtype.  IDs come from Microsoft's BcdLibraryElementTypes,
BcdBootMgrElementTypes, BcdOSLoaderElementTypes, BcdResumeElementTypes,
BcdMemDiagElementTypes and BcdDeviceObjectElementTypes enumerations (the same values are in
System Informer's phnt/ntbcd.h); the names are the ones bcdedit accepts and prints (bcdedit
"/? TYPES" help; Geoff Chappell's "BCD Elements" notes list them with their IDs).  Entries that
rest on one source come from :mod:`.assumptions`.

Application elements (class 2) mean different things for different applications (0x21000001 is
``osdevice`` for the OS loader and ``filedevice`` for the resume loader), so names are looked up
in the table of the object's application type; library elements (class 1) apply to every object
and device elements (class 3) to device-options objects.

Object types (Description\\Type): application ``0x10000000 | image << 20 | app``, inheritable
``0x20000000 | class << 20 | app``, device options ``0x30000000``.
"""

from __future__ import annotations

import enum
import uuid

from .assumptions import (
    ELEMENT_CIMFS_PARENT_DEVICE,
    ELEMENT_CIMFS_ROOT_DIRECTORY,
    ELEMENT_PRIMARY_DEVICE,
    ELEMENT_RESTART_ON_FAILURE,
    ELEMENT_SECONDARY_DEVICE,
)


class ElementFormat(enum.IntEnum):
    DEVICE = 1  # REG_BINARY, see devices.py
    STRING = 2  # REG_SZ
    OBJECT = 3  # REG_SZ "{guid}"
    OBJECT_LIST = 4  # REG_MULTI_SZ of "{guid}"
    INTEGER = 5  # REG_BINARY, 8 bytes little-endian
    BOOLEAN = 6  # REG_BINARY, 1 byte
    INTEGER_LIST = 7  # REG_BINARY, n x 8 bytes


def element_format(element_id: int) -> ElementFormat | None:
    try:
        return ElementFormat((element_id >> 24) & 0xF)
    except ValueError:
        return None


def element_class(element_id: int) -> int:
    return (element_id >> 28) & 0xF


# --- object types ----------------------------------------------------------------------------
OBJECT_FWBOOTMGR = 0x10100001
OBJECT_BOOTMGR = 0x10100002
OBJECT_OSLOADER = 0x10200003
OBJECT_RESUME = 0x10200004
OBJECT_MEMDIAG = 0x10200005
OBJECT_NTLDR = 0x10300006
OBJECT_BOOTSECTOR = 0x10400008
OBJECT_STARTUP = 0x10400009
OBJECT_DEVICE = 0x30000000
OBJECT_INHERIT_LIBRARY = 0x20100000
OBJECT_INHERIT_OSLOADER = 0x20200003
OBJECT_INHERIT_RESUME = 0x20200004

# bcdedit /create ... /application <TYPE>
APPLICATION_TYPES = {
    "bootsector": OBJECT_BOOTSECTOR,
    "osloader": OBJECT_OSLOADER,
    "resume": OBJECT_RESUME,
    "startup": OBJECT_STARTUP,
}

OBJECT_TYPE_NAMES = {
    OBJECT_FWBOOTMGR: "Firmware Boot Manager",
    OBJECT_BOOTMGR: "Windows Boot Manager",
    OBJECT_OSLOADER: "Windows Boot Loader",
    OBJECT_RESUME: "Resume from Hibernate",
    OBJECT_MEMDIAG: "Windows Memory Tester",
    OBJECT_NTLDR: "Windows Legacy OS Loader",
    OBJECT_BOOTSECTOR: "Real-mode Boot Sector",
    OBJECT_STARTUP: "Real-mode Startup Application",
    OBJECT_DEVICE: "Device options",
}

# --- well-known objects (bcdedit aliases) ------------------------------------------------------
BOOTMGR = uuid.UUID("9dea862c-5cdd-4e70-acc1-f32b344d4795")
WELL_KNOWN: dict[str, uuid.UUID] = {
    "{bootmgr}": BOOTMGR,
    "{fwbootmgr}": uuid.UUID("a5a30fa2-3d06-4e9f-b5f4-a01df9d1fcba"),
    "{memdiag}": uuid.UUID("b2721d73-1db4-4c62-bf78-c548a880142d"),
    "{ntldr}": uuid.UUID("466f5a88-0af2-4f76-9038-095b170dc21c"),
    "{legacy}": uuid.UUID("466f5a88-0af2-4f76-9038-095b170dc21c"),
    "{ramdiskoptions}": uuid.UUID("ae5534e0-a924-466c-b836-758539a3ee3a"),
    "{globalsettings}": uuid.UUID("7ea2e1ac-2e61-4728-aaa3-896d9d0a9f0e"),
    "{dbgsettings}": uuid.UUID("4636856e-540f-4170-a130-a84776f4c654"),
    "{eventsettings}": uuid.UUID("4636856e-540f-4170-a130-a84776f4c654"),
    "{emssettings}": uuid.UUID("0ce4991b-e6b3-4b16-b23c-5e0d9250e5d9"),
    "{badmemory}": uuid.UUID("5189b25c-5558-4bf2-bca4-289b11bd29e2"),
    "{bootloadersettings}": uuid.UUID("6efb52bf-1766-41db-a6b3-0ee5eff72bd7"),
    "{resumeloadersettings}": uuid.UUID("1afa9c49-16ab-4a5c-901b-212802da9460"),
    "{hypervisorsettings}": uuid.UUID("7ff607e0-4395-11db-b0de-0800200c9a66"),
    "{kerneldbgsettings}": uuid.UUID("313e8eed-7098-4586-a9bf-309c61f8d449"),
}
# the alias shown for a GUID (first spelling wins: {ntldr} over {legacy}, {dbgsettings} ...)
ALIAS_OF: dict[uuid.UUID, str] = {}
for _alias, _guid in WELL_KNOWN.items():
    ALIAS_OF.setdefault(_guid, _alias)
# {current} is the running OS's entry: it means nothing in an offline store

WELL_KNOWN_TYPES: dict[uuid.UUID, int] = {
    WELL_KNOWN["{bootmgr}"]: OBJECT_BOOTMGR,
    WELL_KNOWN["{fwbootmgr}"]: OBJECT_FWBOOTMGR,
    WELL_KNOWN["{memdiag}"]: OBJECT_MEMDIAG,
    WELL_KNOWN["{ntldr}"]: OBJECT_NTLDR,
    WELL_KNOWN["{ramdiskoptions}"]: OBJECT_DEVICE,
    WELL_KNOWN["{globalsettings}"]: OBJECT_INHERIT_LIBRARY,
    WELL_KNOWN["{dbgsettings}"]: OBJECT_INHERIT_LIBRARY,
    WELL_KNOWN["{emssettings}"]: OBJECT_INHERIT_LIBRARY,
    WELL_KNOWN["{badmemory}"]: OBJECT_INHERIT_LIBRARY,
    WELL_KNOWN["{bootloadersettings}"]: OBJECT_INHERIT_OSLOADER,
    WELL_KNOWN["{resumeloadersettings}"]: OBJECT_INHERIT_RESUME,
    WELL_KNOWN["{hypervisorsettings}"]: OBJECT_INHERIT_OSLOADER,
    WELL_KNOWN["{kerneldbgsettings}"]: OBJECT_INHERIT_OSLOADER,
}

WELL_KNOWN_NAMES: dict[uuid.UUID, str] = {
    WELL_KNOWN["{globalsettings}"]: "Global Settings",
    WELL_KNOWN["{dbgsettings}"]: "Debugger Settings",
    WELL_KNOWN["{emssettings}"]: "EMS Settings",
    WELL_KNOWN["{badmemory}"]: "RAM Defects",
    WELL_KNOWN["{bootloadersettings}"]: "Boot Loader Settings",
    WELL_KNOWN["{resumeloadersettings}"]: "Resume Loader Settings",
    WELL_KNOWN["{hypervisorsettings}"]: "Hypervisor Settings",
    WELL_KNOWN["{kerneldbgsettings}"]: "Kernel Debugger Settings",
}


def object_type_name(object_type: int, guid: uuid.UUID) -> str:
    if guid in WELL_KNOWN_NAMES:
        return WELL_KNOWN_NAMES[guid]
    if object_type in OBJECT_TYPE_NAMES:
        return OBJECT_TYPE_NAMES[object_type]
    kind = (object_type >> 28) & 0xF
    if kind == 1:
        return f"Firmware Application ({object_type:08x})"
    if kind == 2:
        return "Inheritable Object"
    return f"Object ({object_type:#010x})"


# --- element names -----------------------------------------------------------------------------
LIBRARY: dict[int, str] = {
    0x11000001: "device",
    0x12000002: "path",
    0x12000004: "description",
    0x12000005: "locale",
    0x14000006: "inherit",
    0x15000007: "truncatememory",
    0x14000008: "recoverysequence",
    0x16000009: "recoveryenabled",
    0x1700000A: "badmemorylist",
    0x1600000B: "badmemoryaccess",
    0x1500000C: "firstmegabytepolicy",
    0x1500000D: "relocatephysical",
    0x1500000E: "avoidlowmemory",
    0x1600000F: "traditionalkseg",
    0x16000010: "bootdebug",
    0x15000011: "debugtype",
    0x15000012: "debugaddress",
    0x15000013: "debugport",
    0x15000014: "baudrate",
    0x15000015: "channel",
    0x12000016: "targetname",
    0x16000017: "noumex",
    0x15000018: "debugstart",
    0x12000019: "busparams",
    0x1500001A: "hostip",
    0x1500001B: "port",
    0x1600001C: "dhcp",
    0x1200001D: "key",
    0x1600001E: "vm",
    0x16000020: "bootems",
    0x15000022: "emsport",
    0x15000023: "emsbaudrate",
    0x12000030: "loadoptions",
    0x16000040: "advancedoptions",
    0x16000041: "optionsedit",
    0x15000042: "keyringaddress",
    0x11000043: "bootstatdevice",
    0x12000044: "bootstatfilepath",
    0x16000045: "preservebootstat",
    0x16000046: "graphicsmodedisabled",
    0x15000047: "configaccesspolicy",
    0x16000048: "nointegritychecks",
    0x16000049: "testsigning",
    0x1200004A: "fontpath",
    0x1500004B: "integrityservices",
    0x1500004C: "volumebandid",
    0x16000050: "extendedinput",
    0x15000051: "initialconsoleinput",
    0x15000052: "graphicsresolution",
    ELEMENT_RESTART_ON_FAILURE: "restartonfailure",
    0x16000054: "highestmode",
    0x16000060: "isolatedcontext",
    0x15000065: "displaymessage",
    0x15000066: "displaymessageoverride",
    0x16000067: "nobootuxlogo",
    0x16000068: "nobootuxtext",
    0x16000069: "nobootuxprogress",
    0x1600006A: "nobootuxfade",
    0x1600006C: "bootuxdisabled",
    0x16000074: "bootshutdowndisabled",
    0x17000077: "allowedinmemorysettings",
    0x1600007B: "forcefipscrypto",
    0x1600007E: "flightsigning",
}

BOOTMGR_ELEMENTS: dict[int, str] = {
    0x24000001: "displayorder",
    0x24000002: "bootsequence",
    0x23000003: "default",
    0x25000004: "timeout",
    0x26000005: "resume",
    0x23000006: "resumeobject",
    0x24000010: "toolsdisplayorder",
    0x26000020: "displaybootmenu",
    0x26000021: "noerrordisplay",
    0x21000022: "bcddevice",
    0x22000023: "bcdfilepath",
    0x26000028: "processcustomactionsfirst",
    0x27000030: "customactions",
    0x26000031: "persistbootsequence",
}

OSLOADER_ELEMENTS: dict[int, str] = {
    0x21000001: "osdevice",
    0x22000002: "systemroot",
    0x23000003: "resumeobject",
    0x26000010: "detecthal",
    0x22000011: "kernel",
    0x22000012: "hal",
    0x22000013: "dbgtransport",
    0x25000020: "nx",
    0x25000021: "pae",
    0x26000022: "winpe",
    0x26000024: "nocrashautoreboot",
    0x26000025: "lastknowngood",
    0x26000026: "oslnointegritychecks",
    0x26000027: "osltestsigning",
    0x26000030: "nolowmem",
    0x25000031: "removememory",
    0x25000032: "increaseuserva",
    0x26000040: "vga",
    0x26000041: "quietboot",
    0x26000042: "novesa",
    0x25000050: "clustermodeaddressing",
    0x26000051: "usephysicaldestination",
    0x25000052: "restrictapiccluster",
    0x26000054: "uselegacyapicmode",
    0x25000055: "x2apicpolicy",
    0x26000060: "onecpu",
    0x25000061: "numproc",
    0x26000062: "maxproc",
    0x25000063: "configflags",
    0x26000064: "maxgroup",
    0x26000065: "groupaware",
    0x25000066: "groupsize",
    0x26000070: "usefirmwarepcisettings",
    0x25000071: "msi",
    0x25000072: "pciexpress",
    0x25000080: "safeboot",
    0x26000081: "safebootalternateshell",
    0x26000090: "bootlog",
    0x26000091: "sos",
    0x260000A0: "debug",
    0x260000A1: "halbreakpoint",
    0x260000A2: "useplatformclock",
    0x260000A3: "forcelegacyplatform",
    0x260000A4: "useplatformtick",
    0x260000A5: "disabledynamictick",
    0x250000A6: "tscsyncpolicy",
    0x260000B0: "ems",
    0x250000C1: "driverloadfailurepolicy",
    0x250000C2: "bootmenupolicy",
    0x260000C3: "onetimeadvancedoptions",
    0x250000E0: "bootstatuspolicy",
    0x260000E1: "disableelamdrivers",
    0x250000F0: "hypervisorlaunchtype",
    0x260000F2: "hypervisordebug",
    0x250000F3: "hypervisordebugtype",
    0x250000F4: "hypervisordebugport",
    0x250000F5: "hypervisorbaudrate",
    0x250000F6: "hypervisorchannel",
    0x250000F7: "bootux",
    0x220000F9: "hypervisorbusparams",
    0x250000FA: "hypervisornumproc",
    0x250000FB: "hypervisorrootprocpernode",
    0x260000FC: "hypervisoruselargevtlb",
    0x250000FD: "hypervisorhostip",
    0x250000FE: "hypervisorhostport",
}

RESUME_ELEMENTS: dict[int, str] = {
    0x21000001: "filedevice",
    0x22000002: "filepath",
    0x26000003: "customsettings",
    0x26000004: "pae",
    0x21000005: "associatedosdevice",
    0x26000006: "debugoptionenabled",
    0x25000007: "bootux",
    0x25000008: "bootmenupolicy",
}

MEMDIAG_ELEMENTS: dict[int, str] = {
    0x25000001: "passcount",
    0x25000002: "testmix",
    0x25000003: "failurecount",
    0x25000004: "testtofail",
}

DEVICE_ELEMENTS: dict[int, str] = {
    0x35000001: "ramdiskimageoffset",
    0x35000002: "ramdisktftpclientport",
    0x31000003: "ramdisksdidevice",
    0x32000004: "ramdisksdipath",
    0x35000005: "ramdiskimagelength",
    0x36000006: "exportascd",
    0x35000007: "ramdisktftpblocksize",
    0x35000008: "ramdisktftpwindowsize",
    0x36000009: "ramdiskmcenabled",
    0x3600000A: "ramdiskmctftpfallback",
    0x3600000B: "ramdisktftpvarwindow",
    ELEMENT_PRIMARY_DEVICE: "primarydevice",
    ELEMENT_SECONDARY_DEVICE: "secondarydevice",
    ELEMENT_CIMFS_ROOT_DIRECTORY: "cimfsrootdirectory",
    ELEMENT_CIMFS_PARENT_DEVICE: "cimfsparentdevice",
}


def application_table(object_type: int) -> dict[int, str]:
    """The class-2 element names for objects of this type (also for inheritable objects)."""
    app = object_type & 0xFFFFF
    if app in (1, 2):
        return BOOTMGR_ELEMENTS
    if app == 3:
        return OSLOADER_ELEMENTS
    if app == 4:
        return RESUME_ELEMENTS
    if app == 5:
        return MEMDIAG_ELEMENTS
    return {}


def tables_for(object_type: int) -> list[dict[int, str]]:
    """Name tables that apply to an object, most specific first."""
    tables = [application_table(object_type), LIBRARY, DEVICE_ELEMENTS]
    if object_type & 0xFFFFF == 0 and (object_type >> 28) == 2:
        # a library-class inheritable object ({globalsettings}...) can hold any class-2 element
        tables.extend([OSLOADER_ELEMENTS, BOOTMGR_ELEMENTS])
    return tables


def element_name(element_id: int, object_type: int) -> str | None:
    if element_class(element_id) == 1:
        return LIBRARY.get(element_id)
    if element_class(element_id) == 2:
        return application_table(object_type).get(element_id)
    if element_class(element_id) == 3:
        return DEVICE_ELEMENTS.get(element_id)
    return None


def element_id(name: str, object_type: int) -> int | None:
    """The element for a bcdedit name (or ``custom:XXXXXXXX`` / ``0xXXXXXXXX``)."""
    text = name.strip().lower()
    for prefix in ("custom:", "0x"):
        if text.startswith(prefix):
            try:
                value = int(text[len(prefix) :], 16)
            except ValueError:
                return None
            return value if 0 < value <= 0xFFFFFFFF else None
    for table in tables_for(object_type):
        for candidate, known in table.items():
            if known == text:
                return candidate
    return None
