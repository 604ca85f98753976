#!/usr/bin/env python3
"""Medians per cell and spin value of a spin-sweep.sh output directory:
ops/s, latency p50/p99 (µs), server CPU per op (µs), and for watch cells
the event latency p99 (µs)."""
import collections
import glob
import json
import statistics
import sys

runs = collections.defaultdict(list)
for path in glob.glob(sys.argv[1] + "/s*.json"):
    name = path.rsplit("/", 1)[-1][:-5]
    value, rest = name.split("-", 1)
    cell = rest.rsplit("-", 1)[0]
    r = json.load(open(path))["results"]
    watch = (r.get("watch") or {}).get("latency") or {}
    runs[(cell, int(value[1:]))].append(
        (r["ops_per_sec"], r["latency"]["p50_us"], r["latency"]["p99_us"],
         r["server_cpu"]["per_op_us"], watch.get("p99_us")))
for cell, value in sorted(runs):
    rows = runs[(cell, value)]
    med = lambda i: statistics.median(x[i] for x in rows if x[i] is not None) \
        if any(x[i] is not None for x in rows) else float("nan")
    print(f"{cell:26s} spin {value:4d} µs  n={len(rows)}  ops/s {med(0):9,.0f}  "
          f"p50 {med(1):6.0f}  p99 {med(2):6.0f}  cpu/op {med(3):7.1f}"
          + (f"  event p99 {med(4):6.0f}" if rows[0][4] is not None else ""))
