"""CimFS images: read, write, fork, destroy (docstring completed with the API below)."""

from cimsnap.formats.cim.destroy import dependent_forks, destroy_image
from cimsnap.formats.cim.errors import CimFormatError
from cimsnap.formats.cim.metadata import ExtendedAttribute, FileMetadata, decode_eas, encode_eas
from cimsnap.formats.cim.reader import CimDirEntry, CimFile, CimImage, CimStat, CimUsage, StreamInfo
from cimsnap.formats.cim.writer import CimWriter

__all__ = [
    "CimDirEntry",
    "CimFile",
    "CimFormatError",
    "CimImage",
    "CimStat",
    "CimUsage",
    "CimWriter",
    "ExtendedAttribute",
    "FileMetadata",
    "StreamInfo",
    "decode_eas",
    "dependent_forks",
    "destroy_image",
    "encode_eas",
]
