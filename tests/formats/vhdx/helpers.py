"""Shared helpers for the VHDX tests: deterministic data, write models, external tools."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

from cimsnap.formats.vhdx import VhdxDisk


def pattern(seed: int, length: int) -> bytes:
    """Deterministic random bytes (no zero runs that could hide a wrong read)."""
    return random.Random(seed).randbytes(length)


def random_writes(
    disk: VhdxDisk, model: bytearray, rng: random.Random, count: int, max_len: int
) -> None:
    """``count`` writes of random ranges to ``disk``, mirrored in ``model``."""
    size = len(model)
    for _ in range(count):
        length = rng.randrange(1, max_len)
        offset = rng.randrange(0, size - length)
        data = pattern(rng.randrange(1 << 30), length)
        disk.write_at(offset, data)
        model[offset : offset + length] = data


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run an external tool, capturing output (never raises on failure)."""
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120)


def qemu_raw(image: Path, out: Path) -> bytes:
    """The virtual disk of ``image`` as qemu-img reads it."""
    proc = run("qemu-img", "convert", "-O", "raw", image, out)
    assert proc.returncode == 0, proc.stderr
    return out.read_bytes()
