"""``cimsnap bcd``: edit a BCD store with bcdedit's commands and spelling.

    cimsnap bcd --store FILE createstore
    cimsnap bcd --store FILE enum [ID|all] [--json]
    cimsnap bcd --store FILE create ID /d DESCRIPTION [/device | /application TYPE]
    cimsnap bcd --store FILE set ID ELEMENT VALUE [VALUE...]
    cimsnap bcd --store FILE deletevalue ID ELEMENT

ID is ``{guid}``, ``{default}`` or a well-known alias ({bootmgr}, {fwbootmgr}, {memdiag},
{ramdiskoptions}, {globalsettings}, {bootloadersettings}, ...).  ELEMENT is bcdedit's name
(``device``, ``osdevice``, ``path``, ``systemroot``, ``restartonfailure``, ``primarydevice``,
``cimfsrootdirectory``...) or ``custom:XXXXXXXX``.  Devices are written as bcdedit does:
``boot``, ``gpt_partition={disk};{partition}``, ``mbr_partition=SIG;OFFSET``,
``vmbus={guid}``, ``composite=0,{options}``, ``cimfs={volume},{options}`` or ``hex:...``.
Booleans take yes/no/on/off, integers decimal or 0x hex, object lists several IDs.
Example: ``cimsnap bcd --store BCD set {default} device composite=0,{e1787220-...}``.

``enum --json`` prints ``{"objects": [{"guid", "identifier", "type", "type_name",
"elements": [{"id", "name", "format", "value", "text", "registry_type", "data"}]}]}``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cimsnap.cli.common import print_json
from cimsnap.formats.bcd import BcdStore, format_objects


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bcd",
        help="edit BCD stores like bcdedit (createstore, enum, create, set, deletevalue)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--store", type=Path, required=True, help="the BCD file")
    sub = parser.add_subparsers(dest="bcd_command", metavar="COMMAND")
    sub.required = True

    createstore = sub.add_parser("createstore", help="create an empty store")
    createstore.set_defaults(func=cmd_createstore)

    enum = sub.add_parser("enum", help="list objects and their elements")
    enum.add_argument("identifier", nargs="?", default=None, help="one object (default: all)")
    enum.add_argument("--json", action="store_true")
    enum.set_defaults(func=cmd_enum)

    create = sub.add_parser("create", help="create an object", prefix_chars="-/")
    create.add_argument("identifier")
    create.add_argument("/d", "-d", dest="description", required=True, help="description")
    kind = create.add_mutually_exclusive_group()  # none: a well-known ID such as {bootmgr}
    kind.add_argument("/device", "-device", action="store_true", help="a device options object")
    kind.add_argument(
        "/application",
        "-application",
        metavar="TYPE",
        help="an application: osloader, resume, bootsector or startup",
    )
    create.set_defaults(func=cmd_create)

    set_ = sub.add_parser("set", help="set an element of an object")
    set_.add_argument("identifier")
    set_.add_argument("element")
    set_.add_argument("value", nargs="+")
    set_.set_defaults(func=cmd_set)

    deletevalue = sub.add_parser("deletevalue", help="delete an element of an object")
    deletevalue.add_argument("identifier")
    deletevalue.add_argument("element")
    deletevalue.set_defaults(func=cmd_deletevalue)


def cmd_createstore(args: argparse.Namespace) -> int:
    BcdStore.create(args.store)
    print("The operation completed successfully.")
    return 0


def cmd_enum(args: argparse.Namespace) -> int:
    store = BcdStore.open(args.store)
    objects = store.enum(args.identifier)
    if args.json:
        print_json({"objects": [obj.to_json() for obj in objects]})
    else:
        print(format_objects(objects), end="")
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    store = BcdStore.open(args.store)
    kind = "device" if args.device else args.application
    obj = store.create_object(args.identifier, args.description, kind)
    store.save(args.store)
    print(f"The entry {obj.identifier} was successfully created.")
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    store = BcdStore.open(args.store)
    store.set_element(args.identifier, args.element, args.value)
    store.save(args.store)
    print("The operation completed successfully.")
    return 0


def cmd_deletevalue(args: argparse.Namespace) -> int:
    store = BcdStore.open(args.store)
    store.delete_element(args.identifier, args.element)
    store.save(args.store)
    print("The operation completed successfully.")
    return 0
