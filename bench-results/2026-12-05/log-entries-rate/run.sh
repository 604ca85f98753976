#!/usr/bin/env bash
# How many Raft entries (and bytes) a group writes per second under apply 16x16.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export CORESTATE_HTTP_LISTEN=off
cargo build --release --bin corestate >/dev/null
cargo build --release -p corestate-bench >/dev/null
BIN=target/release/corestate; BENCH=target/release/corestate-bench
WORK=$(mktemp -d /tmp/erate.XXXX); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
source bench-results/scripts/cluster-node.sh
peers=(); PORTS=()
for i in 1 2 3; do peers+=("$(free_port)"); PORTS+=("$(free_port)"); done
for i in 1 2 3; do
  mkdir -p "$WORK/node-$i"
  bench_node_yaml "$i" false "${peers[@]}" >"$WORK/node-$i.yaml"
  "$BIN" --config "$WORK/node-$i.yaml" --bind 127.0.0.1:"${PORTS[$((i - 1))]}" \
    --data-dir "$WORK/node-$i" --fsync every_write --shards 1 2>"$WORK/node-$i.log" &
  PIDS+=($!)
done
for p in "${PORTS[@]}"; do wait_port "$p"; done
sleep 2
status() { python3 - "$1" <<'PY'
import json, socket, struct, sys
port=int(sys.argv[1])
def frame(b): return b"RCPX"+struct.pack(">HHHII",1,0,0,len(b),0)+b
s=socket.create_connection(("127.0.0.1",port),timeout=5)
s.sendall(frame(json.dumps({"type":"request","id":"0","op":"HELLO","params":{"protocol_version":1}}).encode())+frame(json.dumps({"type":"request","id":"1","op":"REPLICATION_STATUS","params":{}}).encode()))
buf=b"";ans=[]
while len(ans)<2:
    buf+=s.recv(65536)
    while len(buf)>=18:
        n=struct.unpack(">I",buf[10:14])[0]
        if len(buf)<18+n: break
        ans.append(json.loads(buf[18:18+n])); buf=buf[18+n:]
print(json.dumps(ans[1]["result"]))
PY
}
status "${PORTS[0]}" > "$WORK/before.json"
"$BENCH" --addr 127.0.0.1:"${PORTS[0]}" --workload "${WL:-apply}" --connections 16 --pipeline 16 \
  --duration 10 --warmup 1 --instances 1000 --json "$WORK/bench.json" >/dev/null 2>&1
status "${PORTS[0]}" > "$WORK/after.json"
cat "$WORK/after.json" | head -c 3000; echo
python3 -c "import json;d=json.load(open('$WORK/bench.json'))['results'];print('ops',d['ops'],'ops/s',d['ops_per_sec'])"
du -sb "$WORK"/node-1; ls -la "$WORK"/node-1/* | head
