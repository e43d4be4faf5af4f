"""Windows registry hives (regf): read, recover, edit, create, merge, export.

Spec: Maxim Suhanov, "Windows registry file format specification" (msuhanov/regf); see the
module docstrings for the sections each module implements.

API (what other packages call)::

    from cimsnap.formats.regf import Hive, RegType, merge_hives

    hive = Hive.create(root_name="ROOT")            # a new hive, no template file
    hive = Hive.open(path)                           # applies .LOG1/.LOG2/.LOG when dirty
    key = hive.key(r"ControlSet001\\Services")       # case-insensitive; NotFoundError if absent
    key.subkeys(); key.values(); key.value("Start").decoded()
    hive.create_key(r"A\\B")                         # creates missing parents
    hive.set_value(r"A\\B", "Name", RegType.REG_SZ, "text")   # creates the key if missing
    hive.set_value(r"A", "", RegType.REG_DWORD, 1)   # "" is the default value
    hive.delete_value(r"A\\B", "Name"); hive.delete_key(r"A\\B")
    hive.save(path)                                  # temp file + fsync + rename
    merge_hives(base_path, delta_path, out_path)     # offreg ORMergeHives + ORSaveHive

Values take bytes, or str (REG_SZ/REG_EXPAND_SZ/REG_LINK), list[str] (REG_MULTI_SZ) and int
(REG_DWORD/REG_DWORD_BIG_ENDIAN/REG_QWORD).  Layered keys of differencing hives are exposed as
``Key.layer_semantics`` / ``Key.inherit_class`` and ``Value.is_tombstone``.  Malformed input
raises :class:`RegfError` (a :class:`cimsnap.errors.FormatError`) naming the file and offset.
"""

from .cells import RegfError
from .hive import Hive, write_atomically
from .merge import merge_hives, merge_into
from .records import Key, Value, filetime_to_datetime
from .structures import LayerSemantics, RegType, parse_type, type_name

__all__ = [
    "Hive",
    "Key",
    "LayerSemantics",
    "RegType",
    "RegfError",
    "Value",
    "filetime_to_datetime",
    "merge_hives",
    "merge_into",
    "parse_type",
    "type_name",
    "write_atomically",
]
