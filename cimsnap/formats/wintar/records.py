"""The Windows-specific facts of the layer tar format, in one place.

Sources: go-winio backuptar/tar.go (BasicInfoHeader, WriteTarFileFromBackupStream,
FileInfoFromHeader, SecurityDescriptorFromTarHeader, ExtendedAttributesFromTarHeader,
EncodeReparsePointFromTarHeader) and hcsshim pkg/ociwclayer (export.go, import.go,
cim/import.go), which write and read these tars on Windows.
"""

from __future__ import annotations

# PAX records of go-winio's backuptar.
PAX_FILE_ATTRIBUTES = "MSWINDOWS.fileattr"  # decimal FILE_ATTRIBUTE_* flags
PAX_RAW_SD = "MSWINDOWS.rawsd"  # base64 of a self-relative security descriptor
PAX_SDDL_SD = "MSWINDOWS.sd"  # older form: SDDL text (read only when rawsd is absent)
PAX_MOUNT_POINT = "MSWINDOWS.mountpoint"  # present on a symlink entry that is a junction
PAX_EA_PREFIX = "MSWINDOWS.xattr."  # + EA name: base64 of the EA value
PAX_CREATION_TIME = "LIBARCHIVE.creationtime"  # PAX time string
MOUNT_POINT_VALUE = "1"  # what backuptar writes for PAX_MOUNT_POINT

# Whiteouts (hcsshim ociwclayer.WhiteoutPrefix): ".wh.<name>" removes <name> from the parents.
WHITEOUT_PREFIX = ".wh."
# The overlay opaque-directory marker.  hcsshim has no special case for it: it would "remove"
# a child literally named ".wh..opq", which does not exist; we report it as its own kind.
OPAQUE_WHITEOUT = ".wh..wh..opq"
# Other ".wh..wh." names are AUFS bookkeeping that has no meaning in a Windows layer.
AUFS_META_PREFIX = ".wh..wh."

# FILE_ATTRIBUTE_* (MS-FSCC 2.6).
FILE_ATTRIBUTE_READONLY = 0x00000001
FILE_ATTRIBUTE_HIDDEN = 0x00000002
FILE_ATTRIBUTE_SYSTEM = 0x00000004
FILE_ATTRIBUTE_DIRECTORY = 0x00000010
FILE_ATTRIBUTE_ARCHIVE = 0x00000020
FILE_ATTRIBUTE_NORMAL = 0x00000080
FILE_ATTRIBUTE_SPARSE_FILE = 0x00000200
FILE_ATTRIBUTE_REPARSE_POINT = 0x00000400
FILE_ATTRIBUTE_COMPRESSED = 0x00000800

# Unix mode bits backuptar puts in tar headers (c_ISDIR, c_ISREG, c_ISLNK); hard links get 0644
# (ociwclayer export.go), whiteouts and stream entries nothing / their file's mode.
MODE_DIRECTORY = 0o040000
MODE_REGULAR = 0o100000
MODE_SYMLINK = 0o120000
MODE_HARDLINK = 0o644
