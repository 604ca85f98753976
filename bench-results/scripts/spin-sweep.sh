#!/usr/bin/env bash
# How long an idle executor spins before it parks, swept over values, runs
# alternating between the values within each repetition:
#   VALUES="0 50" CELLS="workload:conns:pipeline:fsync ..." [REPS=4] [DUR=4] \
#   [BIN=target/release/corestate] [BENCH=target/release/corestate-bench] \
#   [BENCH_ARGS="--subscribers 4"] OUT=<dir> bash bench-results/scripts/spin-sweep.sh
# Each run starts a fresh 2-shard server with --spin-before-park-us <value>
# (temp data dir), benches it with --server-pid (CPU per op) and kills it
# by PID; OUT gets s<value>-<cell>-<rep>.json. Summarize with
# ab-summary.py OUT.
set -u
export CORESTATE_HTTP_LISTEN=off
BIN=${BIN:-target/release/corestate}
BENCH=${BENCH:-target/release/corestate-bench}
OUT=${OUT:?set OUT to a directory}; mkdir -p "$OUT"
for cell in ${CELLS:?set CELLS}; do
  IFS=: read -r wl conns pipe fsync <<<"$cell"
  for rep in $(seq "${REPS:-4}"); do
    for v in ${VALUES:-0 50}; do
      port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
      dir=$(mktemp -d /tmp/spin-sweep.XXXX)
      "$BIN" --bind 127.0.0.1:$port --data-dir "$dir" --fsync "$fsync" --shards 2 \
        --spin-before-park-us "$v" 2>"$dir/log" &
      pid=$!
      for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
      "$BENCH" --addr 127.0.0.1:$port --workload "$wl" --connections "$conns" --pipeline "$pipe" \
        --duration "${DUR:-4}" --warmup 1 --instances 1000 ${BENCH_ARGS:-} --server-pid $pid \
        --json "$OUT/s$v-$wl-$conns-$pipe-$fsync-$rep.json" >/dev/null 2>&1 ||
        echo "run failed: $v $cell $rep"
      kill -9 $pid; wait $pid 2>/dev/null; rm -rf "$dir"
    done
  done
done
