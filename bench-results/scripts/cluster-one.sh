#!/usr/bin/env bash
# One cell against a fresh 3-node cluster (one shard per node, every_write),
# like bench-results/scripts/cluster-vs-single.sh but one run at a time:
#   BIN=<corestate binary> PIN=false|true WL=apply|create CONNS=16 PIPE=16 \
#   DUR=5 [INSTANCES=1000: precreated] [PERF=1: perf record every node] [VIA_FOLLOWER=1] OUT=<dir> cluster-one.sh
# Writes OUT/bench.json, OUT/node-*.log and OUT/cpu-ticks.txt (each node's
# user+system CPU in clock ticks from its start to the end of the run).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CORESTATE_HTTP_LISTEN=off
BIN=${BIN:-target/release/corestate}
BENCH=target/release/corestate-bench
WL=${WL:-apply}; CONNS=${CONNS:-16}; PIPE=${PIPE:-16}; DUR=${DUR:-8}
OUT=${OUT:?set OUT to a directory}; mkdir -p $OUT
WORK=$(mktemp -d /tmp/prof-cluster.XXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
source bench-results/scripts/cluster-node.sh
start_bench_cluster "${PIN:-true}" every_write "$OUT"
sleep 2
lead=""
for i in 0 1 2; do
  r=$(role_of "${PORTS[$i]}")
  echo "node $((i+1)) port ${PORTS[$i]} pid ${PIDS[$i]}: $r"
  [ "$r" = leader ] && lead=$i
done
[ -n "${VIA_FOLLOWER:-}" ] && lead=$(( (lead+1) % 3 ))
echo "driving node $((lead+1))"
PERFS=()
[ -n "${PERF:-}" ] && for i in 0 1 2; do
  perf record -F 999 -g -p "${PIDS[$i]}" -o "$OUT/perf-node$((i+1)).data" -- sleep $((DUR+2)) >/dev/null 2>&1 &
  PERFS+=($!)
done
"$BENCH" --addr 127.0.0.1:"${PORTS[$lead]}" --workload "$WL" --connections "$CONNS" --pipeline "$PIPE" \
  --duration "$DUR" --warmup 2 --instances "${INSTANCES:-1000}" --server-pid "${PIDS[$lead]}" --json "$OUT/bench.json" 2>"$OUT/bench.log" | tail -2
for p in "${PERFS[@]}"; do wait $p; done
for i in 1 2 3; do
  echo "node $i $(awk '{print $14+$15}' /proc/${PIDS[$((i-1))]}/stat)"
done | tee "$OUT/cpu-ticks.txt"
