"""Element values: bcdedit text <-> the registry value stored under ``Elements\\<id>\\Element``.

Storage by element format (reference "BCD store layout"): device -> REG_BINARY (see
:mod:`.devices`), string -> REG_SZ, object -> REG_SZ ``{guid}``, object list -> REG_MULTI_SZ,
integer -> REG_BINARY 8 bytes little-endian, boolean -> REG_BINARY 1 byte, integer list ->
REG_BINARY n x 8 bytes.  Values whose registry type or size does not fit their format are shown
as ``hex:`` and kept as they are.
"""

from __future__ import annotations

import re
import struct
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cimsnap.errors import FormatError
from cimsnap.formats.regf import RegType
from cimsnap.formats.regf.values import (
    decode_multi_string,
    decode_string,
    encode_multi_string,
    encode_string,
    parse_hex,
)

from .devices import Device, RawDevice, decode_device, encode_device, format_device, parse_device
from .elements import ElementFormat, element_format

TRUE_WORDS = {"yes", "on", "true", "1"}
FALSE_WORDS = {"no", "off", "false", "0"}
_GUID = re.compile(
    r"^\{[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\}$"
)

ResolveObject = Callable[[str], uuid.UUID]
ShowObject = Callable[[uuid.UUID], str]


@dataclass(frozen=True)
class StoredValue:
    reg_type: int
    data: bytes


def braced(guid: uuid.UUID) -> str:
    return "{" + str(guid) + "}"


def parse_guid_text(text: str) -> uuid.UUID | None:
    text = text.strip()
    if _GUID.match(text):
        return uuid.UUID(text[1:-1])
    return None


def _int(text: str) -> int:
    try:
        value = int(text.strip(), 0)
    except ValueError:
        raise FormatError(f"{text!r} is not a number") from None
    if not 0 <= value < 1 << 64:
        if -(1 << 63) <= value < 0:
            return value & ((1 << 64) - 1)
        raise FormatError(f"{text!r} does not fit in 64 bits")
    return value


def encode_element(
    element_id: int,
    items: Sequence[str],
    resolve_object: ResolveObject,
    resolve_device: dict[str, uuid.UUID],
) -> StoredValue:
    """The registry value for bcdedit-style text (several items only for lists)."""
    fmt = element_format(element_id)
    if items and items[0].lower().startswith("hex:") and fmt != ElementFormat.DEVICE:
        if len(items) != 1:
            raise FormatError("hex: data is a single argument")
        reg_type = (
            RegType.REG_SZ
            if fmt in (ElementFormat.STRING, ElementFormat.OBJECT)
            else (RegType.REG_MULTI_SZ if fmt == ElementFormat.OBJECT_LIST else RegType.REG_BINARY)
        )
        return StoredValue(reg_type, parse_hex(items[0][4:]))
    if fmt == ElementFormat.OBJECT_LIST:
        tokens = [t for item in items for t in re.split(r"[\s,]+", item.strip()) if t]
        guids = [braced(resolve_object(token)) for token in tokens]
        return StoredValue(RegType.REG_MULTI_SZ, encode_multi_string(guids))
    if fmt == ElementFormat.INTEGER_LIST:
        tokens = [t for item in items for t in re.split(r"[\s,]+", item.strip()) if t]
        numbers = [_int(t) for t in tokens]
        return StoredValue(RegType.REG_BINARY, struct.pack(f"<{len(numbers)}Q", *numbers))
    if len(items) != 1:
        raise FormatError(f"element {element_id:08x} takes exactly one value")
    text = items[0]
    if fmt == ElementFormat.STRING:
        return StoredValue(RegType.REG_SZ, encode_string(text))
    if fmt == ElementFormat.OBJECT:
        return StoredValue(RegType.REG_SZ, encode_string(braced(resolve_object(text))))
    if fmt == ElementFormat.INTEGER:
        return StoredValue(RegType.REG_BINARY, struct.pack("<Q", _int(text)))
    if fmt == ElementFormat.BOOLEAN:
        word = text.strip().lower()
        if word in TRUE_WORDS:
            return StoredValue(RegType.REG_BINARY, b"\x01")
        if word in FALSE_WORDS:
            return StoredValue(RegType.REG_BINARY, b"\x00")
        raise FormatError(f"{text!r} is not a boolean (yes/no, on/off, true/false)")
    if fmt == ElementFormat.DEVICE:
        device = parse_device(text, resolve_device)
        return StoredValue(RegType.REG_BINARY, encode_device(device))
    raise FormatError(f"element {element_id:08x} has an unknown format: use hex:")


def decode_element(
    element_id: int, stored: StoredValue, show_object: ShowObject
) -> tuple[Any, str]:
    """(value for JSON, bcdedit-style text).  Unusable data comes back as ``hex:``."""
    fmt = element_format(element_id)
    data, reg_type = stored.data, stored.reg_type
    raw = "hex:" + data.hex()
    if fmt == ElementFormat.STRING and reg_type == RegType.REG_SZ:
        text = decode_string(data)
        return text, text
    if fmt == ElementFormat.OBJECT and reg_type == RegType.REG_SZ:
        guid = parse_guid_text(decode_string(data))
        if guid is not None:
            return braced(guid), show_object(guid)
    if fmt == ElementFormat.OBJECT_LIST and reg_type == RegType.REG_MULTI_SZ:
        guids = [parse_guid_text(item) for item in decode_multi_string(data)]
        if all(g is not None for g in guids):
            present = [g for g in guids if g is not None]
            return [braced(g) for g in present], "\n".join(show_object(g) for g in present)
    if reg_type == RegType.REG_BINARY:
        if fmt == ElementFormat.INTEGER and len(data) == 8:
            (number,) = struct.unpack("<Q", data)
            return number, str(number)
        if (
            fmt == ElementFormat.BOOLEAN
            and len(data) in (1, 2, 4)
            and data[1:] == bytes(len(data) - 1)
        ):
            flag = bool(data[0])
            return flag, "Yes" if flag else "No"
        if fmt == ElementFormat.INTEGER_LIST and len(data) % 8 == 0:
            numbers = list(struct.unpack(f"<{len(data) // 8}Q", data))
            return numbers, " ".join(f"{n:#x}" for n in numbers)
        if fmt == ElementFormat.DEVICE:
            device = decode_device(data)
            return device_json(device, show_object), format_device(device, show_object)
    return raw, raw


def device_json(device: Device, show_object: ShowObject) -> dict[str, Any]:
    kind = type(device).__name__
    out: dict[str, Any] = {"kind": kind, "text": format_device(device, show_object)}
    for name, value in vars(device).items():
        if isinstance(value, uuid.UUID):
            out[name] = braced(value)
        elif isinstance(value, bytes):
            out[name] = value.hex()
        else:
            out[name] = value
    if isinstance(device, RawDevice):
        out["device_type"] = device.device_type
    return out
