"""BCD stores: createstore, objects and elements, the Windows store, hcsshim's UVM sequence."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from cimsnap.errors import AlreadyExistsError, FormatError, NotFoundError, UsageError
from cimsnap.formats.bcd import BcdStore, configure_cim_boot, format_objects
from cimsnap.formats.regf import Hive, RegType

LOADER = "{3b7a9a1a-5a6f-4a7c-9c43-4c1f1fb3f5a0}"
DISK = uuid.UUID("5a8d2b6e-1c3f-4e7a-9b0d-2f4e6a8c0e12")
PARTITION = uuid.UUID("9e1f3a5c-7b9d-4f1e-8a2c-4e6f8a0c2e4f")


def uvm_store() -> BcdStore:
    """A store shaped like the utility VM's: {bootmgr} whose default is an OS loader."""
    store = BcdStore.create()
    store.create_object("{bootmgr}", "Windows Boot Manager")
    store.create_object(LOADER, "Windows", "osloader")
    store.set_element("{bootmgr}", "default", LOADER)
    store.set_element("{bootmgr}", "displayorder", ["{default}"])
    return store


def _element(hive: Hive, obj: str, element: int) -> tuple[int, bytes]:
    value = hive.key(f"Objects\\{obj}\\Elements\\{element:08x}").value("Element")
    assert value is not None
    return value.type, value.data


def test_createstore_layout(tmp_path: Path) -> None:
    BcdStore.create(tmp_path / "BCD")
    with pytest.raises(AlreadyExistsError):
        BcdStore.create(tmp_path / "BCD")
    hive = Hive.open(tmp_path / "BCD")
    assert hive.root.name == "NewStoreRoot"
    assert hive.key("Description").value("KeyName").decoded() == "BCD00000000"  # type: ignore[union-attr]
    assert hive.key("Description").value("FirmwareModified").decoded() == 1  # type: ignore[union-attr]
    assert hive.key("Objects").subkey_count == 0
    assert BcdStore.open(tmp_path / "BCD").enum() == []


def test_hcsshim_sequence_bytes(tmp_path: Path) -> None:
    store = uvm_store()
    configure_cim_boot(store, DISK, PARTITION, "cim-layers\\1.cim")
    store.save(tmp_path / "BCD")
    hive = Hive.open(tmp_path / "BCD")
    default, cimfs = LOADER, "{763e9fea-502d-434f-aad9-5fabe9c91a7b}"
    composite = "{e1787220-d17f-49e7-977a-d8fe4c8537e2}"

    assert _element(hive, default, 0x16000053) == (RegType.REG_BINARY, b"\x01")
    for obj, description in (
        (cimfs, "CimFS Device Options"),
        (composite, "Composite Device Options"),
    ):
        assert hive.key(f"Objects\\{obj}\\Description").value("Type").decoded() == 0x30000000  # type: ignore[union-attr]
        assert _element(hive, obj, 0x12000004) == (
            RegType.REG_SZ,
            (description + "\0").encode("utf-16-le"),
        )
    # cimfsparentdevice = vmbus={c63c9bdf-...}: no options, record type 7, size 0x30
    assert _element(hive, cimfs, 0x31000012) == (
        RegType.REG_BINARY,
        bytes.fromhex(
            "00000000000000000000000000000000"
            "07000000000000003000000000000000"
            "c3c176c376d2d24890a9c04748072c60"
            "df9b3cc6a55f0842b03f6b458b365592"
        ),
    )
    assert _element(hive, cimfs, 0x32000011) == (
        RegType.REG_SZ,
        "\\cim-layers\\1.cim\0".encode("utf-16-le"),
    )
    # primarydevice = gpt_partition={disk};{partition}: type 6, size 0x48, partition GUID at
    # 0x20, style 0 (GPT) at 0x34, disk GUID at 0x38
    assert _element(hive, composite, 0x3100000E) == (
        RegType.REG_BINARY,
        bytes(16)
        + bytes.fromhex("06000000000000004800000000000000")
        + PARTITION.bytes_le
        + bytes(8)
        + DISK.bytes_le
        + bytes(16),
    )
    # secondarydevice = cimfs={b890454c-...},{763e9fea-...}: options, type 11, size 0x30,
    # version 2, volume GUID at 0x30
    assert _element(hive, composite, 0x3100000F) == (
        RegType.REG_BINARY,
        bytes.fromhex(
            "ea9f3e762d504f43aad95fabe9c91a7b"
            "0b000000000000003000000000000000"
            "02000000000000000000000000000000"
            "4c4590b8de80984ea7ab56b74b4fbd0c"
        ),
    )
    # device and osdevice = composite=0,{e1787220-...}: options, type 10, size 0x2c
    composite_value = bytes.fromhex(
        "207278e17fd1e749977ad8fe4c8537e2"
        "0a000000000000002c00000000000000"
        "00000000000000000000000000000000"
        "000000000000000000000000"
    )
    assert _element(hive, default, 0x11000001) == (RegType.REG_BINARY, composite_value)
    assert _element(hive, default, 0x21000001) == (RegType.REG_BINARY, composite_value)
    assert _element(hive, default, 0x12000002) == (
        RegType.REG_SZ,
        "\\UtilityVM\\Files\\Windows\\System32\\winload.efi\0".encode("utf-16-le"),
    )
    assert _element(hive, default, 0x22000002) == (
        RegType.REG_SZ,
        "\\UtilityVM\\Files\\Windows\0".encode("utf-16-le"),
    )
    assert hive.check() == []
    # an independent reader sees the same bytes in every element of the store
    from dissect.regf import regf

    with (tmp_path / "BCD").open("rb") as fh:
        theirs = regf.RegistryHive(fh)
        for obj in theirs.open("Objects").subkeys():
            for element in obj.subkey("Elements").subkeys():
                value = element.value("Element")
                assert (int(value.type), bytes(value.data)) == _element(
                    hive, obj.name, int(element.name, 16)
                )


def test_hcsshim_sequence_enumerates_in_bcdedit_notation() -> None:
    store = uvm_store()
    configure_cim_boot(store, DISK, PARTITION, "\\cim-layers\\1.cim")
    text = format_objects(store.enum())
    expected_lines = [
        "identifier              {default}",
        "device                  composite=0,{e1787220-d17f-49e7-977a-d8fe4c8537e2}",
        "path                    \\UtilityVM\\Files\\Windows\\System32\\winload.efi",
        "restartonfailure        Yes",
        "osdevice                composite=0,{e1787220-d17f-49e7-977a-d8fe4c8537e2}",
        "systemroot              \\UtilityVM\\Files\\Windows",
        "identifier              {763e9fea-502d-434f-aad9-5fabe9c91a7b}",
        "description             CimFS Device Options",
        "cimfsparentdevice       vmbus={c63c9bdf-5fa5-4208-b03f-6b458b365592}",
        "cimfsrootdirectory      \\cim-layers\\1.cim",
        "description             Composite Device Options",
        f"primarydevice           gpt_partition={{{DISK}}};{{{PARTITION}}}",
        "secondarydevice         cimfs={b890454c-80de-4e98-a7ab-56b74b4fbd0c},"
        "{763e9fea-502d-434f-aad9-5fabe9c91a7b}",
    ]
    lines = text.splitlines()
    for line in expected_lines:
        assert line in lines, line
    # the sequence does not run twice: the options objects exist
    with pytest.raises(AlreadyExistsError):
        configure_cim_boot(store, DISK, PARTITION, "cim-layers\\1.cim")


def test_element_types_round_trip() -> None:
    store = uvm_store()
    store.set_element("{bootmgr}", "timeout", "30")
    store.set_element("{bootmgr}", "displayorder", [LOADER, "{memdiag}"])
    store.set_element("{default}", "nx", "0x3")
    store.set_element("{default}", "quietboot", "on")
    store.set_element("{default}", "bootlog", "No")
    store.set_element("{default}", "loadoptions", "DISABLE_INTEGRITY_CHECKS")
    store.set_element("{default}", "badmemorylist", "0x1000 4096 0x2000")
    store.set_element("{default}", "inherit", "{bootloadersettings}")
    store.set_element("{default}", "custom:42000077", "hex:0a0b0c")
    obj = store.get_object("{default}")
    by_name = {e.name: e for e in obj.elements}
    assert by_name["nx"].value == 3 and by_name["nx"].stored.data == (3).to_bytes(8, "little")
    assert by_name["quietboot"].text == "Yes" and by_name["quietboot"].stored.data == b"\x01"
    assert by_name["bootlog"].value is False
    assert by_name["loadoptions"].value == "DISABLE_INTEGRITY_CHECKS"
    assert by_name["badmemorylist"].value == [0x1000, 0x1000, 0x2000]
    assert by_name["inherit"].text == "{bootloadersettings}"
    assert by_name["custom:42000077"].text == "hex:0a0b0c"  # unknown element: kept as bytes
    boot_manager = store.get_object("{bootmgr}")
    order = boot_manager.element("displayorder")
    assert order is not None and order.text.splitlines() == ["{default}", "{memdiag}"]
    assert order.stored.reg_type == RegType.REG_MULTI_SZ
    assert boot_manager.element("timeout").value == 30  # type: ignore[union-attr]
    store.delete_element("{default}", "quietboot")
    assert store.get_object("{default}").element("quietboot") is None
    with pytest.raises(NotFoundError):
        store.delete_element("{default}", "quietboot")


def test_bad_requests() -> None:
    store = BcdStore.create()
    with pytest.raises(NotFoundError):
        store.resolve("{default}")  # no {bootmgr} yet
    with pytest.raises(UsageError):
        store.resolve("{current}")
    with pytest.raises(UsageError):
        store.resolve("not-a-guid")
    with pytest.raises(NotFoundError):
        store.get_object("{bootmgr}")
    store.create_object("{ramdiskoptions}", "Ramdisk options")
    assert store.get_object("{ramdiskoptions}").type == 0x30000000
    with pytest.raises(AlreadyExistsError):
        store.create_object("{ramdiskoptions}", "again")
    with pytest.raises(UsageError):
        store.create_object("{11111111-2222-3333-4444-555555555555}", "x")  # no kind
    with pytest.raises(UsageError):
        store.create_object("{11111111-2222-3333-4444-555555555555}", "x", "spaceship")
    with pytest.raises(UsageError):
        store.set_element("{ramdiskoptions}", "osdevice", "boot")  # not a device element
    with pytest.raises(FormatError):
        store.set_element("{ramdiskoptions}", "exportascd", "maybe")
    with pytest.raises(FormatError):
        store.set_element("{ramdiskoptions}", "ramdiskimageoffset", "ten")


@pytest.fixture
def windows_bcd(testdata: Path) -> BcdStore:
    return BcdStore.open(testdata / "bcd" / "winefi_Boot_BCD")


def test_windows_store_enumerates(windows_bcd: BcdStore) -> None:
    objects = windows_bcd.enum()
    assert len(objects) == 15
    manager = windows_bcd.get_object("{9dea862c-5cdd-4e70-acc1-f32b344d4795}")
    assert manager.identifier == "{bootmgr}" and manager.type == 0x10100002
    assert len(manager.elements) == 11
    texts = {e.name: e.text for e in manager.elements}
    assert texts["description"] == "Windows Boot Manager"
    assert texts["path"] == "\\EFI\\MICROSOFT\\BOOT\\BOOTMGFW.EFI"
    assert texts["locale"] == "en-US"
    assert texts["inherit"] == "{globalsettings}"  # {7ea2e1ac-2e61-4728-aaa3-896d9d0a9f0e}
    assert texts["flightsigning"] == "Yes"  # 1600007e = 01
    assert texts["default"] == "{default}"
    assert manager.element("default").value == "{347518e1-f3cc-11ea-911e-c7eaa7d84b6c}"  # type: ignore[union-attr]
    assert texts["resumeobject"] == "{347518e0-f3cc-11ea-911e-c7eaa7d84b6c}"
    assert texts["displayorder"] == "{default}"
    assert texts["toolsdisplayorder"] == "{memdiag}"  # {b2721d73-1db4-4c62-bf78-c548a880142d}
    assert texts["timeout"] == "30"
    loader = windows_bcd.get_object("{default}")
    assert loader.guid == uuid.UUID("347518e1-f3cc-11ea-911e-c7eaa7d84b6c")
    assert loader.type == 0x10200003
    assert loader.element("description").text == "Windows 10"  # type: ignore[union-attr]
    assert loader.element("path").text == "\\Windows\\system32\\winload.efi"  # type: ignore[union-attr]
    assert loader.element("device").text.startswith("gpt_partition={d148fb7c-")  # type: ignore[union-attr]


def test_windows_store_edit(windows_bcd: BcdStore, tmp_path: Path, testdata: Path) -> None:
    # with its stale BCD.LOG beside it: the store is clean, the log is ignored
    shutil.copy(testdata / "bcd" / "winefi_Boot_BCD", tmp_path / "BCD")
    shutil.copy(testdata / "bcd" / "winefi_Boot_BCD.LOG", tmp_path / "BCD.LOG")
    store = BcdStore.open(tmp_path / "BCD")
    assert store.hive.recovered_from == []
    store.set_element("{bootmgr}", "timeout", "5")
    store.set_element("{default}", "restartonfailure", "yes")
    store.save()
    reread = BcdStore.open(tmp_path / "BCD")
    assert reread.hive.minor_version == 3  # a regf 1.3 hive stays 1.3 (fast leaves, no db)
    assert reread.get_object("{bootmgr}").element("timeout").value == 5  # type: ignore[union-attr]
    assert reread.get_object("{default}").element("restartonfailure").value is True  # type: ignore[union-attr]
    assert len(reread.enum()) == 15
    assert reread.hive.check() == []
