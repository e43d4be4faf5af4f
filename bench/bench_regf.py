"""Registry hives: open and walk a large hive with cimsnap, python-registry and regipy; merge.

The hive (default 100,000 keys; ``CIMSNAP_BENCH_REGF_KEYS`` changes it) is built by cimsnap's
writer: keys three levels deep, two values per key (REG_SZ, REG_DWORD) and a 200-byte REG_BINARY
on every tenth key.  Each reader opens the file and visits every key and every value's data.
Then a differencing hive of the same size (half of its keys override base keys, half are new,
with value and key tombstones) is merged into the base, as layer import does.

regipy slows down sharply on big hives (about 450 s for 100,000 keys on the 2-core test machine
against 2-3 s for cimsnap), so its walk stops after ``CIMSNAP_BENCH_REGF_REGIPY_SECONDS``
(default 90) and the table shows how far it got; the ratio is then a lower bound.

Run: ``python -m bench regf``.  Goal: cimsnap walks the hive faster than both other readers.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bench.common import bench_line, peak_rss_mib, print_table, timed
from cimsnap.formats.regf import Hive, LayerSemantics, RegType, merge_hives


def keys_wanted() -> int:
    return int(os.environ.get("CIMSNAP_BENCH_REGF_KEYS", "100000"))


def key_path(i: int) -> str:
    return f"Top{i % 100:03}\\Mid{(i // 100) % 10}\\Key{i}"


def build_base(path: Path, count: int) -> int:
    hive = Hive.create(root_name="BENCH")
    for i in range(count):
        key = hive.create_key(key_path(i))
        key.set_value("Name", RegType.REG_SZ, f"value number {i}")
        key.set_value("Count", RegType.REG_DWORD, i)
        if i % 10 == 0:
            key.set_value("Blob", RegType.REG_BINARY, bytes(range(200)))
    hive.save(path)
    return sum(1 for _ in Hive.open(path).walk())


def build_delta(path: Path, count: int) -> None:
    hive = Hive.create(root_name="DELTA", minor_version=6, layered=True)
    for i in range(count):
        index = i * 2 if i % 2 == 0 else count + i  # even: overrides a base key, odd: new
        key = hive.create_key(key_path(index))
        if i % 50 == 0 and index < count:
            hive.set_layer_semantics(key, LayerSemantics.TOMBSTONE)
            continue
        key.set_value("Name", RegType.REG_SZ, f"delta value {i}")
        if i % 7 == 0:
            hive.set_value_tombstone(key, "Count")
    hive.save(path)


def walk_cimsnap(path: Path) -> tuple[int, int]:
    hive = Hive.open(path)
    keys = values = 0
    for key in hive.walk():
        keys += 1
        for value in key.values():
            values += 1
            value.data  # noqa: B018 - reading the data is the point
    return keys, values


def walk_python_registry(path: Path) -> tuple[int, int]:
    from Registry import Registry

    registry = Registry.Registry(str(path))
    keys = values = 0
    stack = [registry.root()]
    while stack:
        key = stack.pop()
        keys += 1
        for value in key.values():
            values += 1
            value.raw_data()
        stack.extend(key.subkeys())
    return keys, values


def regipy_budget() -> float:
    return float(os.environ.get("CIMSNAP_BENCH_REGF_REGIPY_SECONDS", "90"))


def walk_regipy(path: Path) -> tuple[int, int]:
    from regipy.registry import RegistryHive

    deadline = time.perf_counter() + regipy_budget()
    hive = RegistryHive(str(path))
    keys = values = 0
    stack = [hive.root]
    while stack and time.perf_counter() < deadline:
        key = stack.pop()
        keys += 1
        for _value in key.iter_values(trim_values=False):
            values += 1
        if key.header.subkey_count:
            stack.extend(key.iter_subkeys())
    return keys, values


def main() -> None:
    count = keys_wanted()
    with tempfile.TemporaryDirectory(prefix="bench-regf-") as tmp:
        base = Path(tmp) / "BASE"
        delta = Path(tmp) / "DELTA"
        merged = Path(tmp) / "MERGED"
        build_seconds, total_keys = timed(lambda: build_base(base, count))
        build_delta(delta, count)
        size_mib = base.stat().st_size / 2**20
        print(f"hive: {total_keys} keys, {size_mib:.1f} MiB, built in {build_seconds:.1f} s")

        readers = [
            ("cimsnap", walk_cimsnap),
            ("python-registry", walk_python_registry),
            ("regipy", walk_regipy),
        ]
        results = {}
        for name, walk in readers:
            seconds, (keys, values) = timed(lambda walk=walk: walk(base))  # type: ignore[misc]
            results[name] = (seconds, keys, values)
        ours, all_keys, all_values = results["cimsnap"]
        rows = []
        lower_bound: dict[str, float] = {}
        for name, (seconds, keys, values) in results.items():
            if keys < all_keys:  # stopped at its time budget: extrapolate linearly, at least
                lower_bound[name] = seconds * all_keys / max(keys, 1)
                rows.append(
                    [
                        name,
                        f"> {seconds:.1f} (stopped)",
                        keys,
                        values,
                        f"> {lower_bound[name] / ours:.0f}",
                    ]
                )
            else:
                assert (keys, values) == (all_keys, all_values), f"{name} saw another hive"
                rows.append([name, seconds, keys, values, seconds / ours])
        print_table(
            "open + walk every key and value",
            ["reader", "seconds", "keys", "values", "x cimsnap"],
            rows,
        )

        merge_seconds, _ = timed(lambda: merge_hives(base, delta, merged))
        merged_keys = sum(1 for _ in Hive.open(merged).walk())
        print_table(
            "merge (ORMergeHives semantics) base + delta, saved",
            ["hives", "seconds", "keys after"],
            [[f"{total_keys} + {count} keys", merge_seconds, merged_keys]],
        )
        print(f"peak RSS {peak_rss_mib():.0f} MiB")

    best_other = min(
        lower_bound.get(name, seconds)
        for name, (seconds, _k, _v) in results.items()
        if name != "cimsnap"
    )
    bench_line(
        f"regf_walk_{count}_keys",
        ours,
        "s",
        baseline=best_other,
        goal="cimsnap faster than python-registry and regipy",
        met=ours < best_other,
    )
    bench_line(f"regf_merge_{count}_keys", merge_seconds, "s")
    bench_line(f"regf_build_{count}_keys", build_seconds, "s")
