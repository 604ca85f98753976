#!/usr/bin/env bash
# Time from start to listening for a server replaying a log of ~1 M
# applied events (no snapshot), three restarts:
#   [S=<corestate binary>] [WORK=/tmp/replay-bench] [PERF="perf record -F 4999 -o f --"] \
#     bash bench-results/scripts/replay-time.sh
# The log is made once in WORK (apply 16×32 over 1,000 instances, fsync
# never, compaction off) and reused by later runs, so binaries compared
# replay the very same records. Servers are stopped by PID.
set -uo pipefail
cd "$(dirname "$0")/../.."
export CORESTATE_HTTP_LISTEN=off
S=${S:-target/release/corestate}; B=target/release/corestate-bench
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_ready() { for _ in $(seq 1 6000); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.01; done; return 1; }
rcp() { python3 bench-results/scripts/rcp.py "$@"; }
work=${WORK:-/tmp/replay-bench}; d=$work/data
mkdir -p "$work"
printf 'compaction:\n  enabled: false\n' > "$work/nocompact.yaml"
if [ ! -d "$d" ]; then
  p=$(port)
  $S --bind 127.0.0.1:$p --data-dir "$d" --fsync never --config "$work/nocompact.yaml" 2>"$work/make.log" & pid=$!
  wait_ready $p
  entries_of() { rcp $1 WAL_STATS '{}' | python3 -c 'import json,sys;print(json.load(sys.stdin)["result"]["entry_count"])'; }
  while [ "$(entries_of $p)" -lt 1000000 ]; do
    $B --addr 127.0.0.1:$p --workload apply --connections 16 --pipeline 32 --instances 1000 --duration 4 --warmup 0 > "$work/gen.out" 2>&1 || true
  done
  kill -TERM $pid; wait $pid
fi
for _ in 1 2 3; do
  p=$(port)
  start=$(date +%s.%N)
  ${PERF:-} $S --bind 127.0.0.1:$p --data-dir "$d" --fsync never --config "$work/nocompact.yaml" 2>"$work/run.log" & pid=$!
  wait_ready $p
  end=$(date +%s.%N)
  kill -TERM $pid; wait $pid
  echo "ready after $(python3 -c "print(round($end-$start,3))") s: $(grep -o 'recovered [0-9]* records' "$work/run.log")"
done
