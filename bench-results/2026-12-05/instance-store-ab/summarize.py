"""Print one line per run of ab.sh (one, parts, store): ops/s, p50, p99, p99.9, max latency, CPU per op, peak RSS."""
import glob
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
for wl in ("create", "get", "apply"):
    for v in ("one", "parts", "store"):
        for f in sorted(glob.glob(f"{HERE}/{v}-{wl}-*.json")):
            r = json.load(open(f))["results"]
            lat = r["latency"]
            cpu = (r.get("server_cpu") or {}).get("per_op_us") or 0
            rss = (r.get("server_memory") or {}).get("rss_peak_kib") or 0
            print(f"{os.path.basename(f):22} {r['ops_per_sec']:>10,.0f} ops/s  p50 {lat['p50_us']:>6}  "
                  f"p99 {lat['p99_us']:>6}  p99.9 {lat['p999_us']:>7}  max {lat['max_us']:>8} µs  "
                  f"cpu {cpu:5.1f} µs/op  rss {rss // 1024:>5} MiB  errors {r['errors_total']}")
