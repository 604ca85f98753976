#!/usr/bin/env bash
# Start-up time after SIGKILL (log not sealed: start-up re-writes and syncs
# its tail) against after SIGTERM (sealed: nothing to re-write). Run from the
# repo root after cargo build --release --bins:
#   GEN=6 bash bench-results/scripts/startup-resync.sh
set -u
# Servers here serve RCP only: no HTTP API listener (it would bind 7402).
export CORESTATE_HTTP_LISTEN=off
S=target/release/corestate; B=target/release/corestate-bench
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_ready() { for _ in $(seq 1 2000); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.01; done; return 1; }
d=$(mktemp -d); printf 'compaction:\n  enabled: false\n' > $d/c.yaml
p=$(port); $S --bind 127.0.0.1:$p --data-dir $d/data --fsync never --config $d/c.yaml 2>$d/l1 & pid=$!; wait_ready $p
$B --addr 127.0.0.1:$p --workload apply --connections 16 --pipeline 32 --instances 1000 --duration ${GEN:-6} --warmup 0 >/dev/null 2>&1
du -sh $d/data/shard-*/wal | tr '\n' ' '; echo
for kind in KILL TERM KILL TERM KILL TERM; do
  kill -$kind $pid; wait $pid 2>/dev/null
  p=$(port); t0=$(date +%s.%N)
  $S --bind 127.0.0.1:$p --data-dir $d/data --fsync never --config $d/c.yaml 2>$d/l2 & pid=$!; wait_ready $p; t1=$(date +%s.%N)
  echo "after SIG$kind: $(python3 -c "print(round($t1-$t0,3))") s; $(grep -o 'wrote the last [0-9]* bytes' $d/l2 | tr '\n' ' ')"
done
kill -9 $pid; rm -rf $d
