"""Property-based tests: random writes, grows and chain depths against an in-memory model."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cimsnap.formats.vhdx import check, create, create_differencing, open_disk

MiB = 1 << 20

_op = st.one_of(
    st.tuples(st.just("write"), st.floats(0, 1), st.integers(1, 3 * MiB), st.integers(0, 1 << 30)),
    st.tuples(st.just("zero"), st.floats(0, 1), st.integers(1, 2 * MiB), st.just(0)),
    st.tuples(st.just("reopen"), st.just(0.0), st.just(0), st.just(0)),
    st.tuples(st.just("grow"), st.floats(0, 1), st.integers(1, 3 * MiB), st.just(0)),
    st.tuples(st.just("child"), st.just(0.0), st.sampled_from([1, 2, 4]), st.just(0)),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size_blocks=st.integers(1, 6),
    tail=st.sampled_from([0, 1, 7]),
    block_mib=st.sampled_from([1, 2]),
    lss=st.sampled_from([512, 4096]),
    ops=st.lists(_op, min_size=1, max_size=12),
)
def test_engine_matches_model(
    size_blocks: int,
    tail: int,
    block_mib: int,
    lss: int,
    ops: list[tuple[str, float, int, int]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _run(Path(tmp), size_blocks * MiB + tail * lss, block_mib * MiB, lss, ops)


def _run(
    tmp: Path, size: int, block_size: int, lss: int, ops: list[tuple[str, float, int, int]]
) -> None:
    path = tmp / "d0.vhdx"
    create(path, size, block_size=block_size, logical_sector_size=lss)
    model = bytearray(size)
    depth = 0
    disk = open_disk(path, writable=True)
    try:
        for kind, where, amount, seed in ops:
            if kind in ("write", "zero"):
                length = min(amount, len(model))
                offset = int(where * (len(model) - length))
                data = random.Random(seed).randbytes(length) if kind == "write" else bytes(length)
                disk.write_at(offset, data)
                model[offset : offset + length] = data
            elif kind == "reopen":
                disk.close()
                disk = open_disk(path, writable=True)
            elif kind == "grow":
                new_size = len(model) + amount // lss * lss
                disk.resize(new_size)
                model.extend(bytes(new_size - len(model)))
            elif kind == "child" and depth < 3:
                disk.close()
                depth += 1
                child = tmp / f"d{depth}.vhdx"
                create_differencing(child, path, block_size=amount * MiB)
                path = child
                disk = open_disk(path, writable=True)
            assert disk.size == len(model)
        assert disk.read_at(0, len(model)) == model
    finally:
        disk.close()
    check(path)
    with open_disk(path) as reopened:
        assert reopened.read_at(0, len(model)) == model
