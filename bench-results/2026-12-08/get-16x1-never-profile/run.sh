#!/usr/bin/env bash
set -euo pipefail
cd "$(dirname "$0")/../../.."
export CORESTATE_HTTP_LISTEN=off
BIN=${BIN:-target/release/corestate}
OUT=${OUT:?}; mkdir -p $OUT
source bench-results/scripts/cluster-node.sh
P=$(free_port); D=$(mktemp -d /tmp/single.XXXX)
$BIN --bind 127.0.0.1:$P --data-dir $D --fsync ${FSYNC:-never} --shards 2 2>$OUT/server.log &
S=$!
trap 'kill -9 $S 2>/dev/null; rm -rf $D' EXIT
wait_port $P
target/release/corestate-bench --addr 127.0.0.1:$P --workload ${WL:-get} --connections ${C:-16} --pipeline ${PL:-1} \
  --duration 8 --warmup 1 --instances 1000 --server-pid $S --json $OUT/bench.json 2>$OUT/bench.log >/dev/null &
B=$!
sleep 3
perf record -F 999 --call-graph dwarf,16384 -p $S -o $OUT/perf.data -- sleep 4 >/dev/null 2>&1
wait $B || true
grep -E "ops/s|cpu" $OUT/bench.log | tail -4
