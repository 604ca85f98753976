#!/usr/bin/env bash
# A/B of two corestate binaries on the watch path and its cost where
# nobody watches: watch 16x16 (4 WATCH_ALL subscribers) and apply 1x1, both
# every_write, 2 shards, fresh server and data dir per run, runs alternating.
#   BIN_A=<corestate> BIN_B=<corestate> [REPS=3] [DUR=5] [OUT=dir] bash bench-results/scripts/watch-ab.sh
set -u
export CORESTATE_HTTP_LISTEN=off
BENCH=${BENCH:-target/release/corestate-bench}
OUT=${OUT:-target/watch-ab}
mkdir -p "$OUT"
for rep in $(seq "${REPS:-3}"); do
  for label in A B; do
    if [ $label = A ]; then bin=$BIN_A; else bin=$BIN_B; fi
    for cell in "watch 16 16 4" "apply 1 1 0"; do
      set -- $cell
      port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
      dir=$(mktemp -d /tmp/wab.XXXX)
      "$bin" --bind 127.0.0.1:$port --data-dir "$dir" --fsync every_write 2>"$dir/log" &
      pid=$!
      for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
      extra=""; [ "$4" -gt 0 ] && extra="--subscribers $4"
      "$BENCH" --addr 127.0.0.1:$port --workload $1 --connections $2 --pipeline $3 $extra \
        --duration "${DUR:-5}" --warmup 1 --instances 1000 --server-pid $pid \
        --json "$OUT/$label-$1-$2x$3-$rep.json" >/dev/null 2>&1
      kill -9 $pid; wait $pid 2>/dev/null; rm -rf "$dir"
    done
  done
done
python3 - "$OUT" <<'PY'
import json, glob, statistics as st, collections, sys
rows = collections.defaultdict(list)
for f in sorted(glob.glob(sys.argv[1] + '/*.json')):
    label, wl, cell, rep = f.split('/')[-1][:-5].split('-')
    r = json.load(open(f))['results']; lat = r['latency']
    ev = (r.get('watch') or {}).get('latency', {})
    rows[(wl, cell, label)].append((r['ops_per_sec'], r['server_cpu']['per_op_us'], lat['p50_us'], lat['p99_us'], ev.get('p50_us'), ev.get('p99_us')))
print("| cell | binary | runs | ops/s | server CPU µs/op | apply p50 µs | apply p99 µs | event p50 µs | event p99 µs |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for (wl, cell, label), v in sorted(rows.items(), key=lambda kv: (kv[0][0] != 'watch', kv[0])):
    med = lambda i: st.median([x[i] for x in v]) if v[0][i] is not None else None
    fmt = lambda x: '—' if x is None else f"{x:,.0f}"
    print(f"| {wl} {cell.replace('x', '×')} | {label} | {len(v)} | {fmt(med(0))} | {med(1):.1f} | {fmt(med(2))} | {fmt(med(3))} | {fmt(med(4))} | {fmt(med(5))} |")
PY
