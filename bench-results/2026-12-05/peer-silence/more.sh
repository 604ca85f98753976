#!/usr/bin/env bash
# More runs of one variant, in the layout of ab.sh:
#   NAME=<variant> BIN=<binary> [REPS=3] [DUR=15] bash more.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
RUN="$HERE/../turn-pipeline-ab/run-one.sh"
REPS=${REPS:-3}; DUR=${DUR:-15}
for rep in $(seq 1 "$REPS"); do
  for path in leader follower; do
    out="$HERE/runs/$NAME-$path-create-$rep"
    mkdir -p "$out"
    via=""; [ "$path" = follower ] && via=1
    BIN=$BIN PIN=false WL=create DUR=$DUR VIA_FOLLOWER=$via OUT=$out \
      bash "$RUN" >/dev/null 2>&1 || echo "run failed: $NAME $path $rep"
  done
done
