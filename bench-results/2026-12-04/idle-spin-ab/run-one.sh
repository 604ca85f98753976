#!/bin/bash
# One run: run-one.sh <fsync> <workload> <conns> <pipeline> (from the repo root).
# A fresh server (2 shards) on a fresh port and data dir, benched 5 s after
# 1 s of warm-up, killed by PID. JSON=<file> keeps the harness's report.
set -e
FS=$1; WL=$2; C=$3; P=$4
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
D=$(mktemp -d /tmp/spin-ab.XXXX)
CORESTATE_HTTP_LISTEN=off target/release/corestate --bind 127.0.0.1:$PORT --data-dir $D --fsync $FS >$D/server.log 2>&1 &
SP=$!
sleep 1.5
target/release/corestate-bench --addr 127.0.0.1:$PORT --workload $WL --connections $C --pipeline $P \
  --duration 5 --warmup 1 --instances 1000 --payload-bytes 32 --server-pid $SP --no-progress-bar \
  --json ${JSON:-/tmp/spin-ab-last.json} 2>&1 | tail -12
kill $SP; wait $SP 2>/dev/null || true
rm -rf $D
