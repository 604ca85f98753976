#!/bin/bash
# One run (from the repository root):
#   BIN_DIR=<dir holding corestate-base and corestate-tape> OUTDIR=bench-results/2026-12-06/tape-parse-ab REP=<n> \
#     bash bench-results/2026-12-06/tape-parse-ab/run-one.sh <base|tape> <fsync> <workload> <conns> <pipeline>
# A fresh release server (2 shards) on a fresh port and data dir, benched 5 s
# after 1 s of warm-up, killed by PID; prints ops/s, p50, p99, server CPU per
# op. base = the release binary of the commit before (requests parsed into a
# serde_json tree through serde's visitor), tape = the commit that reads the
# envelope from simd-json's tape with kept buffers.
cd "$(dirname "$0")/../../.."
V=$1; FS=$2; WL=$3; C=$4; P=$5
BIN=${BIN_DIR:-target/ab}/corestate-$V
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
D=$(mktemp -d /tmp/tape-ab.XXXX)
CORESTATE_HTTP_LISTEN=off $BIN --bind 127.0.0.1:$PORT --data-dir $D --fsync $FS >$D/server.log 2>&1 &
SP=$!
sleep 1.5
J=${OUTDIR:-/tmp}/$FS-$WL-$C-$P-$V-${REP:-0}.json
target/release/corestate-bench --addr 127.0.0.1:$PORT --workload $WL --connections $C --pipeline $P \
  --duration 5 --warmup 1 --instances 1000 --payload-bytes 32 --server-pid $SP --no-progress-bar --json $J >/dev/null 2>&1
kill -9 $SP; wait $SP 2>/dev/null
rm -rf $D
python3 - $J $V "$FS $WL $C x $P" <<'PY'
import json,sys
r=json.load(open(sys.argv[1]))["results"]
print(sys.argv[3], sys.argv[2], round(r["ops_per_sec"]), "p50", r["latency"]["p50_us"], "p99", r["latency"]["p99_us"], "cpu/op", round(r["server_cpu"]["per_op_us"],2))
PY
