"""BAT geometry of a VHDX disk ([MS-VHDX] 2.5): blocks, chunks and where their entries live.

Payload entries and sector-bitmap entries are interleaved: after every ``chunk_ratio`` payload
entries comes the entry of the sector bitmap block that describes those blocks' sectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from cimsnap.formats.vhdx.structs import BAT_ENTRY_SIZE, REGION_ALIGNMENT, SECTORS_PER_CHUNK


def align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


@dataclass(frozen=True)
class Geometry:
    virtual_size: int
    block_size: int
    logical_sector_size: int
    has_parent: bool

    @cached_property
    def chunk_ratio(self) -> int:
        """Payload blocks described by one sector bitmap block."""
        return SECTORS_PER_CHUNK * self.logical_sector_size // self.block_size

    @cached_property
    def sectors_per_block(self) -> int:
        return self.block_size // self.logical_sector_size

    @cached_property
    def data_blocks(self) -> int:
        return -(-self.virtual_size // self.block_size)

    @cached_property
    def bitmap_blocks(self) -> int:
        return -(-self.data_blocks // self.chunk_ratio)

    @cached_property
    def bat_entries(self) -> int:
        """Total BAT entries (2.5: differencing disks cover every chunk's bitmap entry)."""
        if self.has_parent:
            return self.bitmap_blocks * (self.chunk_ratio + 1)
        if self.data_blocks == 0:
            return 0
        return self.data_blocks + (self.data_blocks - 1) // self.chunk_ratio

    @cached_property
    def bat_bytes(self) -> int:
        return self.bat_entries * BAT_ENTRY_SIZE

    @cached_property
    def bat_region_length(self) -> int:
        return max(REGION_ALIGNMENT, align_up(self.bat_bytes, REGION_ALIGNMENT))

    def payload_index(self, block: int) -> int:
        return block + block // self.chunk_ratio

    def bitmap_index(self, chunk: int) -> int:
        return chunk * (self.chunk_ratio + 1) + self.chunk_ratio

    def is_bitmap_index(self, index: int) -> bool:
        return index % (self.chunk_ratio + 1) == self.chunk_ratio

    def block_of_index(self, index: int) -> int:
        """The payload block of a payload entry index."""
        return index - index // (self.chunk_ratio + 1)

    def bitmap_bytes_per_block(self) -> int:
        return self.sectors_per_block // 8
