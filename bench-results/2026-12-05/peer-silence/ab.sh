#!/usr/bin/env bash
# A/B of when a peer connection is given up: BASE (at the first request
# timeout with nothing received since it left — 50 ms for an AppendEntries)
# against NEW (after 500 ms of silence while answers are owed). Durable
# create 16×16 for DUR seconds on a fresh 3-node cluster per run (one shard
# per node, every_write, executors unpinned), driven through the leader and
# through a follower, variants alternating; the node logs of each run are
# kept to count elections (the highest term reached) and connection breaks.
#   BASE=<binary> NEW=<binary> [REPS=3] [DUR=15] bash ab.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
RUN="$HERE/../turn-pipeline-ab/run-one.sh"
REPS=${REPS:-3}; DUR=${DUR:-15}
for rep in $(seq 1 "$REPS"); do
  for path in leader follower; do
    for variant in base new; do
      bin=$BASE; [ "$variant" = new ] && bin=$NEW
      out="$HERE/runs/$variant-$path-create-$rep"
      mkdir -p "$out"
      via=""; [ "$path" = follower ] && via=1
      BIN=$bin PIN=false WL=create DUR=$DUR VIA_FOLLOWER=$via OUT=$out \
        bash "$RUN" >/dev/null 2>&1 || echo "run failed: $variant $path $rep"
    done
  done
done
