"""Independent registry readers used as test oracles, each reduced to one comparable shape.

Every function returns ``{key path: {value name: (type, data)}}`` where the key path is the
backslash path below the root ("" for the root) and ``data`` is raw bytes when the reader gives
raw bytes (hivex, dissect.regf) and the decoded value otherwise (python-registry, regipy).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from cimsnap.formats.regf import Hive

Tree = dict[str, dict[str, tuple[int, Any]]]
DEFAULT_NAMES = {"(default)"}

# The system python has python3-hivex (Debian); it prints the tree as JSON with hex data.
_HIVEX_DUMP = r"""
import hivex, json, sys
h = hivex.Hivex(sys.argv[1])
out = {}
stack = [(h.root(), "")]
while stack:
    node, path = stack.pop()
    values = {}
    for v in h.node_values(node):
        vtype, data = h.value_value(v)
        values[h.value_key(v)] = [vtype, data.hex()]
    out[path] = values
    for child in h.node_children(node):
        name = h.node_name(child)
        stack.append((child, path + "\\" + name if path else name))
json.dump(out, sys.stdout)
"""


def cimsnap_raw(path: Path) -> Tree:
    hive = Hive.open(path)
    return {key.path: {v.name: (v.type, v.data) for v in key.values()} for key in hive.walk()}


def cimsnap_decoded(path: Path) -> Tree:
    hive = Hive.open(path)
    return {key.path: {v.name: (v.type, v.decoded()) for v in key.values()} for key in hive.walk()}


def hivex_tree(path: Path) -> Tree:
    proc = subprocess.run(
        ["/usr/bin/python3", "-c", _HIVEX_DUMP, str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    raw = json.loads(proc.stdout)
    return {
        key: {name: (int(t), bytes.fromhex(d)) for name, (t, d) in values.items()}
        for key, values in raw.items()
    }


def dissect_tree(path: Path) -> Tree:
    from dissect.regf import regf

    with path.open("rb") as fh:
        hive = regf.RegistryHive(fh)
        out: Tree = {}
        stack = [(hive.root(), "")]
        while stack:
            key, key_path = stack.pop()
            values = {}
            for value in key.values():
                name = "" if value.name.lower() in DEFAULT_NAMES else value.name
                values[name] = (int(value.type), bytes(value.data))
            out[key_path] = values
            for child in key.subkeys():
                stack.append((child, key_path + "\\" + child.name if key_path else child.name))
        return out


def python_registry_tree(path: Path) -> Tree:
    from Registry import Registry

    registry = Registry.Registry(str(path))
    out: Tree = {}
    stack = [(registry.root(), "")]
    while stack:
        key, key_path = stack.pop()
        values = {}
        for value in key.values():
            name = "" if value.name().lower() in DEFAULT_NAMES else value.name()
            decoded = value.value()
            if value.value_type() == Registry.RegMultiSZ:
                decoded = [item for item in decoded if item]  # it keeps the terminators
            values[name] = (value.value_type(), decoded)
        out[key_path] = values
        for child in key.subkeys():
            stack.append((child, key_path + "\\" + child.name() if key_path else child.name()))
    return out


def regipy_tree(path: Path) -> Tree:
    from regipy.registry import RegistryHive

    hive = RegistryHive(str(path))
    out: Tree = {}
    stack = [(hive.root, "")]
    while stack:
        key, key_path = stack.pop()
        values = {}
        for value in key.iter_values(trim_values=False):
            name = "" if value.name.lower() in DEFAULT_NAMES else value.name
            values[name] = (value.value_type, value.value)
        out[key_path] = values
        if key.header.subkey_count:
            for child in key.iter_subkeys():
                stack.append((child, key_path + "\\" + child.name if key_path else child.name))
    return out
