#!/usr/bin/env bash
# Three ways to keep a shard's instances, single node (--shards 1,
# every_write, fresh data dir per run), runs alternating:
#   one    — one hash table of instances (1028a85)
#   parts  — 256 staggered hash tables of instances (bff4360)
#   store  — instances in chunks that never move, 256 staggered index
#            tables of (hash, slot) (this change)
# Usage (from the repository's root):
#   ONE=<binary> PARTS=<binary> STORE=<binary> REPS=3 \
#     bash bench-results/2026-12-05/instance-store-ab/ab.sh
set -euo pipefail
HERE=bench-results/2026-12-05/instance-store-ab
RUN=bench-results/2026-12-05/thp-off-ab/run-one.sh
for rep in $(seq "${REPS:-3}"); do
  for v in one parts store; do
    case $v in one) bin=$ONE ;; parts) bin=$PARTS ;; store) bin=$STORE ;; esac
    BIN=$bin WL=create DUR=15 OUT=$HERE/$v-create-$rep.json bash $RUN
    BIN=$bin WL=get DUR=5 OUT=$HERE/$v-get-$rep.json bash $RUN
    BIN=$bin WL=apply DUR=5 OUT=$HERE/$v-apply-$rep.json bash $RUN
  done
done
