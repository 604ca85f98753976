#!/usr/bin/env bash
# One single-node cell (--shards 1, every_write, fresh data dir):
#   BIN=<corestate binary> WL=create|apply [CONNS=16 PIPE=16 DUR=5] OUT=<file.json> run-one.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
export CORESTATE_HTTP_LISTEN=off
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
D=$(mktemp -d /tmp/single.XXXX)
${BIN:-target/release/corestate} --bind 127.0.0.1:$PORT --data-dir $D --fsync every_write --shards 1 2>$D.log &
PID=$!
for _ in $(seq 200); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.05; done
target/release/corestate-bench --addr 127.0.0.1:$PORT --workload $WL --connections ${CONNS:-16} --pipeline ${PIPE:-16} \
  --duration ${DUR:-5} --warmup 2 --instances 1000 --server-pid $PID --json $OUT >/dev/null 2>&1 || true
kill -9 $PID; rm -rf $D $D.log
