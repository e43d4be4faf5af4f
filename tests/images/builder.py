"""A realistic Windows container image, made from scratch for tests and benchmarks.

:class:`LayerSpec` is a list of layer operations (directories, files with security descriptors,
EAs and alternate streams, symlinks and junctions, hard links, whiteouts); ``tar()`` writes it as
hcsshim exports layers (:class:`~cimsnap.formats.wintar.WinTarWriter`, streams named
``<file>:<stream>:$DATA`` as hcsshim's CIM importer expects).

:func:`windows_image` builds a three-layer image shaped like a Windows Server image:

* base layer: ``Files\\Windows\\System32\\config\\{SYSTEM,SOFTWARE,SAM,SECURITY,DEFAULT}`` hives
  written by the regf engine, system files with Windows-like SDs, a WinSxS file hard-linked into
  System32, a junction and symlinks, an EA, an alternate data stream, and ``UtilityVM\\Files``
  with a BCD store (``{bootmgr}`` -> an OS loader), its own SYSTEM and SOFTWARE hives (build
  26100, newer than Server 2022, so CIM boot is set up), ``bootmgfw.efi`` and ``winload.efi``;
* second layer: ``Hives\\SOFTWARE_DELTA`` and ``Hives\\SYSTEM_DELTA`` (differencing hives with
  new keys, changed values, a tombstone value and a tombstone key), whiteouts of a file and of
  a directory tree, overwrites, new files with streams, a hard link to a base-layer file;
* third layer: another SOFTWARE delta (merged onto the second layer's merged hive), an
  overwrite and a whiteout of a second-layer file.

:func:`pack_oci_layout` stores layers as an OCI image layout (index, manifest, config with the
diff IDs, blobs uncompressed, gzip or zstd).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from cimsnap.formats.bcd import BcdStore
from cimsnap.formats.regf import Hive, LayerSemantics, RegType
from cimsnap.formats.wintar import (
    ExtendedAttribute,
    FileTimes,
    WinMetadata,
    WinTarWriter,
    sddl_to_sd,
)

T0 = 133_500_000_000_000_000  # a FILETIME in 2024
DIR = 0x10
ARCHIVE = 0x20
HIDDEN_SYSTEM = 0x2 | 0x4
READONLY = 0x1

SD_SYSTEM_DIR = sddl_to_sd(
    "O:S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464"
    "G:S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464"
    "D:PAI(A;OICIIO;GA;;;CO)(A;OICIIO;GA;;;SY)(A;;0x1301bf;;;SY)(A;OICIIO;GA;;;BA)"
    "(A;;0x1301bf;;;BA)(A;OICIIO;GXGR;;;BU)(A;;0x1200a9;;;BU)(A;CIIO;GA;;;S-1-3-0)"
)
SD_SYSTEM_FILE = sddl_to_sd(
    "O:S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464"
    "G:S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464"
    "D:PAI(A;;FA;;;S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464)"
    "(A;;0x1200a9;;;BA)(A;;0x1200a9;;;SY)(A;;0x1200a9;;;BU)"
)
SD_USER = sddl_to_sd("O:BAG:SYD:AI(A;OICIID;FA;;;SY)(A;OICIID;FA;;;BA)(A;OICIID;0x1200a9;;;BU)")
SD_HIVE = sddl_to_sd("O:BAG:SYD:PAI(A;;FA;;;SY)(A;;FA;;;BA)")

BOOTMGR = "{9dea862c-5cdd-4e70-acc1-f32b344d4795}"
UVM_LOADER = "{6a6c1f1b-59d4-11ea-9438-9402e6abd998}"
UVM_BUILD = "26100"


@dataclass
class Op:
    """One entry of a layer tar."""

    kind: str  # dir, file, symlink, link, whiteout, opaque
    path: str
    meta: WinMetadata | None = None
    data: bytes = b""
    streams: dict[str, bytes] = field(default_factory=dict)
    target: str | None = None
    mount_point: bool = False
    size: int | None = None  # for generated large files: data repeated to this size


def meta(
    attributes: int = ARCHIVE,
    sd: bytes | None = SD_USER,
    time: int = T0,
    eas: tuple[ExtendedAttribute, ...] = (),
) -> WinMetadata:
    return WinMetadata(attributes, FileTimes(time, time + 10, time + 20, time + 30), sd, eas)


@dataclass
class LayerSpec:
    """The operations of one layer, in tar order."""

    ops: list[Op] = field(default_factory=list)

    def dir(
        self, path: str, *, attributes: int = DIR, sd: bytes | None = SD_SYSTEM_DIR, time: int = T0
    ) -> LayerSpec:
        self.ops.append(Op("dir", path, meta(attributes | DIR, sd, time)))
        return self

    def file(
        self,
        path: str,
        data: bytes = b"",
        *,
        attributes: int = ARCHIVE,
        sd: bytes | None = SD_SYSTEM_FILE,
        time: int = T0,
        eas: tuple[ExtendedAttribute, ...] = (),
        streams: dict[str, bytes] | None = None,
        size: int | None = None,
    ) -> LayerSpec:
        self.ops.append(
            Op("file", path, meta(attributes, sd, time, eas), data, dict(streams or {}), size=size)
        )
        return self

    def symlink(
        self,
        path: str,
        target: str,
        *,
        mount_point: bool = False,
        directory: bool = False,
        time: int = T0,
    ) -> LayerSpec:
        attributes = (DIR if directory or mount_point else 0) | ARCHIVE
        self.ops.append(
            Op(
                "symlink",
                path,
                meta(attributes, SD_USER, time),
                target=target,
                mount_point=mount_point,
            )
        )
        return self

    def link(self, path: str, target: str) -> LayerSpec:
        self.ops.append(Op("link", path, meta(ARCHIVE, None), target=target))
        return self

    def whiteout(self, path: str) -> LayerSpec:
        self.ops.append(Op("whiteout", path))
        return self

    def opaque(self, directory: str) -> LayerSpec:
        self.ops.append(Op("opaque", directory))
        return self

    def write_tar(self, out: io.BufferedIOBase | io.BytesIO) -> None:
        with WinTarWriter(out, stream_data_suffix=True) as writer:  # type: ignore[arg-type]
            for op in self.ops:
                if op.kind == "dir":
                    assert op.meta is not None
                    writer.add_directory(op.path, op.meta)
                elif op.kind == "file":
                    assert op.meta is not None
                    if op.size is not None:
                        writer.add_file(op.path, op.meta, RepeatReader(op.data, op.size), op.size)
                    else:
                        writer.add_file(op.path, op.meta, op.data)
                    for name, stream in op.streams.items():
                        writer.add_stream(op.path, name, stream)
                elif op.kind == "symlink":
                    assert op.meta is not None and op.target is not None
                    writer.add_symlink(op.path, op.meta, op.target, mount_point=op.mount_point)
                elif op.kind == "link":
                    assert op.meta is not None and op.target is not None
                    writer.add_hardlink(op.path, op.target, op.meta)
                elif op.kind == "whiteout":
                    writer.add_whiteout(op.path)
                else:
                    writer.add_opaque_whiteout(op.path)

    def tar(self) -> bytes:
        out = io.BytesIO()
        self.write_tar(out)
        return out.getvalue()


class RepeatReader(io.RawIOBase):
    """``size`` bytes made of ``pattern`` repeated (a large file without the memory)."""

    def __init__(self, pattern: bytes, size: int) -> None:
        super().__init__()
        self.pattern = pattern or b"\0"
        self.remaining = size
        self.offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        n = min(len(view), self.remaining)
        done = 0
        while done < n:
            start = self.offset % len(self.pattern)
            chunk = self.pattern[start : start + n - done]
            view[done : done + len(chunk)] = chunk
            done += len(chunk)
            self.offset += len(chunk)
        self.remaining -= n
        return n


# --- registry content ---------------------------------------------------------------------------


def hive_bytes(
    root: str, values: list[tuple[str, str, int, object]], keys: list[str] = ()
) -> bytes:  # type: ignore[assignment]
    hive = Hive.create(root_name=root)
    for key in keys:
        hive.create_key(key)
    for key, name, value_type, data in values:
        hive.set_value(key, name, value_type, data)  # type: ignore[arg-type]
    return bytes(hive.to_bytes())


def system_hive() -> bytes:
    return hive_bytes(
        "SYSTEM",
        [
            ("Select", "Current", RegType.REG_DWORD, 1),
            ("ControlSet001\\Control", "SystemStartOptions", RegType.REG_SZ, ""),
            (
                "ControlSet001\\Control\\ComputerName\\ComputerName",
                "ComputerName",
                RegType.REG_SZ,
                "CONTAINER",
            ),
            ("ControlSet001\\Services\\wcifs", "Start", RegType.REG_DWORD, 2),
            ("ControlSet001\\Services\\Tcpip\\Parameters", "Hostname", RegType.REG_SZ, "box"),
            ("ControlSet001\\Services\\Legacy", "Start", RegType.REG_DWORD, 3),
        ],
    )


def software_hive(build: str = "20348", product: str = "Windows Server 2022 Datacenter") -> bytes:
    return hive_bytes(
        "SOFTWARE",
        [
            ("Microsoft\\Windows NT\\CurrentVersion", "CurrentBuild", RegType.REG_SZ, build),
            ("Microsoft\\Windows NT\\CurrentVersion", "ProductName", RegType.REG_SZ, product),
            (
                "Microsoft\\Windows NT\\CurrentVersion",
                "EditionID",
                RegType.REG_SZ,
                "ServerDatacenter",
            ),
            (
                "Microsoft\\Windows\\CurrentVersion",
                "ProgramFilesDir",
                RegType.REG_SZ,
                "C:\\Program Files",
            ),
            ("Microsoft\\Obsolete\\Sub", "Old", RegType.REG_DWORD, 7),
            ("Classes\\.txt", "", RegType.REG_SZ, "txtfile"),
        ],
    )


def small_hive(root: str, key: str) -> bytes:
    return hive_bytes(root, [(key, "Marker", RegType.REG_SZ, root.lower())])


def software_delta_1() -> bytes:
    """Layer 2's SOFTWARE delta: adds keys, changes a value, tombstones a value and a key."""
    hive = Hive.create(root_name="SOFTWARE", layered=True)
    hive.set_value("Microsoft\\Cimsnap", "Added", RegType.REG_SZ, "by layer 2")
    hive.set_value("Microsoft\\Cimsnap\\Deep\\Er", "Count", RegType.REG_DWORD, 42)
    hive.set_value(
        "Microsoft\\Windows NT\\CurrentVersion",
        "ProductName",
        RegType.REG_SZ,
        "Windows Server 2022 Datacenter (layered)",
    )
    current = hive.create_key("Microsoft\\Windows NT\\CurrentVersion")
    hive.set_value_tombstone(current, "EditionID")
    obsolete = hive.create_key("Microsoft\\Obsolete")
    hive.set_layer_semantics(obsolete, LayerSemantics.TOMBSTONE)
    return bytes(hive.to_bytes())


def system_delta_1() -> bytes:
    hive = Hive.create(root_name="SYSTEM", layered=True)
    hive.set_value("ControlSet001\\Services\\MyService", "Start", RegType.REG_DWORD, 2)
    hive.set_value(
        "ControlSet001\\Services\\MyService",
        "ImagePath",
        RegType.REG_EXPAND_SZ,
        "%SystemRoot%\\app\\svc.exe",
    )
    legacy = hive.create_key("ControlSet001\\Services\\Legacy")
    hive.set_layer_semantics(legacy, LayerSemantics.TOMBSTONE)
    return bytes(hive.to_bytes())


def software_delta_2() -> bytes:
    hive = Hive.create(root_name="SOFTWARE", layered=True)
    hive.set_value("Microsoft\\Cimsnap", "Layer3", RegType.REG_DWORD, 3)
    cimsnap_key = hive.create_key("Microsoft\\Cimsnap")
    hive.set_value_tombstone(cimsnap_key, "Added")
    return bytes(hive.to_bytes())


def uvm_bcd() -> bytes:
    """A utility VM boot store: {bootmgr} whose default is a Windows OS loader."""
    store = BcdStore.create()
    store.create_object(BOOTMGR, "Windows Boot Manager")
    store.create_object(UVM_LOADER, "Windows UVM", "osloader")
    store.set_element(BOOTMGR, "default", UVM_LOADER)
    store.set_element(BOOTMGR, "displayorder", [UVM_LOADER])
    store.set_element(BOOTMGR, "timeout", "0")
    store.set_element(UVM_LOADER, "device", "boot")
    store.set_element(UVM_LOADER, "osdevice", "boot")
    store.set_element(UVM_LOADER, "path", "\\Windows\\system32\\winload.efi")
    store.set_element(UVM_LOADER, "systemroot", "\\Windows")
    return bytes(store.hive.to_bytes())


def uvm_system_hive() -> bytes:
    return hive_bytes(
        "SYSTEM",
        [
            ("Select", "Current", RegType.REG_DWORD, 1),
            ("ControlSet001\\Control", "WaitToKillServiceTimeout", RegType.REG_SZ, "5000"),
            ("ControlSet001\\Services\\wcifs", "Start", RegType.REG_DWORD, 2),
            ("ControlSet001\\Services\\UnionFS", "Start", RegType.REG_DWORD, 3),
        ],
    )


# --- the image ----------------------------------------------------------------------------------


def blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


CONFIG = "Files\\Windows\\System32\\config"


def base_layer(*, uvm: bool = True, uvm_build: str = UVM_BUILD) -> LayerSpec:
    layer = LayerSpec()
    layer.dir("Files")
    for d in (
        "Files\\Windows",
        "Files\\Windows\\System32",
        CONFIG,
        "Files\\Windows\\System32\\drivers",
        "Files\\Windows\\System32\\drivers\\etc",
        "Files\\Windows\\WinSxS",
        "Files\\Windows\\WinSxS\\amd64_hosts_31bf3856ad364e35",
        "Files\\ProgramData",
        "Files\\Temp",
        "Files\\Temp\\cache",
        "Files\\Users",
        "Files\\Users\\Public",
    ):
        layer.dir(d)
    layer.file(f"{CONFIG}\\SYSTEM", system_hive(), sd=SD_HIVE)
    layer.file(f"{CONFIG}\\SOFTWARE", software_hive(), sd=SD_HIVE)
    layer.file(f"{CONFIG}\\SAM", small_hive("SAM", "SAM\\Domains\\Account"), sd=SD_HIVE)
    layer.file(f"{CONFIG}\\SECURITY", small_hive("SECURITY", "Policy\\Accounts"), sd=SD_HIVE)
    layer.file(f"{CONFIG}\\DEFAULT", small_hive("DEFAULT", "Control Panel\\Desktop"), sd=SD_HIVE)
    layer.file(f"{CONFIG}\\SYSTEM.LOG1", b"", attributes=ARCHIVE | HIDDEN_SYSTEM, sd=SD_HIVE)
    layer.file("Files\\Windows\\System32\\kernel32.dll", blob(1, 300_000))
    layer.file("Files\\Windows\\System32\\notepad.exe", blob(2, 70_000))
    layer.file("Files\\Windows\\System32\\small.dat", b"tiny file in the small-data region")
    layer.file("Files\\Windows\\System32\\empty.txt", b"")
    layer.file(
        "Files\\Windows\\System32\\ea.sys",
        blob(3, 5000),
        eas=(ExtendedAttribute("$KERNEL.PURGE.ESBCACHE", b"\x01\x02\x03\x04"),),
    )
    layer.file(
        "Files\\Windows\\WinSxS\\amd64_hosts_31bf3856ad364e35\\hosts",
        b"127.0.0.1 localhost\r\n",
    )
    layer.link(
        "Files\\Windows\\System32\\drivers\\etc\\hosts",
        "Files\\Windows\\WinSxS\\amd64_hosts_31bf3856ad364e35\\hosts",
    )
    layer.file(
        "Files\\Windows\\win.ini",
        b"; for 16-bit app support\r\n[fonts]\r\n",
        streams={"Zone.Identifier": b"[ZoneTransfer]\r\nZoneId=3\r\n"},
    )
    layer.file(
        "Files\\Windows\\System32\\hidden.sys",
        blob(4, 1500),
        attributes=ARCHIVE | HIDDEN_SYSTEM | READONLY,
    )
    layer.file("Files\\Temp\\cache\\a.tmp", blob(5, 2000), sd=SD_USER)
    layer.file("Files\\Temp\\cache\\b.tmp", blob(6, 3000), sd=SD_USER)
    layer.file("Files\\Users\\Public\\readme.txt", b"public\r\n", sd=SD_USER)
    layer.symlink("Files\\Users\\All Users", "C:\\ProgramData", directory=True)
    layer.symlink("Files\\Documents and Settings", "C:\\Users", mount_point=True)
    layer.symlink("Files\\Windows\\System32\\win.lnk", "..\\win.ini")
    if uvm:
        layer.dir("UtilityVM")
        layer.dir("UtilityVM\\Files")
        for d in (
            "UtilityVM\\Files\\EFI",
            "UtilityVM\\Files\\EFI\\Microsoft",
            "UtilityVM\\Files\\EFI\\Microsoft\\Boot",
            "UtilityVM\\Files\\Windows",
            "UtilityVM\\Files\\Windows\\System32",
            "UtilityVM\\Files\\Windows\\System32\\config",
        ):
            layer.dir(d)
        layer.file(
            "UtilityVM\\Files\\EFI\\Microsoft\\Boot\\BCD",
            uvm_bcd(),
            attributes=ARCHIVE | HIDDEN_SYSTEM,
            sd=SD_HIVE,
        )
        layer.file("UtilityVM\\Files\\EFI\\Microsoft\\Boot\\bootmgfw.efi", blob(7, 40_000))
        layer.file("UtilityVM\\Files\\Windows\\System32\\winload.efi", blob(8, 60_000))
        layer.file(
            "UtilityVM\\Files\\Windows\\System32\\config\\SYSTEM", uvm_system_hive(), sd=SD_HIVE
        )
        layer.file(
            "UtilityVM\\Files\\Windows\\System32\\config\\SOFTWARE",
            software_hive(build=uvm_build, product="Windows Server 2025 UVM"),
            sd=SD_HIVE,
        )
        layer.link(
            "UtilityVM\\Files\\Windows\\System32\\winload2.efi",
            "UtilityVM\\Files\\Windows\\System32\\winload.efi",
        )
    return layer


def second_layer() -> LayerSpec:
    layer = LayerSpec()
    layer.dir("Files")
    layer.dir("Hives", sd=SD_HIVE)
    layer.file("Hives\\SOFTWARE_DELTA", software_delta_1(), sd=SD_HIVE)
    layer.file("Hives\\SYSTEM_DELTA", system_delta_1(), sd=SD_HIVE)
    layer.whiteout("Files\\Windows\\System32\\notepad.exe")
    layer.whiteout("Files\\Temp")
    layer.file("Files\\Windows\\win.ini", b"; overwritten by layer 2\r\n", time=T0 + 10**9)
    layer.file("Files\\Windows\\System32\\kernel32.dll", blob(11, 310_000), time=T0 + 10**9)
    layer.dir("Files\\app", sd=SD_USER)
    layer.file(
        "Files\\app\\app.exe",
        blob(12, 120_000),
        sd=SD_USER,
        streams={"Zone.Identifier": b"[ZoneTransfer]\r\nZoneId=1\r\n", "extra": b"x" * 3000},
    )
    layer.file("Files\\app\\config.json", b'{"layer": 2}', sd=SD_USER)
    layer.link("Files\\app\\hosts", "Files\\Windows\\WinSxS\\amd64_hosts_31bf3856ad364e35\\hosts")
    layer.link("Files\\app\\app-copy.exe", "Files\\app\\app.exe")
    return layer


def third_layer() -> LayerSpec:
    layer = LayerSpec()
    layer.dir("Hives", sd=SD_HIVE)
    layer.file("Hives\\SOFTWARE_DELTA", software_delta_2(), sd=SD_HIVE)
    layer.file("Files\\app\\config.json", b'{"layer": 3}', sd=SD_USER, time=T0 + 2 * 10**9)
    layer.whiteout("Files\\app\\app-copy.exe")
    layer.file("Files\\Windows\\System32\\new-in-3.dll", blob(21, 9000))
    return layer


def windows_image() -> list[LayerSpec]:
    return [base_layer(), second_layer(), third_layer()]


# --- OCI image layout ---------------------------------------------------------------------------

MEDIA_TYPES = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, compresslevel=1, mtime=0)
    if compression == "zstd":
        import zstandard

        return bytes(zstandard.ZstdCompressor(level=1).compress(data))
    return data


def _put_blob(layout_dir: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    path = layout_dir / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return f"sha256:{digest}"


@dataclass
class PackedImage:
    layout_dir: Path
    ref: str
    manifest_digest: str
    config_digest: str
    layer_digests: list[str]
    diff_ids: list[str]
    chain_ids: list[str]


def chain_ids(diff_ids: list[str]) -> list[str]:
    out: list[str] = []
    for diff in diff_ids:
        if not out:
            out.append(diff)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff}".encode()).hexdigest())
    return out


def pack_oci_layout(
    layout_dir: Path,
    layers: list[bytes],
    *,
    ref: str = "example.com/windows/test:1",
    compression: list[str] | str = "gzip",
) -> PackedImage:
    """Write an OCI image layout holding one Windows image made of ``layers`` (tar bytes)."""
    layout_dir.mkdir(parents=True, exist_ok=True)
    (layout_dir / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    kinds = compression if isinstance(compression, list) else [compression] * len(layers)
    descriptors, digests, diff_ids = [], [], []
    for data, kind in zip(layers, kinds, strict=True):
        packed = compress(data, kind)
        digest = _put_blob(layout_dir, packed)
        digests.append(digest)
        diff_ids.append("sha256:" + hashlib.sha256(data).hexdigest())
        descriptors.append({"mediaType": MEDIA_TYPES[kind], "digest": digest, "size": len(packed)})
    config = {
        "architecture": "amd64",
        "os": "windows",
        "os.version": "10.0.26100.1",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "config": {"Cmd": ["cmd"]},
    }
    config_bytes = json.dumps(config).encode()
    config_digest = _put_blob(layout_dir, config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": len(config_bytes)},
        "layers": descriptors,
    }
    manifest_bytes = json.dumps(manifest).encode()
    manifest_digest = _put_blob(layout_dir, manifest_bytes)
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX_TYPE,
        "manifests": [
            {
                "mediaType": MANIFEST_TYPE,
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "platform": {"architecture": "amd64", "os": "windows"},
                "annotations": {"org.opencontainers.image.ref.name": ref},
            }
        ],
    }
    (layout_dir / "index.json").write_text(json.dumps(index))
    return PackedImage(
        layout_dir, ref, manifest_digest, config_digest, digests, diff_ids, chain_ids(diff_ids)
    )


def write_tar_file(path: Path, layer: LayerSpec) -> Path:
    with open(path, "wb") as out:
        layer.write_tar(out)
    return path


def random_bytes_file(path: Path, size: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "wb") as out:
        left = size
        while left:
            n = min(left, 1 << 20)
            out.write(rng.randbytes(n))
            left -= n


__all__ = [
    "LayerSpec",
    "Op",
    "PackedImage",
    "base_layer",
    "chain_ids",
    "pack_oci_layout",
    "second_layer",
    "third_layer",
    "windows_image",
    "write_tar_file",
]
