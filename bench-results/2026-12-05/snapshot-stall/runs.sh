#!/usr/bin/env bash
# Durable creates 16x16 for 25 s against a fresh 3-node cluster (one shard
# per node, unpinned), a group snapshot ~18 s in, with an fdatasync probe on
# the same disk; REPS runs of each binary, through the leader and through a
# follower, alternating:
#   A=<corestate> B=<corestate> [REPS=3] [DUR=25] bash runs.sh
# Each run's bench JSON, node logs and probe go to runs/<label>-<path>-<rep>/.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE/../../.."
REPS=${REPS:-3}; DUR=${DUR:-25}
for rep in $(seq 1 "$REPS"); do
  for path in leader follower; do
    for label in A B; do
      bin=${!label}
      out="$HERE/runs/$label-$path-$rep"; mkdir -p "$out"
      python3 "$HERE/probe.py" /tmp $((DUR + 12)) >"$out/probe.txt" &
      probe=$!
      via=""; [ "$path" = follower ] && via=1
      env BIN="$bin" PIN=false WL=create DUR="$DUR" VIA_FOLLOWER="$via" OUT="$out" \
        bash bench-results/scripts/cluster-one.sh >"$out/run.txt" 2>&1 || echo "run failed: $out"
      wait $probe
    done
  done
done
