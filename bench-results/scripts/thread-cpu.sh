#!/usr/bin/env bash
# The server's CPU per thread (shard executors, io_uring workers) during a
# bench window, per operation. Run from the repo root after a release build:
#   bash bench-results/scripts/thread-cpu.sh get 16 16 every_write 2 [secs]
set -u
# Servers here serve RCP only: no HTTP API listener (it would bind 7402).
export CORESTATE_HTTP_LISTEN=off
wl=$1; c=$2; p=$3; fs=$4; shards=$5; secs=${6:-5}
S=${S:-target/release/corestate}; B=${B:-target/release/corestate-bench}
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
d=$(mktemp -d /tmp/thr.XXXX)
$S --bind 127.0.0.1:$port --data-dir $d --fsync $fs --shards $shards 2>$d/log & pid=$!
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
$B --addr 127.0.0.1:$port --workload $wl --connections $c --pipeline $p --duration $((secs+2)) --warmup 1 --instances 1000 > $d/bench.out 2>&1 &
bp=$!
sleep 1.5
snap() { for t in /proc/$pid/task/*; do n=$(cat $t/comm); read -r -a f < $t/stat; echo "$n $((${f[13]}+${f[14]}))"; done; }
a=$(snap); sleep $secs; b=$(snap)
wait $bp
ops=$(grep -oP 'throughput\s+\K[0-9,]+' $d/bench.out | tr -d ,)
echo "$wl $c×$p $fs shards=$shards: $ops ops/s"
python3 - "$a" "$b" "$secs" "$ops" <<'PY'
import sys,collections
def parse(s):
    d=collections.Counter()
    for l in s.strip().splitlines():
        n,v=l.rsplit(' ',1); d[n]+=int(v)
    return d
a,b=parse(sys.argv[1]),parse(sys.argv[2]); secs=float(sys.argv[3]); ops=float(sys.argv[4])
hz=100
for n in sorted(b):
    cpu=(b[n]-a.get(n,0))/hz/secs
    if cpu>0.005: print(f"  {n:20s} {cpu:5.2f} cores  {cpu*1e6/ops:6.2f} us/op")
PY
kill -9 $pid 2>/dev/null; rm -rf $d
