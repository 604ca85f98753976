#!/usr/bin/env bash
# How many Raft entries (and bytes) a group writes per second under apply 16x16.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export CORESTATE_HTTP_LISTEN=off
source bench-results/scripts/cluster-node.sh
bench_cluster_setup erate
start_bench_cluster false every_write "$WORK"
sleep 2
replication_status "${PORTS[0]}" > "$WORK/before.json"
"$BENCH" --addr 127.0.0.1:"${PORTS[0]}" --workload "${WL:-apply}" --connections 16 --pipeline 16 \
  --duration 10 --warmup 1 --instances 1000 --json "$WORK/bench.json" >/dev/null 2>&1
replication_status "${PORTS[0]}" > "$WORK/after.json"
cat "$WORK/after.json" | head -c 3000; echo
python3 -c "import json;d=json.load(open('$WORK/bench.json'))['results'];print('ops',d['ops'],'ops/s',d['ops_per_sec'])"
du -sb "$WORK"/node-1; ls -la "$WORK"/node-1/* | head
