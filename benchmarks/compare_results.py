"""Two results folders of the same configuration compared on everything that is not a time, a date or a path:
every table (tables/**/*.csv), every run's history.csv and metrics.json. For a change that must not change what
the pipeline computes (a refactoring, a faster path):

    python benchmarks/compare_results.py results/smoke-before results/smoke-after

prints each difference and exits 1 when there is one, 0 when the folders agree (and how much was compared).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

# Columns and keys that hold a duration, a rate, a clock reading or a memory peak: they differ between any two runs.
TIMING_COLUMN = re.compile(r"(time|_ms|seconds|_s_|_s$|latency|throughput|per_s|images_s|peak|eta|date|started|"
                           r"finished|duration|hours|load|_at$)", re.IGNORECASE)
# Keys whose values are paths or hosts: each run names its own folder or machine.
PLACE_KEY = re.compile(r"(^|_)(log|host|path|root|file)$")


def read_tables(folder: Path) -> dict[str, list[dict]]:
    return {str(path.relative_to(folder)): list(csv.DictReader(path.open(encoding="utf-8")))
            for path in sorted(folder.rglob("*.csv"))}


def compare_rows(name: str, old: list[dict], new: list[dict], roots: tuple[str, str]) -> list[str]:
    """Differences between two CSVs' rows on every column that is not a time (paths compared relative to each
    side's results folder)."""
    if len(old) != len(new):
        return [f"{name}: {len(old)} rows before, {len(new)} after"]
    differences = []
    columns_old, columns_new = set(old[0]) if old else set(), set(new[0]) if new else set()
    if columns_old != columns_new:
        differences.append(f"{name}: columns only before {sorted(columns_old - columns_new)}, "
                           f"only after {sorted(columns_new - columns_old)}")
    compared = sorted(c for c in columns_old & columns_new if not TIMING_COLUMN.search(c))
    for i, (a, b) in enumerate(zip(old, new)):
        differences += [f"{name} row {i + 1} column {c}: {a[c]!r} -> {b[c]!r}" for c in compared
                        if a[c].replace(roots[0], "<results>") != b[c].replace(roots[1], "<results>")]
    return differences


def compare_tables(before: Path, after: Path) -> list[str]:
    """Differences between two runs' CSVs under ``before`` and ``after``; [] when they agree."""
    old, new = read_tables(before), read_tables(after)
    roots = (str(before.parent), str(after.parent))
    differences = []
    for name in sorted(set(old) | set(new)):
        if name not in old or name not in new:
            differences.append(f"{name}: only in {'after' if name in new else 'before'}")
        else:
            differences += compare_rows(name, old[name], new[name], roots)
    return differences


def comparable(value, key: str = ""):
    """A metrics record without its timings and places (nested values too)."""
    if isinstance(value, dict):
        return {k: comparable(v, k) for k, v in value.items()
                if not TIMING_COLUMN.search(k) and not PLACE_KEY.search(k)}
    if isinstance(value, list):
        return [comparable(v, key) for v in value]
    return value


def compare_metrics(before: Path, after: Path) -> list[str]:
    """Differences between the runs' metrics.json files (every number and setting but timings and places)."""
    old = {p.relative_to(before): p for p in before.rglob("metrics.json")}
    new = {p.relative_to(after): p for p in after.rglob("metrics.json")}
    differences = [f"{name}: only in {'after' if name in new else 'before'}" for name in sorted(set(old) ^ set(new))]
    for name in sorted(set(old) & set(new)):
        a, b = (comparable(json.loads(p.read_text())) for p in (old[name], new[name]))
        if a != b:
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            differences.append(f"{name}: differs in {', '.join(keys)}")
    return differences


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path, help="a results folder (e.g. results/smoke)")
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    tables = compare_tables(args.before / "tables", args.after / "tables")
    histories = compare_tables(args.before / "runs", args.after / "runs")
    metrics = compare_metrics(args.before / "runs", args.after / "runs")
    for line in tables + histories + metrics:
        print(line)
    counts = (len(read_tables(args.before / "tables")), len(read_tables(args.before / "runs")),
              len(list((args.before / "runs").rglob("metrics.json"))))
    print(f"compared {counts[0]} tables, {counts[1]} histories and {counts[2]} metrics records: "
          f"{len(tables) + len(histories) + len(metrics)} differences")
    return 1 if tables or histories or metrics else 0


if __name__ == "__main__":
    sys.exit(main())
