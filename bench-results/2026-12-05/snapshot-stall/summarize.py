"""One line per run of runs.sh: throughput, create latency, the slowest
second, the longest fdatasync the probe saw, and each node's snapshot."""
import glob, json, os, re, sys

here = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
print("| run | creates/s | p99 ms | p99.9 ms | max ms | slowest second | probe fdatasync max ms | snapshots (image ms / sealed+written ms) |")
print("|---|---:|---:|---:|---:|---:|---:|---|")
for run in sorted(glob.glob(os.path.join(here, "runs", "*"))):
    try:
        d = json.load(open(os.path.join(run, "bench.json")))
    except (OSError, ValueError):
        print(f"| {os.path.basename(run)} | failed |")
        continue
    r = d["results"]
    lat = r["latency"]
    probe = [float(l.split()[1]) for l in open(os.path.join(run, "probe.txt")) if l.strip()]
    snaps = []
    for log in sorted(glob.glob(os.path.join(run, "node-*.log"))):
        for line in open(log, errors="replace"):
            m = re.search(r"image in (\d+) ms, sealed and written in (\d+) ms", line)
            if m:
                snaps.append(f"{m.group(1)}/{m.group(2)}")
    print(f"| {os.path.basename(run)} | {r['ops_per_sec']:,.0f} | {lat['p99_us']/1000:.1f} | "
          f"{lat['p999_us']/1000:.1f} | {lat['max_us']/1000:.0f} | {min(r['timeline_ops_per_sec']):,} | "
          f"{max(probe):.1f} | {', '.join(snaps) or 'none in the run'} |")
