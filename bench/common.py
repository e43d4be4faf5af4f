"""Shared benchmark helpers: timing, a readable table and the final ``BENCH {json}`` line."""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Callable, Sequence
from typing import Any


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Run ``fn`` once; return (seconds, result)."""
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def percentile(samples: Sequence[float], p: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def allocated_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes the filesystem really stores for a file (sparse-aware)."""
    return os.stat(path).st_blocks * 512


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        print(
            "  ".join(
                c.rjust(w) if n and i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def bench_line(
    metric: str,
    value: float,
    unit: str,
    *,
    baseline: float | None = None,
    goal: str = "",
    met: bool | None = None,
) -> None:
    """The machine-readable summary line every benchmark ends with."""
    ratio = (value / baseline) if baseline else None
    print(
        "BENCH "
        + json.dumps(
            {
                "metric": metric,
                "value": value,
                "unit": unit,
                "baseline": baseline,
                "ratio": ratio,
                "goal": goal,
                "met": met,
            },
            sort_keys=True,
        )
    )
