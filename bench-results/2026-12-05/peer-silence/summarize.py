#!/usr/bin/env python3
"""One line per run of ab.sh: ops/s, errors, longest latency, elections
(the highest Raft term any node logged, minus the first leader's term 1)
and peer connections broken for silence."""
import glob, json, os, re
here = os.path.dirname(os.path.abspath(__file__))
print("| run | ops/s | errors | p99 µs | longest µs | highest term | silence breaks |")
print("|---|---:|---:|---:|---:|---:|---:|")
for run in sorted(glob.glob(os.path.join(here, "runs", "*"))):
    try:
        r = json.load(open(os.path.join(run, "bench.json")))["results"]
    except FileNotFoundError:
        print(f"| {os.path.basename(run)} | no result | | | | | |")
        continue
    terms, breaks = [0], 0
    for log in glob.glob(os.path.join(run, "node-*.log")):
        text = open(log, errors="replace").read()
        terms += [int(t) for t in re.findall(r"<T(\d+)-N\d", text)]
        breaks += len(re.findall(r"no frame from node \d+ for", text))
    print(f"| {os.path.basename(run)} | {r['ops_per_sec']:,.0f} | {r['errors_total']} | "
          f"{r['latency']['p99_us']:,} | {r['latency']['max_us']:,} | {max(terms)} | {breaks} |")
