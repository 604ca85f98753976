#!/usr/bin/env python3
"""Medians (and ranges) of the forward-batch A/B runs in this folder."""
import glob, json, os, statistics
here = os.path.dirname(os.path.abspath(__file__))
rows = {}
for path in sorted(glob.glob(os.path.join(here, "*.json"))):
    variant, via, wl, _ = os.path.basename(path)[:-5].split("-")
    r = json.load(open(path))["results"]
    rows.setdefault((via, wl, variant), []).append(
        (r["ops_per_sec"], r["latency"]["p50_us"], r["latency"]["p99_us"],
         r["server_cpu"]["per_op_us"], r["errors_total"]))
print("| path | workload | variant | runs | ops/s median (range) | p50 µs | p99 µs | driven node CPU µs/op | errors |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|")
for (via, wl, variant), runs in sorted(rows.items()):
    ops = [r[0] for r in runs]
    med = lambda i: statistics.median(r[i] for r in runs)
    print(f"| {via} | {wl} 16×16 | {variant} | {len(runs)} | {statistics.median(ops):,.0f} "
          f"({min(ops):,.0f}–{max(ops):,.0f}) | {med(1):,.0f} | {med(2):,.0f} | {med(3):.1f} | "
          f"{sum(r[4] for r in runs)} |")
