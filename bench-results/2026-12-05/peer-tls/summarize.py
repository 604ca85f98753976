"""Median throughput and the three nodes' CPU per op of runs.sh's runs."""
import glob, json, os, statistics, sys

here = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
TICKS = os.sysconf("SC_CLK_TCK")
rows = {}
for run in sorted(glob.glob(os.path.join(here, "runs", "*"))):
    links, path, _ = os.path.basename(run).split("-")
    try:
        r = json.load(open(os.path.join(run, "bench.json")))["results"]
        ticks = sum(int(l.split()[2]) for l in open(os.path.join(run, "cpu-ticks.txt")))
    except (OSError, ValueError, IndexError):
        rows.setdefault((path, links), []).append(None)
        continue
    # cpu-ticks covers each node's life (start-up and warm-up too): an
    # upper bound of the CPU per op, comparable between the two link kinds.
    rows.setdefault((path, links), []).append(
        (r["ops_per_sec"], r["latency"]["p99_us"], ticks / TICKS * 1e6 / r["ops"]))
print("| via | links | runs | applies/s (median) | each | p99 ms (median) | 3 nodes' CPU µs/op (median) |")
print("|---|---|---:|---:|---|---:|---:|")
for (path, links), runs in sorted(rows.items()):
    ok = [x for x in runs if x]
    print(f"| {path} | {links} | {len(ok)}/{len(runs)} | {statistics.median(x[0] for x in ok):,.0f} | "
          f"{', '.join(f'{x[0]:,.0f}' for x in ok)} | {statistics.median(x[1] for x in ok)/1000:.1f} | "
          f"{statistics.median(x[2] for x in ok):.1f} |")
