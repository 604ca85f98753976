#!/usr/bin/env bash
# A/B of forwarding through a follower: BASE (one peer call per forwarded
# operation) against NEW (a turn's operations in one call), alternating,
# each run on a fresh 3-node cluster (one shard per node, every_write,
# executors unpinned), driven through a follower (and through the leader
# for the apply cell, to see that path unchanged):
#   BASE=<binary> NEW=<binary> [REPS=3] [DUR=5] bash ab.sh
# One JSON per run in this folder: <variant>-<path>-<workload>-<rep>.json
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
RUN="$HERE/../turn-pipeline-ab/run-one.sh"
REPS=${REPS:-3}; DUR=${DUR:-5}
for rep in $(seq 1 "$REPS"); do
  for cell in follower:apply follower:create leader:apply; do
    path=${cell%%:*}; wl=${cell##*:}
    for variant in base new; do
      bin=$BASE; [ "$variant" = new ] && bin=$NEW
      tmp=$(mktemp -d /tmp/fwd-ab.XXXX)
      via=""; [ "$path" = follower ] && via=1
      BIN=$bin PIN=false WL=$wl DUR=$DUR VIA_FOLLOWER=$via OUT=$tmp \
        bash "$RUN" >/dev/null 2>&1 || echo "run failed: $variant $cell $rep"
      cp "$tmp/bench.json" "$HERE/$variant-$path-$wl-$rep.json" 2>/dev/null || true
      rm -rf "$tmp"
    done
  done
done
