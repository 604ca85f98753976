#!/usr/bin/env bash
# Resident memory of a 3-node cluster (one shard per node, every_write,
# unpinned) holding N instances, after each node snapshotted them (COMPACT),
# and of a follower SIGKILLed and restarted on it (it comes back from its
# group snapshot):
#   BIN=<corestate> [N=1000000] [SETTLE_S=10] OUT=<file> \
#     bash bench-results/scripts/cluster-restart-rss.sh
# Appends one line to OUT: RSS in MB of each node once the instances are
# created and snapshotted, then of the restarted follower SETTLE_S seconds
# after it answers again, with the snapshot lines each node logged.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CORESTATE_HTTP_LISTEN=off
BIN=${BIN:-target/release/corestate}
BENCH=target/release/corestate-bench
N=${N:-1000000}
SETTLE_S=${SETTLE_S:-10}
OUT=${OUT:?set OUT to a file}
WORK=$(mktemp -d /tmp/cluster-rss.XXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
source bench-results/scripts/cluster-node.sh
mkdir -p "$WORK/logs"
start_bench_cluster false every_write "$WORK/logs"
lead_port=$(leader_port "${PORTS[@]}")
# Precreate N instances (the bench's setup), then a short get run.
"$BENCH" --addr 127.0.0.1:"$lead_port" --workload get --connections 16 --pipeline 16 \
  --duration 1 --warmup 0 --instances "$N" >/dev/null 2>&1
rss_mb() { awk '/^VmRSS/ {printf "%d", $2 / 1024}' "/proc/$1/status"; }
snapshots() { grep -c "group snapshot at index" "$WORK/logs/node-$1.log" || true; }
# Every node snapshots the created state (COMPACT: each member's group
# snapshot), so that a restart comes back from it.
for i in 0 1 2; do python3 bench-results/scripts/rcp.py "${PORTS[$i]}" COMPACT >/dev/null; done
sleep 2
before="$(rss_mb "${NODE_PIDS[0]}") $(rss_mb "${NODE_PIDS[1]}") $(rss_mb "${NODE_PIDS[2]}")"
# Restart a follower on its data.
victim=""
for i in 0 1 2; do [ "${PORTS[$i]}" != "$lead_port" ] && victim=$i && break; done
node=$((victim + 1))
kill -9 "${NODE_PIDS[$victim]}"
sleep 0.5
"$BIN" --config "$WORK/node-$node.yaml" --bind 127.0.0.1:"${PORTS[$victim]}" \
  --data-dir "$WORK/node-$node" --fsync every_write --shards 1 2>"$WORK/logs/node-$node-restart.log" &
NODE_PIDS[$victim]=$!
PIDS+=($!)
wait_port "${PORTS[$victim]}"
for _ in $(seq 600); do [ "$(role_of "${PORTS[$victim]}")" = follower ] && break; sleep 0.1; done
sleep "$SETTLE_S"
after=$(rss_mb "${NODE_PIDS[$victim]}")
echo "$(basename "$BIN") N=$N rss_mb_after_create=[$before] restarted_node=$node" \
  "rss_mb_after_restart=$after snapshots=[$(snapshots 1) $(snapshots 2) $(snapshots 3)]" | tee -a "$OUT"
