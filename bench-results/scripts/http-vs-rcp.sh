#!/usr/bin/env bash
# HTTP/JSON API vs RCP under the same bench (issue 15 item 9):
#   [BIN=target/release/corestate] [BENCH=target/release/corestate-bench] \
#   [REPS=3] [DUR=10] [WARMUP=2] [FSYNC=every_write] [SHARDS=2] [OUT=dir] \
#   bash bench-results/scripts/http-vs-rcp.sh
# Cells: apply and get at 16 connections x pipeline 1 over HTTP and over RCP
# (the fair comparison: HTTP/1.1 keeps one request outstanding per
# connection), plus RCP 16 x 16 as a reference line. Per repetition the
# cells run alternating (workload by workload: HTTP, RCP, RCP 16x16), each
# against a fresh release server on fresh ports (RCP and HTTP; glommio sets
# SO_REUSEPORT, so a leftover server would share a reused port) with a temp
# data dir, benched with --server-pid (server CPU per request) and killed by
# its PID. One JSON per run and summary.md (medians over the repetitions)
# in OUT (default bench-results/<UTC date>/http-vs-rcp/).
set -u
BIN=${BIN:-target/release/corestate}
BENCH=${BENCH:-target/release/corestate-bench}
REPS=${REPS:-3}
DUR=${DUR:-10}
WARMUP=${WARMUP:-2}
FSYNC=${FSYNC:-every_write}
SHARDS=${SHARDS:-2}
OUT=${OUT:-bench-results/$(date -u +%F)/http-vs-rcp}
# Seconds (in 0.05 s steps) a fresh server gets to open both listeners.
READY_STEPS_MAX=200
mkdir -p "$OUT"

free_port() {
  python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}

listening() { (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# run_one WORKLOAD TRANSPORT PIPELINE REP
run_one() {
  local wl=$1 transport=$2 pipe=$3 rep=$4
  local port http_port dir pid json
  port=$(free_port)
  http_port=$(free_port)
  while [ "$http_port" = "$port" ]; do http_port=$(free_port); done
  dir=$(mktemp -d /tmp/http-vs-rcp.XXXX)
  "$BIN" --bind "127.0.0.1:$port" --http-listen "127.0.0.1:$http_port" \
    --data-dir "$dir" --fsync "$FSYNC" --shards "$SHARDS" 2>"$dir/log" &
  pid=$!
  for _ in $(seq $READY_STEPS_MAX); do
    listening "$port" && listening "$http_port" && break
    sleep 0.05
  done
  json="$OUT/$wl-$transport-16x$pipe-$rep.json"
  local http_args=()
  [ "$transport" = http ] && http_args=(--http-addr "127.0.0.1:$http_port")
  "$BENCH" --addr "127.0.0.1:$port" --transport "$transport" "${http_args[@]}" \
    --workload "$wl" --connections 16 --pipeline "$pipe" \
    --duration "$DUR" --warmup "$WARMUP" --instances 1000 --server-pid "$pid" \
    --label "$transport" --tag "transport=$transport" --tag "rep=$rep" --tag "fsync=$FSYNC" \
    --quiet --json "$json" >"$OUT/$wl-$transport-16x$pipe-$rep.txt" 2>&1
  echo "$wl $transport 16x$pipe rep $rep: exit $?"
  kill -9 "$pid"
  wait "$pid" 2>/dev/null
  rm -rf "$dir"
}

for rep in $(seq "$REPS"); do
  for wl in apply get; do
    run_one "$wl" http 1 "$rep"
    run_one "$wl" rcp 1 "$rep"
    run_one "$wl" rcp 16 "$rep"
  done
done

python3 - "$OUT" "$FSYNC" "$SHARDS" "$DUR" <<'PY' >"$OUT/summary.md"
import glob, json, os, statistics, sys
out, fsync, shards, dur = sys.argv[1:5]
cells = {}
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    d = json.load(open(path))
    c, r = d["config"], d["results"]
    key = (c["workload"], c.get("transport", "rcp"), c["connections"], c["pipeline"])
    cpu = (r.get("server_cpu") or {}).get("per_op_us")
    others = (r.get("machine_load") or {}).get("other_cores_busy")
    cells.setdefault(key, []).append(
        (r["ops_per_sec"], r["latency"]["p50_us"], r["latency"]["p99_us"], cpu,
         r["errors_total"], d["ok"], others))
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def fmt(x, spec):
    return "n/a" if x is None else format(x, spec)
print(f"# HTTP/JSON API vs RCP (fsync {fsync}, {shards} shards, {dur} s per run)\n")
print("Medians over the repetitions; server CPU from /proc of the server PID; "
      "\"others\": cores kept busy by other processes during the window "
      "(noise).\n")
print("| workload | transport | conns x pipeline | runs | ops/s | p50 µs | p99 µs "
      "| server CPU µs/op | errors | all ok | others (cores) |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
order = {"http": 0, "rcp": 1}
for key in sorted(cells, key=lambda k: (k[0], k[3], order.get(k[1], 9))):
    runs = cells[key]
    wl, tr, conns, pipe = key
    print(f"| {wl} | {tr.upper()} | {conns} x {pipe} | {len(runs)} "
          f"| {fmt(med([x[0] for x in runs]), '.0f')} "
          f"| {fmt(med([x[1] for x in runs]), '.0f')} "
          f"| {fmt(med([x[2] for x in runs]), '.0f')} "
          f"| {fmt(med([x[3] for x in runs]), '.1f')} "
          f"| {sum(x[4] for x in runs)} | {all(x[5] for x in runs)} "
          f"| {fmt(med([x[6] for x in runs]), '.2f')} |")
PY
cat "$OUT/summary.md"
