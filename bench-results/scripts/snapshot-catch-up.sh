#!/usr/bin/env bash
# A follower back after missing a large state catches up by the leader's
# snapshot: how long that takes and how many times the snapshot is sent.
#   BIN=<corestate> [DUR=15] [PAD=200] [REPS=1] bash bench-results/scripts/snapshot-catch-up.sh
# Three nodes of one shard (fsync never, snapshots every 100 entries, 100
# entries kept behind one), a follower SIGKILLed, DUR seconds of the bench's
# create load at 16×32 through the leader (contexts of PAD bytes: about a
# million instances here), the follower restarted. One line per repetition:
# the snapshot's bytes, the transfers the leader began while the follower
# was down, seconds from the restart until the follower applied the
# leader's commit index, the transfers the leader began after the restart,
# the installs the follower did (and skipped), and the leader's term before
# and after.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CORESTATE_HTTP_LISTEN=off
source bench-results/scripts/cluster-node.sh
BIN=${BIN:-target/release/corestate}
BENCH=${BENCH:-target/release/corestate-bench}
DUR=${DUR:-15}
PAD=${PAD:-200}
REPS=${REPS:-1}
status_field() { replication_status "$1" | python3 -c "import json,sys;print(json.load(sys.stdin)['shards'][0]['$2'])"; }
for rep in $(seq "$REPS"); do
  WORK=$(mktemp -d /tmp/snapcatch.XXXX)
  PIDS=()
  trap 'for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$WORK"' EXIT
  BENCH_NODE_EXTRA_YAML=$'    snapshot_every_entries: 100\n    log_kept_behind_snapshot_entries: 100\n' \
    start_bench_cluster false never "$WORK"
  lead=$(leader_port "${PORTS[@]}")
  f=1
  [ "${PORTS[0]}" = "$lead" ] && f=2
  kill -9 "${NODE_PIDS[$((f - 1))]}"
  "$BENCH" --addr 127.0.0.1:"$lead" --workload create --connections 16 --pipeline 32 --instances 1 \
    --payload-bytes "$PAD" --duration "$DUR" --warmup 0 >"$WORK/create.out" 2>&1 || true
  live=()
  for i in 1 2 3; do [ "$i" != "$f" ] && live+=("${PORTS[$((i - 1))]}"); done
  lead=$(leader_port "${live[@]}")
  for i in 1 2 3; do [ "${PORTS[$((i - 1))]}" = "$lead" ] && ln=$i; done
  term_before=$(status_field "$lead" term)
  target=$(status_field "$lead" commit_index)
  sent_before=$(grep -c "snapshot sending" "$WORK/node-$ln.log" || true)
  down=$(cat "$WORK"/node-*.log | grep -c "snapshot sending" || true)
  t0=$(date +%s.%N)
  start_bench_node "$f"
  wait_port "${PORTS[$((f - 1))]}"
  until [ "$(status_field "${PORTS[$((f - 1))]}" applied_index 2>/dev/null || echo 0)" -ge "$target" ] 2>/dev/null; do
    sleep 0.05
  done
  t1=$(date +%s.%N)
  sleep 2
  sent_after=$(grep -c "snapshot sending" "$WORK/node-$ln.log" || true)
  installs=$(grep -c "Done install complete snapshot" "$WORK/node-$f.log" || true)
  skipped=$(grep -c "No need to install snapshot" "$WORK/node-$f.log" || true)
  bytes=$(ls -l "$WORK/node-$ln"/shard-000/raft/snapshots/*.snap | awk '{print $5}' | sort -n | tail -1)
  term_after=$(status_field "$lead" term 2>/dev/null || echo "?")
  echo "rep $rep: snapshot $bytes bytes; transfers begun while down $down; caught up in $(python3 -c "print(round($t1 - $t0, 2))") s;" \
    "transfers begun after the restart $((sent_after - sent_before)); installs $installs, skipped $skipped;" \
    "leader term $term_before -> $term_after"
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
done
