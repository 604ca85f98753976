#!/usr/bin/env bash
# A/B of two corestate binaries under the same bench, runs alternating:
#   BIN_A=<corestate> BIN_B=<corestate> [BENCH=<corestate-bench>] \
#   [CELLS="workload:conns:pipeline:fsync ..."] [REPS=3] [DUR=5] [OUT=dir] \
#   [ARGS_A="--shards 1"] [ARGS_B="--shards 2"] [BENCH_ARGS="--subscribers 4"] [INSTANCES=1000] \
#   bash bench-results/scripts/ab.sh
# Each run starts a fresh server (--shards 2 unless ARGS_A/ARGS_B say
# otherwise, temp data dir), benches it with
# --server-pid (CPU per request) and kills it by PID; one JSON per run in OUT,
# one summary line per run on stdout. Medians: ab-summary.py OUT.
set -u
# Servers here serve RCP only: no HTTP API listener (it would bind 7402).
export CORESTATE_HTTP_LISTEN=off
BENCH=${BENCH:-target/release/corestate-bench}
REPS=${REPS:-3}
OUT=${OUT:-target/ab-out}
mkdir -p "$OUT"
run_one() { # bin label cell rep server-args
  local bin=$1 label=$2 cell=$3 rep=$4 args=$5
  IFS=: read -r wl conns pipe fsync <<<"$cell"
  local port; port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  local dir; dir=$(mktemp -d /tmp/ab.XXXX)
  "$bin" --bind 127.0.0.1:$port --data-dir "$dir" --fsync "$fsync" $args 2>"$dir/log" &
  local pid=$!
  for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
  local json="$OUT/$label-$wl-$conns-$pipe-$fsync-$rep.json"
  "$BENCH" --addr 127.0.0.1:$port --workload "$wl" --connections "$conns" --pipeline "$pipe" \
     --duration ${DUR:-5} --warmup 1 --instances ${INSTANCES:-1000} ${BENCH_ARGS:-} --server-pid $pid --json "$json" >/dev/null 2>&1
  kill -9 $pid; wait $pid 2>/dev/null; rm -rf "$dir"
  python3 - "$json" "$label" "$cell" <<'PY'
import json,sys
d=json.load(open(sys.argv[1])); r=d["results"]
ops=r.get("ops_per_sec") or r.get("throughput",{}).get("ops_per_sec")
def find(d,keys):
    for k in keys:
        if k in d: return d[k]
    return None
print(sys.argv[2], sys.argv[3], json.dumps({k:r[k] for k in r if not isinstance(r[k],(dict,list))})[:400])
PY
}
for cell in ${CELLS:-"apply:16:16:every_write get:16:16:every_write apply:1:1:every_write"}; do
  for rep in $(seq $REPS); do
    run_one "$BIN_A" A "$cell" $rep "${ARGS_A:---shards 2}"
    run_one "$BIN_B" B "$cell" $rep "${ARGS_B:---shards 2}"
  done
done
