"""Run every benchmark (``python -m bench``) or the ones named (``python -m bench vhdx cim``).

Each ``bench/bench_<name>.py`` has ``main() -> None`` that prints its table and ``BENCH`` lines.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import bench


def main(argv: list[str]) -> int:
    names = sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules(bench.__path__)
        if m.name.startswith("bench_")
    )
    chosen = argv or names
    unknown = set(chosen) - set(names)
    if unknown:
        print(f"unknown benchmark(s): {', '.join(sorted(unknown))}; have: {', '.join(names)}")
        return 2
    for name in chosen:
        print(f"=== bench {name} ===", flush=True)
        importlib.import_module(f"bench.bench_{name}").main()
    return 0


raise SystemExit(main(sys.argv[1:]))
