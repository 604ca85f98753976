#!/bin/bash
# One run (from the repository root):
#   OUTDIR=bench-results/2026-12-06/blocking-sync-ab REP=<n> \
#     bash bench-results/2026-12-06/blocking-sync-ab/run-one.sh <variant> <fsync> <workload> <conns> <pipeline>
# A fresh release server (2 shards) on a fresh port and data dir, benched 5 s
# after 1 s of warm-up, killed by PID; prints ops/s, p50, p99, server CPU
# per op (and the watch report). <variant> set the prototype's environment
# overrides, which are not in main: base = XNOBLOCK=1 (every commit through
# io_uring, the code before), light = XBLOCKMAX=4 (blocking after a turn of
# at most 4 messages, what landed), t16 = XBLOCKMAX=16, anything else = blocking whenever the
# mailbox was empty. Runs of the landed binary were made with variant light.
cd "$(dirname "$0")/../../.."
L=$1; FS=$2; WL=$3; C=$4; P=$5
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
D=$(mktemp -d /tmp/inl-ab.XXXX)
unset XNOBLOCK XBLOCKMAX; if [ "$L" = base ]; then export XNOBLOCK=1; fi; if [ "$L" = light ]; then export XBLOCKMAX=4; fi; if [ "$L" = t16 ]; then export XBLOCKMAX=16; fi
CORESTATE_HTTP_LISTEN=off target/release/corestate --bind 127.0.0.1:$PORT --data-dir $D --fsync $FS >$D/server.log 2>&1 &
SP=$!
sleep 1.5
J=${OUTDIR:-/tmp}/$FS-$WL-$C-$P-$L-${REP:-0}.json
target/release/corestate-bench --addr 127.0.0.1:$PORT --workload $WL --connections $C --pipeline $P \
  --duration 5 --warmup 1 --instances 1000 --payload-bytes 32 --server-pid $SP --no-progress-bar --json $J >/dev/null 2>&1
kill -9 $SP; wait $SP 2>/dev/null
rm -rf $D
python3 - $J $L "$FS $WL $C x $P" <<'PY'
import json,sys
d=json.load(open(sys.argv[1])); r=d["results"]
w=r.get("watch") or {}
extra=f" event p99 {w['latency']['p99_us']} delivered {w['delivered_fraction_min']}" if w else ""
print(sys.argv[3], sys.argv[2], round(r["ops_per_sec"]), "p50", r["latency"]["p50_us"], "p99", r["latency"]["p99_us"], "cpu/op", round(r["server_cpu"]["per_op_us"],1), extra)
PY
