#!/usr/bin/env bash
# Snapshot and restart with about 1,000,000 instances, per binary: a fresh
# server (2 shards, fsync never, automatic compaction off) gets N created
# instances (the bench's create workload, a 32-byte string in each
# context); then the server's RSS, a timed COMPACT (force_snapshot: every
# shard snapshotted, written and synced), the snapshot files' size, a
# SIGTERM, a timed restart to listening (loading the snapshots) and the
# RSS after it; the RSS after the COMPACT too, and the instance count the
# restarted server reports.
#   BIN=<corestate> [N=1000000] [BENCH=<corestate-bench>] \
#     bash bench-results/scripts/snapshot-restart.sh   (prints one line)
set -euo pipefail
cd "$(dirname "$0")/../.."
export CORESTATE_HTTP_LISTEN=off
BENCH=${BENCH:-target/release/corestate-bench}
N=${N:-1000000}
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_ready() { for _ in $(seq 1 1200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.01; done; return 1; }
rcp() { python3 bench-results/scripts/rcp.py "$@"; } # port op params-json -> the response's JSON
total_of() { rcp $1 LIST_INSTANCES '{"limit":0}' | python3 -c 'import json,sys;print(json.load(sys.stdin)["result"]["total"])'; }
rss() { awk '/VmRSS/{print $2}' /proc/$1/status; }
work=$(mktemp -d /tmp/snapab.XXXX)
trap 'rm -rf "$work"' EXIT
printf 'compaction:\n  enabled: false\n' > $work/nocompact.yaml
p=$(port)
"$BIN" --bind 127.0.0.1:$p --data-dir $work/d --fsync never --config $work/nocompact.yaml 2>$work/s1.log & pid=$!
wait_ready $p
while [ "$(total_of $p)" -lt "$N" ]; do
  "$BENCH" --addr 127.0.0.1:$p --workload create --connections 16 --pipeline 32 --instances 1 \
    --payload-bytes 32 --duration 2 --warmup 0 > $work/create.out 2>&1 || true
done
instances=$(total_of $p)
rss_full=$(rss $pid)
t0=$(date +%s.%N)
rcp $p COMPACT '{"force_snapshot":true}' > $work/compact.json
t1=$(date +%s.%N)
rss_compacted=$(rss $pid)
kill -TERM $pid; wait $pid || true
snap_bytes=$(du -cb $work/d/shard-*/snapshots/*.snap | tail -1 | cut -f1)
p=$(port)
t2=$(date +%s.%N)
"$BIN" --bind 127.0.0.1:$p --data-dir $work/d --fsync never --config $work/nocompact.yaml 2>$work/s2.log & pid=$!
wait_ready $p
t3=$(date +%s.%N)
rss_restarted=$(rss $pid)
restarted_instances=$(total_of $p)
cpu_ticks=$(awk '{print $14+$15}' /proc/$pid/stat)
kill -9 $pid; wait $pid 2>/dev/null || true
python3 - <<PY
print("$(basename "$BIN") instances=$instances rss_kib=$rss_full compact_s=%.2f snapshot_bytes=$snap_bytes bytes_per_instance=%.1f restart_s=%.2f restart_cpu_ticks=$cpu_ticks rss_after_compact_kib=$rss_compacted rss_after_restart_kib=$rss_restarted instances_after_restart=$restarted_instances" % ($t1-$t0, $snap_bytes/$instances, $t3-$t2))
PY
