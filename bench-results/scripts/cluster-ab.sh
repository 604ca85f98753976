#!/usr/bin/env bash
# A/B of two corestate binaries on fresh 3-node clusters (one shard per
# node, every_write, executors unpinned), runs alternating A, B:
#   BIN_A=<corestate> BIN_B=<corestate> [CELLS="leader:apply follower:apply"] \
#   [CONNS=16] [PIPE=16] [REPS=3] [DUR=5] [INSTANCES=1000] OUT=<dir> bash bench-results/scripts/cluster-ab.sh
# One run = bench-results/scripts/cluster-one.sh; per run OUT holds
# <A|B>-<path>-<workload>-<rep>.json (the bench's JSON) and .cpu (each
# node's CPU ticks). Summarize with cluster-ab-summary.py OUT.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:?set OUT to a directory}; mkdir -p "$OUT"
for rep in $(seq 1 "${REPS:-3}"); do
  for cell in ${CELLS:-leader:apply follower:apply}; do
    path=${cell%%:*}; wl=${cell##*:}
    for label in A B; do
      bin=$BIN_A; [ "$label" = B ] && bin=$BIN_B
      tmp=$(mktemp -d /tmp/cluster-ab.XXXX)
      via=""; [ "$path" = follower ] && via=1
      BIN=$bin PIN=false WL=$wl INSTANCES=${INSTANCES:-1000} CONNS=${CONNS:-16} PIPE=${PIPE:-16} DUR=${DUR:-5} \
        VIA_FOLLOWER=$via OUT=$tmp bash "$HERE/cluster-one.sh" >/dev/null 2>&1 ||
        echo "run failed: $label $cell $rep"
      cp "$tmp/bench.json" "$OUT/$label-$path-$wl-$rep.json" 2>/dev/null || true
      cp "$tmp/cpu-ticks.txt" "$OUT/$label-$path-$wl-$rep.cpu" 2>/dev/null || true
      rm -rf "$tmp"
    done
  done
done
