#!/usr/bin/env bash
# Server memory per instance: a fresh server (2 shards, fsync never), the
# bench creates N instances (its precreate step, a 32-byte string in each
# context) and then runs WORKLOAD for DUR seconds over them; the server's
# RSS is read from /proc before and after.
#   BIN=<corestate> N=300000 WORKLOAD=get|apply DUR=3 OUT=<file> memory.sh
set -eu
export CORESTATE_HTTP_LISTEN=off
BENCH=${BENCH:-target/release/corestate-bench}
N=${N:-300000}; WORKLOAD=${WORKLOAD:-get}; DUR=${DUR:-3}
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
dir=$(mktemp -d /tmp/mem.XXXX)
"$BIN" --bind 127.0.0.1:$port --data-dir "$dir" --fsync never 2>"$dir/log" &
pid=$!
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
rss() { awk '/VmRSS/{print $2}' /proc/$pid/status; }
before=$(rss)
"$BENCH" --addr 127.0.0.1:$port --workload "$WORKLOAD" --connections 16 --pipeline 16 \
  --duration "$DUR" --warmup 0 --instances "$N" --payload-bytes 32 >"$dir/bench.txt" 2>&1
cp "$dir/bench.txt" "${OUT:-/tmp/mem}.$(basename "$BIN").$WORKLOAD.txt"
after=$(rss)
ops=$(grep -E "^ *throughput" "$dir/bench.txt" | head -1 | tr -s " " || true)
kill -9 $pid; wait $pid 2>/dev/null || true
echo "$(basename "$BIN") N=$N workload=$WORKLOAD dur=${DUR}s rss_before_kib=$before rss_after_kib=$after bytes_per_instance=$(( (after-before)*1024/N )) $ops" | tee -a "${OUT:-/dev/stdout}"
rm -rf "$dir"
