#!/usr/bin/env bash
# Restart time of one single-node data directory, two binaries alternating:
#   BIN_A=<corestate> BIN_B=<corestate> [LOAD_SECS=15] [REPS=5] OUT=<dir> bash restart-ab.sh
# Loads a fresh 2-shard server (fsync never, compaction off, so every apply
# stays in the log to replay) with apply 16x16 for LOAD_SECS, stops it
# with SIGKILL, then starts a copy of that directory with A and with B in
# turn and measures exec -> "listening" (the log line after recovery).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
export CORESTATE_HTTP_LISTEN=off RSTMDB_COMPACT_ENABLED=false
OUT=${OUT:?}; mkdir -p "$OUT"
BENCH=target/release/corestate-bench
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
SRC=$(mktemp -d /tmp/replay-src.XXXX)
P=$(port)
"$BIN_A" --bind 127.0.0.1:$P --data-dir "$SRC" --fsync never >"$OUT/load-server.log" 2>&1 &
SP=$!
sleep 1
"$BENCH" --addr 127.0.0.1:$P --workload apply --connections 16 --pipeline 16 --duration "${LOAD_SECS:-15}" \
  --warmup 1 --instances 1000 --payload-bytes 32 --no-progress-bar >"$OUT/load-bench.txt" 2>&1
kill -9 $SP; wait $SP 2>/dev/null || true
du -sb "$SRC" | tee "$OUT/data-bytes.txt"
grep -E "throughput" "$OUT/load-bench.txt" | tee -a "$OUT/data-bytes.txt"
one() { # label bin rep
  local d; d=$(mktemp -d /tmp/replay-run.XXXX)
  cp -a "$SRC/." "$d/"
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  find "$d" -type f -exec cat {} + >/dev/null   # same page-cache state for both: all in cache
  local p; p=$(port)
  local t0; t0=$(date +%s%N)
  "$2" --bind 127.0.0.1:$p --data-dir "$d" --fsync never >"$OUT/$1-$3.log" 2>&1 &
  local pid=$!
  until grep -q "listening on" "$OUT/$1-$3.log" 2>/dev/null; do
    kill -0 $pid 2>/dev/null || { echo "$1 exited"; break; }
    sleep 0.005
  done
  local t1; t1=$(date +%s%N)
  local ticks; ticks=$(awk '{print $14+$15}' /proc/$pid/stat)
  kill -9 $pid; wait $pid 2>/dev/null || true
  echo "$1 rep $3 listening_ms $(( (t1-t0)/1000000 )) cpu_ticks $ticks $(grep -o 'recovered [0-9]* records' "$OUT/$1-$3.log")" | tee -a "$OUT/results.txt"
  rm -rf "$d"
}
for r in $(seq "${REPS:-5}"); do one A "$BIN_A" $r; one B "$BIN_B" $r; done
rm -rf "$SRC"
