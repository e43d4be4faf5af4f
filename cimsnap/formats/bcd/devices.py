"""BCD device element values: the binary records and bcdedit's text for them.

A device element (format 1, stored as REG_BINARY) is a 16-byte additional-options object GUID
(zero when none) followed by a device record: type u32, flags u32, size u32 (the record size
including its 16-byte header), reserved u32, then type-specific data.  Layouts: the reference
file (registry-and-bcd.md, "Device element value"); the partition record was verified against a
real dump (the winefi BCD in the test data).  Layouts that rest on one source or on a guess come
from :mod:`.assumptions`.

Text forms (bcdedit's spelling where it has one):
  ``boot``                                   boot device (type 5)
  ``gpt_partition={disk};{partition}``       GPT partition (type 6); ``partition=`` is accepted
  ``mbr_partition=0xSIGNATURE;OFFSET``       MBR partition (type 6) by disk signature and offset
  ``vmbus={instance}``                       VMBus device (type 7)
  ``composite=N,{options}``                  composite device (type 10)
  ``cimfs={volume},{options}``               CimFS device (type 11)
  ``hex:<bytes>``                            any other record, kept byte for byte
"""

from __future__ import annotations

import re
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from cimsnap.errors import FormatError

from .assumptions import (
    CIMFS_RECORD_SIZE,
    CIMFS_VERSION,
    COMPOSITE_RECORD_SIZE,
    DEVICE_TYPE_CIMFS,
    DEVICE_TYPE_COMPOSITE,
    DEVICE_TYPE_VMBUS,
    VMBUS_INTERFACE_TYPE,
    VMBUS_RECORD_SIZE,
)

ZERO_GUID = uuid.UUID(int=0)
RECORD_HEADER = struct.Struct("<IIII")  # type, flags, size (incl. header), reserved
OPTIONS_SIZE = 16
HEADER_AT = OPTIONS_SIZE  # the record starts after the options GUID

DEVICE_TYPE_BLOCK_IO = 0  # file, ramdisk, VHD
DEVICE_TYPE_LEGACY_PARTITION = 2
DEVICE_TYPE_SERIAL = 3
DEVICE_TYPE_UDP = 4
DEVICE_TYPE_BOOT = 5
DEVICE_TYPE_PARTITION = 6
DEVICE_TYPE_LOCATE = 8

BOOT_RECORD_SIZE = 0x48
PARTITION_RECORD_SIZE = 0x48
PARTITION_STYLE_GPT = 0
PARTITION_STYLE_MBR = 1

DEVICE_TYPE_NAMES = {
    DEVICE_TYPE_BLOCK_IO: "block i/o",
    DEVICE_TYPE_LEGACY_PARTITION: "legacy partition",
    DEVICE_TYPE_SERIAL: "serial",
    DEVICE_TYPE_UDP: "udp",
    DEVICE_TYPE_BOOT: "boot",
    DEVICE_TYPE_PARTITION: "partition",
    DEVICE_TYPE_VMBUS: "vmbus",
    DEVICE_TYPE_LOCATE: "locate",
    DEVICE_TYPE_COMPOSITE: "composite",
    DEVICE_TYPE_CIMFS: "cimfs",
}


@dataclass(frozen=True)
class Device:
    """Base of the device kinds; ``options`` is the additional-options object (or zero)."""

    options: uuid.UUID


@dataclass(frozen=True)
class BootDevice(Device):
    pass


@dataclass(frozen=True)
class GptPartition(Device):
    disk: uuid.UUID
    partition: uuid.UUID


@dataclass(frozen=True)
class MbrPartition(Device):
    signature: int
    offset: int


@dataclass(frozen=True)
class VmbusDevice(Device):
    instance: uuid.UUID
    interface_type: uuid.UUID = VMBUS_INTERFACE_TYPE


@dataclass(frozen=True)
class CompositeDevice(Device):
    number: int


@dataclass(frozen=True)
class CimfsDevice(Device):
    volume: uuid.UUID


@dataclass(frozen=True)
class RawDevice(Device):
    """A record this module does not interpret; ``data`` is the whole element value."""

    data: bytes

    @property
    def device_type(self) -> int | None:
        if len(self.data) >= HEADER_AT + 4:
            return int(struct.unpack_from("<I", self.data, HEADER_AT)[0])
        return None


def _record(device_type: int, size: int, body: bytes, options: uuid.UUID) -> bytes:
    header = RECORD_HEADER.pack(device_type, 0, size, 0)
    payload = body.ljust(size - RECORD_HEADER.size, b"\0")
    return options.bytes_le + header + payload


def encode_device(device: Device) -> bytes:
    """The element value (REG_BINARY data) for a device."""
    if isinstance(device, RawDevice):
        return device.data
    if isinstance(device, BootDevice):
        return _record(DEVICE_TYPE_BOOT, BOOT_RECORD_SIZE, b"", device.options)
    if isinstance(device, GptPartition):
        # 0x20 partition GUID, 0x30 block I/O type (0), 0x34 style, 0x38 disk GUID
        body = device.partition.bytes_le + struct.pack("<II", 0, PARTITION_STYLE_GPT)
        body += device.disk.bytes_le
        return _record(DEVICE_TYPE_PARTITION, PARTITION_RECORD_SIZE, body, device.options)
    if isinstance(device, MbrPartition):
        body = struct.pack("<Q8xII", device.offset, 0, PARTITION_STYLE_MBR)
        body += struct.pack("<I", device.signature)
        return _record(DEVICE_TYPE_PARTITION, PARTITION_RECORD_SIZE, body, device.options)
    if isinstance(device, VmbusDevice):
        body = device.interface_type.bytes_le + device.instance.bytes_le
        return _record(DEVICE_TYPE_VMBUS, VMBUS_RECORD_SIZE, body, device.options)
    if isinstance(device, CompositeDevice):
        # 0x20 signature GUID (zero), 0x30 version, 0x34/0x38 device offsets (zero)
        body = ZERO_GUID.bytes_le + struct.pack("<III", device.number, 0, 0)
        return _record(DEVICE_TYPE_COMPOSITE, COMPOSITE_RECORD_SIZE, body, device.options)
    if isinstance(device, CimfsDevice):
        # 0x20 version, 0x24 parent offset, 0x28 root path offset, 0x2c length, 0x30 volume
        body = struct.pack("<IIII", CIMFS_VERSION, 0, 0, 0) + device.volume.bytes_le
        return _record(DEVICE_TYPE_CIMFS, CIMFS_RECORD_SIZE, body, device.options)
    raise TypeError(f"unknown device {device!r}")


def decode_device(data: bytes) -> Device:
    """The device in an element value; records we do not know stay a RawDevice."""
    raw = RawDevice(ZERO_GUID, bytes(data))
    if len(data) < HEADER_AT + RECORD_HEADER.size:
        return raw
    options = uuid.UUID(bytes_le=bytes(data[:OPTIONS_SIZE]))
    raw = RawDevice(options, bytes(data))
    device_type, _flags, size, _reserved = RECORD_HEADER.unpack_from(data, HEADER_AT)
    body = bytes(data[HEADER_AT + RECORD_HEADER.size : HEADER_AT + size])
    if size < RECORD_HEADER.size or HEADER_AT + size > len(data):
        return raw
    decoded: Device | None = None
    if device_type == DEVICE_TYPE_BOOT and not any(body):
        decoded = BootDevice(options)
    elif device_type == DEVICE_TYPE_PARTITION and len(body) >= 0x28:
        _io_type, style = struct.unpack_from("<II", body, 0x10)
        if style == PARTITION_STYLE_GPT:
            decoded = GptPartition(
                options,
                disk=uuid.UUID(bytes_le=body[0x18:0x28]),
                partition=uuid.UUID(bytes_le=body[0:16]),
            )
        elif style == PARTITION_STYLE_MBR:
            (offset,) = struct.unpack_from("<Q", body, 0)
            (signature,) = struct.unpack_from("<I", body, 0x18)
            decoded = MbrPartition(options, signature=signature, offset=offset)
    elif device_type == DEVICE_TYPE_VMBUS and len(body) >= 32:
        decoded = VmbusDevice(
            options,
            instance=uuid.UUID(bytes_le=body[16:32]),
            interface_type=uuid.UUID(bytes_le=body[0:16]),
        )
    elif device_type == DEVICE_TYPE_COMPOSITE and len(body) >= 28:
        number, primary, secondary = struct.unpack_from("<III", body, 16)
        if not any(body[0:16]) and primary == 0 and secondary == 0:
            decoded = CompositeDevice(options, number)
    elif device_type == DEVICE_TYPE_CIMFS and len(body) >= 32:
        version, parent, root, length = struct.unpack_from("<IIII", body, 0)
        if version == CIMFS_VERSION and parent == root == length == 0:
            decoded = CimfsDevice(options, volume=uuid.UUID(bytes_le=body[16:32]))
    if decoded is None or encode_device(decoded) != bytes(data):
        return raw  # anything we would not write back byte for byte stays raw
    return decoded


def braced(guid: uuid.UUID) -> str:
    return "{" + str(guid) + "}"


def format_device(device: Device, show_object: Callable[[uuid.UUID], str] = braced) -> str:
    """bcdedit-style text for a device; ``show_object`` names options objects (aliases)."""
    name = show_object

    if isinstance(device, BootDevice):
        text = "boot"
    elif isinstance(device, GptPartition):
        text = f"gpt_partition={braced(device.disk)};{braced(device.partition)}"
    elif isinstance(device, MbrPartition):
        text = f"mbr_partition={device.signature:#010x};{device.offset}"
    elif isinstance(device, VmbusDevice):
        text = f"vmbus={braced(device.instance)}"
    elif isinstance(device, CompositeDevice):
        return f"composite={device.number},{name(device.options)}"
    elif isinstance(device, CimfsDevice):
        return f"cimfs={braced(device.volume)},{name(device.options)}"
    else:
        assert isinstance(device, RawDevice)
        return "hex:" + device.data.hex()
    if device.options != ZERO_GUID:
        text += "," + name(device.options)
    return text


_GUID = r"\{[0-9a-fA-F-]{36}\}"


def parse_device(text: str, resolve: dict[str, uuid.UUID] | None = None) -> Device:
    """A device from bcdedit-style text; ``resolve`` maps aliases such as ``{bootmgr}``."""
    resolve = resolve or {}
    spec = text.strip()

    def guid(token: str) -> uuid.UUID:
        token = token.strip()
        if token.lower() in resolve:
            return resolve[token.lower()]
        if not re.fullmatch(_GUID, token):
            raise FormatError(f"{token!r} is not a {{GUID}}")
        return uuid.UUID(token[1:-1])

    lower = spec.lower()
    if lower.startswith("hex:"):
        from cimsnap.formats.regf.values import parse_hex

        return RawDevice(ZERO_GUID, parse_hex(spec[4:]))
    head, _sep, options_text = spec.partition(",")
    kind, eq, argument = head.partition("=")
    kind = kind.strip().lower()
    if kind == "composite" and eq:
        if not options_text:
            raise FormatError("composite= needs ',{options object}' after the number")
        try:
            number = int(argument.strip(), 0)
        except ValueError:
            raise FormatError(f"composite={argument}: not a number") from None
        if not 0 <= number <= 0xFFFFFFFF:
            raise FormatError(f"composite={argument}: out of range")
        return CompositeDevice(guid(options_text), number)
    if kind == "cimfs" and eq:
        if not options_text:
            raise FormatError("cimfs= needs ',{options object}' after the volume GUID")
        return CimfsDevice(guid(options_text), volume=guid(argument))
    options = guid(options_text) if options_text else ZERO_GUID
    if kind == "boot" and not eq:
        return BootDevice(options)
    if kind == "vmbus" and eq:
        return VmbusDevice(options, instance=guid(argument))
    if kind in ("gpt_partition", "partition", "mbr_partition") and eq:
        first, semi, second = argument.partition(";")
        if not semi:
            raise FormatError(f"{kind}= needs two parts separated by ';'")
        if kind != "mbr_partition" and re.fullmatch(_GUID, first.strip()):
            return GptPartition(options, disk=guid(first), partition=guid(second))
        if kind != "gpt_partition":
            try:
                signature = int(first.strip(), 16)
                offset = int(second.strip(), 0)
            except ValueError:
                raise FormatError(f"{text!r}: expected SIGNATURE(hex);OFFSET") from None
            if not (0 <= signature <= 0xFFFFFFFF and 0 <= offset < 1 << 64):
                raise FormatError(f"{text!r}: value out of range")
            return MbrPartition(options, signature=signature, offset=offset)
        raise FormatError(f"{text!r}: expected gpt_partition={{disk}};{{partition}}")
    raise FormatError(
        f"unsupported device {text!r}: use boot, gpt_partition={{disk}};{{partition}}, "
        "mbr_partition=SIG;OFFSET, vmbus={guid}, composite=N,{options}, cimfs={volume},{options}"
        " or hex:..."
    )
