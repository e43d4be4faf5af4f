"""A BCD store (a registry hive) as bcdedit sees it: objects, elements, aliases.

Layout (reference "BCD store layout"): ``Description\\KeyName`` = ``BCD00000000``;
``Objects\\{guid}\\Description\\Type`` = the object type; ``Objects\\{guid}\\Elements\\<8 hex
digits>\\Element`` = the element value.  GUIDs are written lowercase with braces.  ``{default}``
is not an object of its own: it is the object named by ``{bootmgr}``'s element 0x23000003.

``createstore`` makes what ``bcdedit /createstore`` makes (root key ``NewStoreRoot``,
``Description\\KeyName`` REG_SZ ``BCD00000000``, ``Description\\FirmwareModified`` DWORD 1, an
empty ``Objects`` key); the hive is regf 1.5.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cimsnap.errors import AlreadyExistsError, NotFoundError, UsageError
from cimsnap.formats.regf import Hive, Key, RegType
from cimsnap.formats.regf.values import decode_multi_string

from .codec import StoredValue, braced, decode_element, encode_element, parse_guid_text
from .elements import (
    ALIAS_OF,
    APPLICATION_TYPES,
    BOOTMGR,
    OBJECT_DEVICE,
    WELL_KNOWN,
    WELL_KNOWN_TYPES,
    element_format,
    element_id,
    element_name,
    object_type_name,
)

STORE_ROOT_NAME = "NewStoreRoot"
STORE_KEY_NAME = "BCD00000000"
ELEMENT_DEFAULT = 0x23000003  # {bootmgr}'s default object
ELEMENT_DESCRIPTION = 0x12000004
ELEMENT_DISPLAY_ORDER = 0x24000001


@dataclass
class Element:
    id: int
    name: str  # bcdedit's name, or custom:XXXXXXXX
    stored: StoredValue
    value: Any  # for JSON: str, int, bool, list, or a device dict
    text: str  # bcdedit notation (lists: one item per line)

    def to_json(self) -> dict[str, Any]:
        fmt = element_format(self.id)
        return {
            "id": f"{self.id:08x}",
            "name": self.name,
            "format": fmt.name.lower() if fmt is not None else "unknown",
            "value": self.value,
            "text": self.text,
            "registry_type": RegType(self.stored.reg_type).name
            if self.stored.reg_type in RegType._value2member_map_
            else self.stored.reg_type,
            "data": self.stored.data.hex(),
        }


@dataclass
class BcdObject:
    guid: uuid.UUID
    type: int
    identifier: str  # as bcdedit shows it: {default}, an alias, or {guid}
    type_name: str
    elements: list[Element]

    def element(self, name_or_id: str | int) -> Element | None:
        for element in self.elements:
            if element.id == name_or_id or element.name == name_or_id:
                return element
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "guid": braced(self.guid),
            "identifier": self.identifier,
            "type": f"{self.type:08x}",
            "type_name": self.type_name,
            "elements": [e.to_json() for e in self.elements],
        }


class BcdStore:
    """Open with :meth:`open`, make a new one with :meth:`create`; :meth:`save` writes it."""

    def __init__(self, hive: Hive):
        self.hive = hive
        if hive.find_key("Objects") is None:
            raise UsageError("not a BCD store: the hive has no Objects key", path=hive.path)

    # --- files ---------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike[str] | None = None) -> BcdStore:
        """An empty store, like ``bcdedit /createstore``; written to ``path`` when given (which
        must not exist yet), later :meth:`save` calls then default to it."""
        if path is not None and Path(path).exists():
            raise AlreadyExistsError("the store file already exists", path=path)
        hive = Hive.create(root_name=STORE_ROOT_NAME)
        hive.set_value("Description", "KeyName", RegType.REG_SZ, STORE_KEY_NAME)
        hive.set_value("Description", "FirmwareModified", RegType.REG_DWORD, 1)
        hive.create_key("Objects")
        store = cls(hive)
        if path is not None:
            store.save(path)
        return store

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> BcdStore:
        return cls(Hive.open(path))

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        return self.hive.save(path)

    # --- identifiers ---------------------------------------------------------------------------
    def default_object(self) -> uuid.UUID | None:
        element = self._element_key(BOOTMGR, ELEMENT_DEFAULT)
        if element is None:
            return None
        value = element.value("Element")
        if value is None or value.type != RegType.REG_SZ:
            return None
        return parse_guid_text(str(value.decoded()))

    def resolve(self, identifier: str) -> uuid.UUID:
        """A GUID for ``{guid}``, a well-known alias or ``{default}``."""
        text = identifier.strip().lower()
        if text == "{default}":
            default = self.default_object()
            if default is None:
                raise NotFoundError(
                    "{default} is not set: {bootmgr} has no default element", path=self.hive.path
                )
            return default
        if text == "{current}":
            raise UsageError(
                "{current} means the running system; it has no meaning offline", path=self.hive.path
            )
        if text in WELL_KNOWN:
            return WELL_KNOWN[text]
        guid = parse_guid_text(text)
        if guid is None:
            raise UsageError(
                f"{identifier!r} is not a {{GUID}} or a known identifier", path=self.hive.path
            )
        return guid

    def show(self, guid: uuid.UUID) -> str:
        """How bcdedit names an object: {default}, a well-known alias or the GUID."""
        if guid == self.default_object():
            return "{default}"
        return ALIAS_OF.get(guid, braced(guid))

    # --- objects -------------------------------------------------------------------------------
    def _object_key(self, guid: uuid.UUID) -> Key | None:
        return self.hive.find_key(f"Objects\\{braced(guid)}")

    def _element_key(self, guid: uuid.UUID, element: int) -> Key | None:
        return self.hive.find_key(f"Objects\\{braced(guid)}\\Elements\\{element:08x}")

    def object_type(self, guid: uuid.UUID) -> int:
        key = self._object_key(guid)
        if key is None:
            raise NotFoundError(f"no object {braced(guid)} in the store", path=self.hive.path)
        description = key.subkey("Description")
        value = description.value("Type") if description is not None else None
        if value is None or not isinstance(value.decoded(), int):
            raise UsageError(f"object {braced(guid)} has no Description\\Type", path=self.hive.path)
        return int(value.decoded())  # type: ignore[arg-type]

    def objects(self) -> list[BcdObject]:
        """Every object: firmware boot manager, boot manager, the display order, the rest."""
        guids = []
        for key in self.hive.key("Objects").subkeys():
            guid = parse_guid_text(key.name)
            if guid is not None:
                guids.append(guid)
        order = {WELL_KNOWN["{fwbootmgr}"]: 0, BOOTMGR: 1}
        display = self._element_key(BOOTMGR, ELEMENT_DISPLAY_ORDER)
        value = display.value("Element") if display is not None else None
        if value is not None and value.type == RegType.REG_MULTI_SZ:
            for i, item in enumerate(decode_multi_string(value.data)):
                guid = parse_guid_text(item)
                if guid is not None:
                    order.setdefault(guid, 2 + i)
        guids.sort(key=lambda g: (order.get(g, 1 << 20), self._type_or_zero(g), str(g)))
        return [self.get_object(braced(g)) for g in guids]

    def _type_or_zero(self, guid: uuid.UUID) -> int:
        try:
            return self.object_type(guid)
        except (NotFoundError, UsageError):
            return 0

    def get_object(self, identifier: str) -> BcdObject:
        guid = self.resolve(identifier)
        object_type = self.object_type(guid)
        key = self._object_key(guid)
        assert key is not None
        elements_key = key.subkey("Elements")
        elements = []
        for element_key in elements_key.subkeys() if elements_key is not None else []:
            try:
                eid = int(element_key.name, 16)
            except ValueError:
                continue
            value = element_key.value("Element")
            if value is None:
                continue
            elements.append(self._element(eid, object_type, value.type, value.data))
        elements.sort(key=lambda e: e.id)
        return BcdObject(
            guid, object_type, self.show(guid), object_type_name(object_type, guid), elements
        )

    def _element(self, eid: int, object_type: int, reg_type: int, data: bytes) -> Element:
        stored = StoredValue(reg_type, data)
        name = element_name(eid, object_type)
        if name is None:
            raw = "hex:" + data.hex()  # unknown elements: kept, and shown as their bytes
            return Element(eid, f"custom:{eid:08x}", stored, raw, raw)
        value, text = decode_element(eid, stored, self.show)
        return Element(eid, name, stored, value, text)

    def enum(self, identifier: str | None = None) -> list[BcdObject]:
        """``bcdedit /enum all`` (no identifier) or ``bcdedit /enum ID``."""
        if identifier is None or identifier.strip().lower() == "all":
            return self.objects()
        return [self.get_object(identifier)]

    def create_object(
        self, identifier: str, description: str | None, kind: str | int | None = None
    ) -> BcdObject:
        """``bcdedit /create ID /d DESC`` with ``/device`` (kind "device"),
        ``/application TYPE`` (kind "osloader", "resume", "bootsector", "startup") or a raw
        object type; well-known identifiers ({bootmgr}, {ramdiskoptions}...) know their type."""
        if identifier.strip().lower() == "{default}":
            raise UsageError(
                "{default} is not an object: set {bootmgr}'s default instead", path=self.hive.path
            )
        guid = self.resolve(identifier)
        if self._object_key(guid) is not None:
            raise AlreadyExistsError(
                f"the object {braced(guid)} already exists", path=self.hive.path
            )
        object_type = _object_type(kind, guid)
        base = f"Objects\\{braced(guid)}"
        self.hive.set_value(base + "\\Description", "Type", RegType.REG_DWORD, object_type)
        self.hive.create_key(base + "\\Elements")
        if description is not None:
            self.set_element(braced(guid), ELEMENT_DESCRIPTION, [description])
        return self.get_object(braced(guid))

    def delete_object(self, identifier: str) -> None:
        guid = self.resolve(identifier)
        if self._object_key(guid) is None:
            raise NotFoundError(f"no object {braced(guid)} in the store", path=self.hive.path)
        self.hive.delete_key(f"Objects\\{braced(guid)}")

    # --- elements ------------------------------------------------------------------------------
    def element_id(self, identifier: str, name_or_id: str | int) -> int:
        guid = self.resolve(identifier)
        if isinstance(name_or_id, int):
            return name_or_id
        found = element_id(name_or_id, self.object_type(guid))
        if found is None:
            kind = object_type_name(self.object_type(guid), guid)
            raise UsageError(
                f"unknown element {name_or_id!r} for a {kind} object", path=self.hive.path
            )
        return found

    def set_element(
        self, identifier: str, name_or_id: str | int, value: str | Sequence[str]
    ) -> Element:
        """``bcdedit /set ID ELEMENT VALUE`` (object lists take several values)."""
        guid = self.resolve(identifier)
        eid = self.element_id(braced(guid), name_or_id)
        items = [value] if isinstance(value, str) else list(value)
        aliases = {alias: g for alias, g in WELL_KNOWN.items()}
        default = self.default_object()
        if default is not None:
            aliases["{default}"] = default
        stored = encode_element(eid, items, self.resolve, aliases)
        return self.set_element_raw(braced(guid), eid, stored.reg_type, stored.data)

    def set_element_raw(self, identifier: str, eid: int, reg_type: int, data: bytes) -> Element:
        guid = self.resolve(identifier)
        object_type = self.object_type(guid)
        path = f"Objects\\{braced(guid)}\\Elements\\{eid:08x}"
        self.hive.set_value(path, "Element", reg_type, data)
        return self._element(eid, object_type, reg_type, data)

    def delete_element(self, identifier: str, name_or_id: str | int) -> None:
        """``bcdedit /deletevalue ID ELEMENT``."""
        guid = self.resolve(identifier)
        eid = self.element_id(braced(guid), name_or_id)
        if self._element_key(guid, eid) is None:
            raise NotFoundError(
                f"{braced(guid)} has no element {name_or_id} ({eid:08x})", path=self.hive.path
            )
        self.hive.delete_key(f"Objects\\{braced(guid)}\\Elements\\{eid:08x}")


def _object_type(kind: str | int | None, guid: uuid.UUID) -> int:
    if isinstance(kind, int):
        return kind
    if kind is None:
        if guid in WELL_KNOWN_TYPES:
            return WELL_KNOWN_TYPES[guid]
        raise UsageError("say what to create: /device or /application TYPE")
    text = kind.strip().lower().lstrip("/")
    if text == "device":
        return OBJECT_DEVICE
    if text in APPLICATION_TYPES:
        return APPLICATION_TYPES[text]
    raise UsageError(
        f"unknown object kind {kind!r}: use device or one of {', '.join(APPLICATION_TYPES)}"
    )


def format_objects(objects: Sequence[BcdObject]) -> str:
    """bcdedit's /enum layout: a title, a rule, ``name<padding>value`` lines (24 columns)."""
    blocks = []
    for obj in objects:
        lines = [obj.type_name, "-" * len(obj.type_name), f"{'identifier':<24}{obj.identifier}"]
        for element in obj.elements:
            parts = element.text.split("\n") or [""]
            lines.append(f"{element.name:<24}{parts[0]}".rstrip())
            lines.extend(f"{'':<24}{part}" for part in parts[1:])
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + ("\n" if blocks else "")
