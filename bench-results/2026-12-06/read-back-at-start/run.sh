#!/usr/bin/env bash
# How long a restarted cluster node takes to index the log it keeps behind
# the snapshot it starts from (`shards/src/shard/member_read_back.rs`), next
# to how long it takes to start: a 3-node cluster under apply 16x16 durable
# for DUR seconds (default 50: past one snapshot at 10,000 entries with a
# full 10,000 kept behind it), then a follower is SIGKILLed and started
# again on the same data directory.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export CORESTATE_HTTP_LISTEN=off RUST_LOG=info
source bench-results/scripts/cluster-node.sh
bench_cluster_setup readback
start_bench_cluster false every_write "$WORK"
LEADER=$(leader_port "${PORTS[@]}")
"$BENCH" --addr 127.0.0.1:"$LEADER" --workload apply --connections 16 --pipeline 16 \
  --duration "${DUR:-50}" --warmup 1 --instances 1000 --json "$WORK/bench.json" >/dev/null 2>&1
python3 -c "import json;d=json.load(open('$WORK/bench.json'))['results'];print('load: ops',d['ops'],'ops/s',round(d['ops_per_sec']))"
for i in 0 1 2; do [ "${PORTS[$i]}" != "$LEADER" ] && { V=$((i + 1)); break; }; done
echo "victim: node $V; before the kill:"
replication_status "${PORTS[$((V - 1))]}" | python3 -c 'import json,sys; s=json.load(sys.stdin)["shards"][0]; print({k: s.get(k) for k in ("snapshot_index","purged_index")})'
echo "node $V's data directory: $(du -sb "$WORK/node-$V" | cut -f1) bytes"
kill -9 "${NODE_PIDS[$((V - 1))]}"; wait "${NODE_PIDS[$((V - 1))]}" 2>/dev/null || true
sleep 1
LOG="$WORK/node-$V.restart.log"
T0=$(date +%s%N)
"$BIN" --config "$WORK/node-$V.yaml" --bind 127.0.0.1:"${PORTS[$((V - 1))]}" \
  --data-dir "$WORK/node-$V" --fsync every_write --shards 1 2>"$LOG" &
PIDS+=($!)
ms() { echo $((($(date +%s%N) - T0) / 1000000)); }
until grep -q "listening on" "$LOG"; do sleep 0.01; done; LISTEN_MS=$(ms)
INDEXED_MS="never (no log behind a snapshot to index: raise DUR)"
for _ in $(seq 6000); do
  if grep -qE "indexed the log kept behind|could not be indexed" "$LOG"; then INDEXED_MS="$(ms) ms"; break; fi
  sleep 0.01
done
echo "restart: listening after $LISTEN_MS ms; read-back done after $INDEXED_MS (both from the exec)"
grep -E "indexed the log kept behind|could not be indexed" "$LOG" || true
replication_status "${PORTS[$((V - 1))]}" | python3 -c 'import json,sys; s=json.load(sys.stdin)["shards"][0]; print("after:", {k: s.get(k) for k in ("snapshot_index","purged_index")})'
