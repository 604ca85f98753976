#!/usr/bin/env python3
"""Medians of a folder of harness reports named <label>-<cell>-<rep>.json,
as ab.sh (labels A, B) and spin-sweep.sh (labels s<µs>) leave them:
    python3 bench-results/scripts/ab-summary.py <folder>
One line per cell and label: ops/s, latency p50/p99 and server CPU per op
(µs); for watch cells the event latency p50/p99 (µs) and the worst
delivered fraction; then every run's ops/s and CPU per op in run order."""
import collections
import glob
import json
import re
import statistics
import sys


def median(rows, i):
    values = [r[i] for r in rows if r[i] is not None]
    return statistics.median(values) if values else None


def label_key(label):
    """A, B in order; s0, s10, s50 by their number."""
    number = re.fullmatch(r"[a-z]+(\d+)", label)
    return (0, int(number.group(1)), label) if number else (1, 0, label)


def main(folder):
    runs = collections.defaultdict(list)
    for path in sorted(glob.glob(f"{folder}/*.json")):
        label, rest = path.rsplit("/", 1)[-1][: -len(".json")].split("-", 1)
        cell = rest.rsplit("-", 1)[0]
        results = json.load(open(path))["results"]
        watch = results.get("watch") or {}
        event = watch.get("latency") or {}
        runs[(cell, label)].append((
            results["ops_per_sec"],
            results["latency"]["p50_us"],
            results["latency"]["p99_us"],
            results["server_cpu"]["per_op_us"],
            event.get("p50_us"),
            event.get("p99_us"),
            watch.get("delivered_fraction_min"),
        ))
    for cell, label in sorted(runs, key=lambda k: (k[0], label_key(k[1]))):
        rows = runs[(cell, label)]
        line = (
            f"{cell:26s} {label:4s} n={len(rows)}  ops/s {median(rows, 0):9,.0f}  "
            f"p50 {median(rows, 1):6.0f}  p99 {median(rows, 2):6.0f}  "
            f"cpu/op {median(rows, 3):7.2f}"
        )
        if median(rows, 5) is not None:
            delivered = min(r[6] for r in rows if r[6] is not None)
            line += (
                f"  event p50 {median(rows, 4):6.0f}  p99 {median(rows, 5):6.0f}  "
                f"delivered {delivered}"
            )
        line += (
            f"  runs ops/s {[round(r[0]) for r in rows]}"
            f" cpu {[round(r[3], 1) for r in rows]}"
        )
        print(line)


if __name__ == "__main__":
    main(sys.argv[1])
