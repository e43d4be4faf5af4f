"""Build message classes from a compiled ``.proto`` at import time (used by ``*_pb2.py``).

Only long-stable public protobuf APIs are used (descriptor pool, ``message_factory``), so the
generated modules load under any protobuf runtime from 5.26 on, unlike protoc's own gencode,
which refuses runtimes older than the protoc that made it.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory


def load_file(serialized: bytes) -> Any:
    """Add a serialized ``FileDescriptorProto`` to the default pool (once); its descriptor.

    Its imports must already be in the pool (import their ``*_pb2`` modules first).
    """
    pool = descriptor_pool.Default()
    name = descriptor_pb2.FileDescriptorProto.FromString(serialized).name
    try:
        return pool.FindFileByName(name)
    except KeyError:
        pool.AddSerializedFile(serialized)
        return pool.FindFileByName(name)


def message_class(file_descriptor: Any, name: str) -> Any:
    """The generated class of top-level message ``name`` of ``file_descriptor``."""
    return message_factory.GetMessageClass(file_descriptor.message_types_by_name[name])


def enum_values(file_descriptor: Any, name: str) -> dict[str, int]:
    """Name -> number of top-level enum ``name``."""
    return {v.name: v.number for v in file_descriptor.enum_types_by_name[name].values}
