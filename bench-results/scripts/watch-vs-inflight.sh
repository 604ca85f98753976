#!/usr/bin/env bash
# Watch event latency against the number of applies in flight: 16 writer
# connections at pipeline 16/8/4/2, 4 WATCH_ALL subscribers, every_write,
# 2 shards, fresh server and data dir per run (killed by PID).
#   [REPS=2] [DUR=5] [OUT=dir] bash bench-results/scripts/watch-vs-inflight.sh
set -u
export CORESTATE_HTTP_LISTEN=off
BIN=${BIN:-target/release/corestate}
BENCH=${BENCH:-target/release/corestate-bench}
OUT=${OUT:-target/watch-vs-inflight}
mkdir -p "$OUT"
for rep in $(seq "${REPS:-2}"); do
  for pipe in 16 8 4 2; do
    port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
    dir=$(mktemp -d /tmp/wq.XXXX)
    "$BIN" --bind 127.0.0.1:$port --data-dir "$dir" --fsync every_write 2>"$dir/log" &
    pid=$!
    for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
    "$BENCH" --addr 127.0.0.1:$port --workload watch --connections 16 --pipeline $pipe \
      --subscribers 4 --duration "${DUR:-5}" --warmup 1 --instances 1000 --server-pid $pid \
      --json "$OUT/w-16x$pipe-$rep.json" >/dev/null 2>&1
    kill -9 $pid; wait $pid 2>/dev/null; rm -rf "$dir"
  done
done
python3 - "$OUT" <<'PY'
import json, glob, sys
print("| writers × pipeline | applies/s | apply p50 µs | apply p99 µs | event p50 µs | event p99 µs | event max µs | delivered | server CPU µs/op |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
def key(f):
    n = f.split('/')[-1][:-5].split('-')
    return (-int(n[1].split('x')[1]), n[2])
for f in sorted(glob.glob(sys.argv[1] + '/w-*.json'), key=key):
    r = json.load(open(f))['results']; w = r['watch']; lat = r['latency']; ev = w['latency']
    cell = f.split('/')[-1][2:-5].replace('x', '×').replace('-', ' run ')
    print(f"| {cell} | {r['ops_per_sec']:,.0f} | {lat['p50_us']:,} | {lat['p99_us']:,} | {ev['p50_us']:,} | {ev['p99_us']:,} | {ev['max_us']:,} | {w['delivered_fraction_min']*100:.2f} % | {r['server_cpu']['per_op_us']:.1f} |")
PY
