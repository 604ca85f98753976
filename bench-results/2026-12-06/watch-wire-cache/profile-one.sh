#!/usr/bin/env bash
# One watch 16x16 run against a fresh single node (2 shards), with perf:
#   [BIN=<corestate>] [FSYNC=every_write] [PERF=1] OUT=<dir> bash profile-one.sh
# Writes OUT/bench.json, OUT/server.log and (PERF=1) OUT/perf.data.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
export CORESTATE_HTTP_LISTEN=off
BIN=${BIN:-target/release/corestate}
OUT=${OUT:?}; mkdir -p $OUT
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
D=$(mktemp -d /tmp/wprof.XXXX)
$BIN --bind 127.0.0.1:$PORT --data-dir $D --fsync ${FSYNC:-every_write} ${ARGS:-} >$OUT/server.log 2>&1 &
SP=$!
trap 'kill -9 $SP 2>/dev/null; rm -rf $D' EXIT
sleep 1
if [ -n "${PERF:-}" ]; then
  (sleep 2; perf record -F 499 --call-graph dwarf,16384 -p $SP -o $OUT/perf.data -- sleep 4 >/dev/null 2>&1) &
  PP=$!
fi
target/release/corestate-bench --addr 127.0.0.1:$PORT --workload ${WL:-watch} --connections 16 --pipeline 16 --duration ${DUR:-6} --warmup 1 --instances 1000 --payload-bytes 32 --subscribers ${SUBS:-4} --server-pid $SP --json $OUT/bench.json --no-progress-bar 2>&1 | grep -E "ops/s|event latency|CPU" | head
[ -n "${PERF:-}" ] && wait $PP || true
