#!/usr/bin/env bash
# A/B of one hash table against 256 partitions for a shard's instances:
# single node (--shards 1, every_write, fresh data dir per run), runs
# alternating base / parts. Usage (from the repository's root):
#   BASE=/tmp/corestate-base PARTS=/tmp/corestate-parts REPS=3 \
#     bash bench-results/2026-12-05/instance-table-ab/ab.sh
set -euo pipefail
HERE=bench-results/2026-12-05/instance-table-ab
ONE=bench-results/2026-12-05/thp-off-ab/run-one.sh
for rep in $(seq ${REPS:-3}); do
  for v in base parts; do
    bin=$([ $v = base ] && echo $BASE || echo $PARTS)
    BIN=$bin WL=create DUR=15 OUT=$HERE/$v-create-$rep.json bash $ONE
    BIN=$bin WL=get DUR=5 OUT=$HERE/$v-get-$rep.json bash $ONE
    BIN=$bin WL=apply DUR=5 OUT=$HERE/$v-apply-$rep.json bash $ONE
  done
done
