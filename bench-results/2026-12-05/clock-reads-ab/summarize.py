"""Medians per binary and cell of the A/B runs in a folder (the one given,
else this script's): ops/s and
server CPU µs per operation (CPU over the whole run, warm-up included,
divided by the measured operations — the same for both binaries)."""
import glob
import json
import os
import statistics
import sys
from collections import defaultdict

here = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
rows = defaultdict(lambda: ([], []))
for path in sorted(glob.glob(os.path.join(here, "*.json"))):
    label, rest = os.path.basename(path).split("-", 1)
    cell = rest.rsplit("-", 1)[0]
    r = json.load(open(path))["results"]
    ops, cpu = r["ops"], r["server_cpu"]["cpu_seconds"]
    rows[(cell, label)][0].append(r["ops_per_sec"])
    rows[(cell, label)][1].append(cpu * 1e6 / ops)
print("| cell | binary | runs | ops/s (median) | ops/s (each) | server CPU µs/op (median) |")
print("|---|---|---:|---:|---|---:|")
for (cell, label), (rates, cpus) in sorted(rows.items()):
    each = ", ".join(f"{x:,.0f}" for x in rates)
    print(f"| {cell} | {label} | {len(rates)} | {statistics.median(rates):,.0f} | {each} | {statistics.median(cpus):.2f} |")
