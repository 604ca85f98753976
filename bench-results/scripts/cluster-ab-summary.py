#!/usr/bin/env python3
"""Medians (and ranges) of the runs cluster-ab.sh left in a folder:
   python3 bench-results/scripts/cluster-ab-summary.py OUT"""
import glob, json, os, statistics, sys

folder = sys.argv[1]
rows = {}
for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
    label, via, wl, _ = os.path.basename(path)[:-5].split("-")
    r = json.load(open(path))["results"]
    ticks = None
    cpu = path[:-5] + ".cpu"
    if os.path.exists(cpu):
        ticks = sum(int(line.split()[2]) for line in open(cpu) if line.strip())
    rows.setdefault((via, wl, label), []).append(
        (r["ops_per_sec"], r["latency"]["p50_us"], r["latency"]["p99_us"],
         r["server_cpu"]["per_op_us"], r["errors_total"], ticks))
print("| path | workload | binary | runs | ops/s median (range) | p50 µs | p99 µs "
      "| driven node CPU µs/op | all nodes CPU ticks (median) | errors |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
for (via, wl, label), runs in sorted(rows.items()):
    ops = [r[0] for r in runs]
    med = lambda i: statistics.median(r[i] for r in runs)
    ticks = [r[5] for r in runs if r[5] is not None]
    tick_text = f"{statistics.median(ticks):,.0f}" if ticks else "–"
    print(f"| {via} | {wl} | {label} | {len(runs)} | {statistics.median(ops):,.0f} "
          f"({min(ops):,.0f}–{max(ops):,.0f}) | {med(1):,.0f} | {med(2):,.0f} | {med(3):.1f} "
          f"| {tick_text} | {sum(r[4] for r in runs)} |")
