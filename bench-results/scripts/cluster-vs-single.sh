#!/usr/bin/env bash
# A 3-node replicated cluster against a single node, on this machine:
#   [CELLS="workload:conns:pipeline ..."] [DUR=10] [REPS=1] [FSYNC=every_write] \
#   [PIN_CORES=false] [OUT=bench-results/<date>/cluster-vs-single] \
#   bash bench-results/scripts/cluster-vs-single.sh
# Every node and the single server run one shard (--shards 1) on a fresh
# temp data dir with the same fsync policy. The single server pins its shard
# to CPU 0 (the default). The nodes' executors are left to the kernel
# (`corestate.pin_cores: false`): three nodes on a 2-core machine cannot
# each have a core, and pinned (PIN_CORES=true) node i takes CPU i-1 mod
# CPUs (`corestate.first_core`), so two nodes share one core while the
# other core has one. The cluster's three processes
# share this machine's cores and disk, so each acknowledged write here costs
# three fsyncs on one disk (a majority, two, before the answer); on three
# machines each node syncs its own. The bench drives the leader's node and,
# separately, a follower's (which forwards every request to the leader).
# One JSON per run in OUT, and OUT/summary.md. Servers are killed by PID.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CORESTATE_HTTP_LISTEN=off
cargo build --release --bin corestate >/dev/null
cargo build --release -p corestate-bench >/dev/null
BIN=target/release/corestate
BENCH=target/release/corestate-bench
CELLS=${CELLS:-"apply:1:1 apply:16:1 apply:16:16 create:1:1 create:16:1 create:16:16 get:1:1 get:16:1 get:16:16"}
DUR=${DUR:-10}
REPS=${REPS:-1}
FSYNC=${FSYNC:-every_write}
PIN_CORES=${PIN_CORES:-false}
OUT=${OUT:-bench-results/$(date -u +%F)/cluster-vs-single}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/cluster-bench.XXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  # The servers' logs stay with the results (a run that failed needs them).
  cp "$WORK"/*.log "$OUT"/ 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

source bench-results/scripts/cluster-node.sh

# Starts the single node: SINGLE_PORT, SINGLE_PID.
start_single() {
  SINGLE_PORT=$(free_port)
  mkdir -p "$WORK/single"
  "$BIN" --bind 127.0.0.1:"$SINGLE_PORT" --data-dir "$WORK/single" --fsync "$FSYNC" --shards 1 \
    2>"$WORK/single.log" &
  SINGLE_PID=$!
  PIDS+=("$SINGLE_PID")
  wait_port "$SINGLE_PORT"
}

# Starts three nodes: PORTS (their RCP ports) and NODE_PIDS, by node.
start_cluster() { start_bench_cluster "$PIN_CORES" "$FSYNC" "$WORK"; }

# CPU seconds (user + system) a process has used so far.
cpu_secs() { awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0; }

# Over the measured window of a cluster run (after the 2 s warm-up), the
# cores each node used, one line per node ("<port> <role> <cores>"), to OUT
# beside the run's JSON: where the cluster's CPU goes, node by node.
sample_nodes() { # file lead_port
  local file=$1 lead=$2 i before=() after=()
  sleep 2
  for i in 0 1 2; do before[$i]=$(cpu_secs "${NODE_PIDS[$i]}"); done
  sleep "$DUR"
  for i in 0 1 2; do after[$i]=$(cpu_secs "${NODE_PIDS[$i]}"); done
  for i in 0 1 2; do
    local role=follower
    [ "${PORTS[$i]}" = "$lead" ] && role=leader
    echo "${PORTS[$i]} $role $(python3 -c "print(round((${after[$i]} - ${before[$i]}) / $DUR, 3))")"
  done >"$file"
}

run() { # label port pid cell rep
  local label=$1 port=$2 pid=$3 cell=$4 rep=$5
  IFS=: read -r wl conns pipe <<<"$cell"
  local json="$OUT/$label-$wl-$conns-$pipe-$rep.json"
  local sampler=
  if [ "$label" != single ]; then
    local lead
    lead=$(leader_port "${PORTS[@]}")
    sample_nodes "$OUT/$label-$wl-$conns-$pipe-$rep.cores" "$lead" &
    sampler=$!
  fi
  "$BENCH" --addr 127.0.0.1:"$port" --workload "$wl" --connections "$conns" --pipeline "$pipe" \
    --duration "$DUR" --warmup 2 --instances 1000 --server-pid "$pid" --tag "deployment=$label" \
    --tag "fsync=$FSYNC" --json "$json" >/dev/null 2>"$OUT/$label-$wl-$conns-$pipe-$rep.log" ||
    echo "bench $label $cell failed (see $OUT/$label-$wl-$conns-$pipe-$rep.log)" >&2
  if [ -n "$sampler" ]; then wait "$sampler"; fi
}

start_single
for cell in $CELLS; do
  for rep in $(seq "$REPS"); do run single "$SINGLE_PORT" "$SINGLE_PID" "$cell" "$rep"; done
done
kill -9 "$SINGLE_PID"

start_cluster
# The PID of the node serving a port (for the CPU the bench reports).
pid_of() {
  local i
  for i in 0 1 2; do [ "${PORTS[$i]}" = "$1" ] && echo "${NODE_PIDS[$i]}"; done
}
for cell in $CELLS; do
  for rep in $(seq "$REPS"); do
    # Found again before each pair of runs: an election under load (one
    # machine's disk shared by three logs) may have moved the lead.
    lead=$(leader_port "${PORTS[@]}")
    follow=${PORTS[0]}
    [ "$follow" = "$lead" ] && follow=${PORTS[1]}
    echo "$cell rep $rep: leader at port $lead" >>"$OUT/leaders.txt"
    run cluster-leader "$lead" "$(pid_of "$lead")" "$cell" "$rep"
    run cluster-follower "$follow" "$(pid_of "$follow")" "$cell" "$rep"
  done
done

python3 - "$OUT" "$DUR" "$FSYNC" "$PIN_CORES" <<'PY'
import glob, json, os, sys
out, dur, fsync, pin = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
rows = {}
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    d = json.load(open(path))
    r, c = d["results"], d["config"]
    key = (c["workload"], c["connections"], c["pipeline"])
    label = d["tags"]["deployment"]
    r["_path"] = path
    rows.setdefault(key, {}).setdefault(label, []).append(r)
lines = [
    f"# 3-node cluster vs single node, fsync {fsync}, {dur} s per run, cluster nodes pinned: {pin}",
    "",
    "Command: `bash bench-results/scripts/cluster-vs-single.sh` (one shard per process;"
    " the three nodes share this 2-core machine and its disk). Each cell: the median"
    " run of its repetitions (ops/s of every run in brackets), its p50 and its errors.",
    "",
    "| cell | single ops/s | cluster via leader ops/s | ratio | via follower ops/s | ratio |"
    " p50 µs single / leader / follower | errors (leader, follower) |",
    "|---|---:|---:|---:|---:|---:|---|---|",
]
def median(runs):
    if not runs:
        return None
    return sorted(runs, key=lambda r: r["ops_per_sec"])[len(runs) // 2]
def ops(r):
    return r["ops_per_sec"] if r else 0.0
def cell(runs):
    m = median(runs)
    if m is None:
        return "–"
    every = ", ".join(f"{r['ops_per_sec']:,.0f}" for r in runs)
    return f"{ops(m):,.0f} [{every}]" if len(runs) > 1 else f"{ops(m):,.0f}"
for (wl, conns, pipe), by in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
    runs = [by.get(k, []) for k in ("single", "cluster-leader", "cluster-follower")]
    s, l, f = (median(r) for r in runs)
    ratio = lambda x: f"{ops(x) / ops(s):.2f}×" if s and x and ops(s) else "–"
    p50 = " / ".join(str(x["latency"]["p50_us"]) if x else "–" for x in (s, l, f))
    errs = ", ".join(
        "–" if not r else "+".join(str(x["errors_total"]) for x in r) for r in runs[1:]
    )
    lines.append(
        f"| {wl} {conns}×{pipe} | {cell(runs[0])} | {cell(runs[1])} | {ratio(l)} | {cell(runs[2])} |"
        f" {ratio(f)} | {p50} | {errs} |"
    )
lines += [
    "",
    "Cores each node used over the measured window of the median run (from /proc, user +"
    " system), and its CPU per acknowledged operation:",
    "",
    "| cell | driven through | leader cores (µs/op) | followers' cores (µs/op) | single node cores (µs/op) |",
    "|---|---|---|---|---|",
]
for (wl, conns, pipe), by in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
    s = median(by.get("single", []))
    single = "–"
    if s and s.get("server_cpu"):
        sc = s["server_cpu"]
        single = f"{sc['cores_busy']:.2f} ({sc['per_op_us']:.1f})"
    for label in ("cluster-leader", "cluster-follower"):
        m = median(by.get(label, []))
        if not m:
            continue
        path = m["_path"][: -len(".json")] + ".cores"
        if not os.path.exists(path):
            continue
        nodes = [l.split() for l in open(path) if l.strip()]
        per_op = lambda c: f"{float(c):.2f} ({float(c) * 1e6 / ops(m):.1f})" if ops(m) else c
        lead = [per_op(c) for _, role, c in nodes if role == "leader"]
        rest = [per_op(c) for _, role, c in nodes if role != "leader"]
        lines.append(
            f"| {wl} {conns}×{pipe} | {label.split('-')[1]} | {', '.join(lead) or '–'} |"
            f" {', '.join(rest)} | {single} |"
        )
open(os.path.join(out, "summary.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
