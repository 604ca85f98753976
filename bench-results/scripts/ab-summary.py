#!/usr/bin/env python3
"""Medians of an ab.sh output folder, per cell and side:
    python3 bench-results/scripts/ab-summary.py <OUT of ab.sh>
One line per cell and side (A, B): ops/s, server CPU µs per op, watch event
latency p50/p99 and the worst delivered fraction (watch cells), then every
run's ops/s and CPU per op in run order."""
import glob
import json
import statistics
import sys


def median(rows, i):
    values = [r[i] for r in rows if r[i] is not None]
    return statistics.median(values) if values else None


def main(folder):
    names = glob.glob(f"{folder}/*.json")
    cells = sorted({n.split("/")[-1][2:].rsplit("-", 1)[0] for n in names})
    for cell in cells:
        for side in "AB":
            rows = []
            for name in sorted(glob.glob(f"{folder}/{side}-{cell}-*.json")):
                results = json.load(open(name))["results"]
                watch = results.get("watch") or {}
                latency = watch.get("latency") or {}
                rows.append((
                    results["ops_per_sec"],
                    results["server_cpu"]["per_op_us"],
                    latency.get("p50_us"),
                    latency.get("p99_us"),
                    watch.get("delivered_fraction_min"),
                ))
            if not rows:
                continue
            delivered = [r[4] for r in rows if r[4] is not None]
            print(
                f"{cell} {side} n={len(rows)} ops/s {median(rows, 0):,.0f} "
                f"cpu/op {median(rows, 1):.2f} ev p50 {median(rows, 2)} p99 {median(rows, 3)} "
                f"delivered {min(delivered) if delivered else None}  "
                f"runs ops/s {[round(r[0]) for r in rows]} cpu {[round(r[1], 1) for r in rows]}"
            )


if __name__ == "__main__":
    main(sys.argv[1])
