#!/usr/bin/env bash
# Hostile soak (issue 11, item 15): the same normal load against corestate,
# without and with hostile clients beside it (corestate-bench --hostile:
# slowloris connections, unread GET pipelines of a 1 MiB context, big LISTs
# read slowly), REPS repetitions of each, alternating (the order flips each
# repetition). Every run gets a fresh server (so its peak RSS is the run's),
# a fresh port and a fresh data directory; the server is stopped by its PID.
# Writes
#   OUT/runs/<run>.json   one harness report per run
#   OUT/logs/             server and harness output (not committed)
#   OUT/commands.txt      every command exactly as run
#   OUT/results.json      medians without / with hostile clients
#   OUT/summary.md        the tables
# Run from anywhere:  bash bench-results/scripts/hostile-soak.sh
#
# Settings from the environment (defaults in brackets):
#   WORKLOAD [mix] MIX [apply=70,get=30,create=0] CONNECTIONS [16]
#   PIPELINE [16] DURATION [10] WARMUP [2] (seconds) INSTANCES [4000]
#   HOSTILE [slowloris=32,unread=8,biglist=4] REPS [3] SHARDS [2]
#   FSYNC [every_write] OUT [bench-results/<UTC date>/hostile-soak]
#   DATA_ROOT [target/bench-data] (a real disk: fsync cost is part of it)
#   CORESTATE_BIN [target/release/corestate, built here]: measure a binary
#   built elsewhere (e.g. from a clean checkout of a commit, named by
#   CORESTATE_COMMIT for machine.txt); only the harness is built then
#   QUIET_LOAD_MAX [1.0] first wait (polling every QUIET_POLL_SECS [60], up
#   to QUIET_WAIT_MAX_SECS [1800]) until the 1-minute load average is below
#   it and no cargo/rustc runs; after that, measure anyway and say so.
set -euo pipefail
# Servers here serve RCP only: no HTTP API listener (it would bind 7402).
export CORESTATE_HTTP_LISTEN=off

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

WORKLOAD=${WORKLOAD:-mix}
MIX=${MIX:-apply=70,get=30,create=0}
CONNECTIONS=${CONNECTIONS:-16}
PIPELINE=${PIPELINE:-16}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
INSTANCES=${INSTANCES:-4000}
HOSTILE=${HOSTILE:-slowloris=32,unread=8,biglist=4}
REPS=${REPS:-3}
SHARDS=${SHARDS:-2}
FSYNC=${FSYNC:-every_write}
OUT=${OUT:-$ROOT/bench-results/$(date -u +%Y-%m-%d)/hostile-soak}
DATA_ROOT=${DATA_ROOT:-$ROOT/target/bench-data}
QUIET_LOAD_MAX=${QUIET_LOAD_MAX:-1.0}
QUIET_POLL_SECS=${QUIET_POLL_SECS:-60}
QUIET_WAIT_MAX_SECS=${QUIET_WAIT_MAX_SECS:-1800}
BENCH_BIN=$ROOT/target/release/corestate-bench
# How long a fresh server may take to accept connections.
SERVER_READY_TIMEOUT_SECS=20
# How long a server may take to exit after SIGTERM before SIGKILL.
SERVER_STOP_TIMEOUT_SECS=10

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

if [[ -z "${CORESTATE_BIN:-}" ]]; then
    log "building corestate and the harness"
    cargo build --release --bins -p corestate -p corestate-bench >&2
    CORESTATE_BIN=$ROOT/target/release/corestate
    CORESTATE_BUILT="built here from git $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src shards Cargo.toml Cargo.lock 2>/dev/null || echo ' + uncommitted changes in src/ or shards/')"
else
    log "building the harness ($CORESTATE_BIN given)"
    cargo build --release --bins -p corestate-bench >&2
    CORESTATE_BUILT="given${CORESTATE_COMMIT:+, built from commit $CORESTATE_COMMIT}"
fi
mkdir -p "$OUT/runs" "$OUT/logs" "$DATA_ROOT"

# --- a quiet machine ------------------------------------------------------
load_1m() { cut -d' ' -f1 /proc/loadavg; }
builds_running() { pgrep -c -x 'cargo|rustc' || true; }
waited=0
until awk -v l="$(load_1m)" -v m="$QUIET_LOAD_MAX" 'BEGIN { exit !(l < m) }' &&
    [[ $(builds_running) -eq 0 ]]; do
    if ((waited >= QUIET_WAIT_MAX_SECS)); then
        break
    fi
    log "machine busy (load $(load_1m), $(builds_running) cargo/rustc); waiting ${QUIET_POLL_SECS}s"
    sleep "$QUIET_POLL_SECS"
    waited=$((waited + QUIET_POLL_SECS))
done
if awk -v l="$(load_1m)" -v m="$QUIET_LOAD_MAX" 'BEGIN { exit !(l < m) }' &&
    [[ $(builds_running) -eq 0 ]]; then
    quiet="quiet: 1-minute load average $(load_1m) < $QUIET_LOAD_MAX and no cargo/rustc, after waiting ${waited} s"
else
    quiet="NOT QUIET: after waiting ${waited} s the 1-minute load average was $(load_1m) (limit $QUIET_LOAD_MAX) with $(builds_running) cargo/rustc running; measured anyway"
fi
log "$quiet"
{
    echo "started $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), harness from git $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- benches 2>/dev/null || echo ' (+ uncommitted changes in benches/)')"
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r); corestate and corestate-bench share these cores"
    echo "$quiet"
    echo "uptime: $(uptime)"
    echo "corestate binary: $CORESTATE_BIN ($CORESTATE_BUILT), file time $(date -u -r "$CORESTATE_BIN" +%Y-%m-%dT%H:%M:%SZ)"
    echo "settings: WORKLOAD=$WORKLOAD MIX=$MIX CONNECTIONS=$CONNECTIONS PIPELINE=$PIPELINE DURATION=$DURATION WARMUP=$WARMUP INSTANCES=$INSTANCES HOSTILE=$HOSTILE REPS=$REPS SHARDS=$SHARDS FSYNC=$FSYNC"
    echo "top at the start:"
    top -bn1 | head -15 | sed 's/^/    /'
} >"$OUT/machine.txt"
: >"$OUT/commands.txt"

# --- one server per run -----------------------------------------------------
SERVER_PID=""
SERVER_DIR=""

# A port nobody listens on (corestate sets SO_REUSEPORT: a leftover server
# on a reused port would share the connections).
fresh_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

stop_server() {
    if [[ -n "$SERVER_PID" ]]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        local waited=0
        while kill -0 "$SERVER_PID" 2>/dev/null && ((waited < SERVER_STOP_TIMEOUT_SECS * 10)); do
            sleep 0.1
            waited=$((waited + 1))
        done
        if kill -0 "$SERVER_PID" 2>/dev/null; then
            log "server $SERVER_PID ignored SIGTERM; SIGKILL"
            kill -KILL "$SERVER_PID" 2>/dev/null || true
        fi
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
    if [[ -n "$SERVER_DIR" ]]; then
        rm -rf "$SERVER_DIR"
        SERVER_DIR=""
    fi
}
trap stop_server EXIT

# start_server LOG -> SERVER_PID, SERVER_PORT
start_server() {
    local logfile=$1
    SERVER_PORT=$(fresh_port)
    SERVER_DIR=$(mktemp -d "$DATA_ROOT/hostile-soak-XXXXXX")
    local cmd=("$CORESTATE_BIN" --bind "127.0.0.1:$SERVER_PORT" --data-dir "$SERVER_DIR"
        --shards "$SHARDS" --fsync "$FSYNC")
    "${cmd[@]}" >"$logfile" 2>&1 &
    SERVER_PID=$!
    echo "${cmd[*]}   # pid $SERVER_PID" >>"$OUT/commands.txt"
    local waited=0
    until (exec 3<>"/dev/tcp/127.0.0.1/$SERVER_PORT") 2>/dev/null; do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            log "corestate exited during start-up; see $logfile"
            tail -20 "$logfile" >&2
            exit 2
        fi
        if ((waited >= SERVER_READY_TIMEOUT_SECS * 10)); then
            log "corestate did not accept connections within ${SERVER_READY_TIMEOUT_SECS}s"
            exit 2
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
}

# run_one NAME HOSTILE|none REP
failed=0
run_one() {
    local name=$1 hostile=$2 rep=$3
    start_server "$OUT/logs/$name.server.log"
    local cmd=("$BENCH_BIN" --addr "127.0.0.1:$SERVER_PORT" --workload "$WORKLOAD"
        --connections "$CONNECTIONS" --pipeline "$PIPELINE" --duration "$DURATION"
        --warmup "$WARMUP" --instances "$INSTANCES" --server-pid "$SERVER_PID"
        --json "$OUT/runs/$name.json" --no-progress-bar --label "$name"
        --tag "hostile=$hostile" --tag "rep=$rep")
    [[ $WORKLOAD == mix ]] && cmd+=(--mix "$MIX")
    [[ $hostile == none ]] || cmd+=(--hostile "$hostile")
    echo "${cmd[*]}" >>"$OUT/commands.txt"
    local status=0
    "${cmd[@]}" >"$OUT/logs/$name.bench.txt" 2>"$OUT/logs/$name.bench.err" || status=$?
    stop_server
    if ((status != 0)); then
        failed=$((failed + 1))
        log "$name: FAILED (exit $status), see $OUT/logs/$name.bench.*"
        tail -5 "$OUT/logs/$name.bench.err" >&2 || true
    fi
    log "$name: $(grep -m1 'throughput' "$OUT/logs/$name.bench.txt" | xargs); $(grep -m1 'latency' "$OUT/logs/$name.bench.txt" | xargs); $(grep -m1 -o 'peak RSS [0-9.]* MiB' "$OUT/logs/$name.bench.txt")"
}

for rep in $(seq 1 "$REPS"); do
    order=(none hostile)
    ((rep % 2 == 0)) && order=(hostile none)
    for which in "${order[@]}"; do
        if [[ $which == none ]]; then
            run_one "without-r$rep" none "$rep"
        else
            run_one "with-r$rep" "$HOSTILE" "$rep"
        fi
    done
done

# --- summary ----------------------------------------------------------------
python3 - "$OUT" <<'PY'
import json, pathlib, statistics, sys

out = pathlib.Path(sys.argv[1])
runs = sorted((json.loads(p.read_text()) for p in (out / "runs").glob("*.json")),
              key=lambda r: r["started_unix_secs"])
mib = lambda kib: kib / 1024
NOISY_OTHER_CORES = 0.25  # the harness's report::NOISY_OTHER_CORES

def row(r):
    res, mem = r["results"], r["results"].get("server_memory") or {}
    return {
        "run": r["label"], "hostile": r["tags"]["hostile"], "ok": r["ok"],
        "ops_per_sec": res["ops_per_sec"], "p50_us": res["latency"]["p50_us"],
        "p99_us": res["latency"]["p99_us"], "p999_us": res["latency"]["p999_us"],
        "max_us": res["latency"]["max_us"], "errors": res["errors_total"],
        "problems": len(r["problems"]), "max_stall_ms": res["max_stall_ms"],
        "rss_start_mib": mib(mem.get("rss_start_kib", 0)),
        "rss_peak_mib": mib(mem.get("rss_peak_kib", 0)),
        "vm_hwm_mib": mib(mem.get("vm_hwm_kib", 0)),
        "server_cores_busy": (res.get("server_cpu") or {}).get("cores_busy"),
        "harness_cores_busy": res["harness_cpu"]["cores_busy"],
        "other_cores_busy": res["machine_load"]["other_cores_busy"],
        "load_1m": res["machine_load"]["load_average_1m_start"],
    }

rows = [row(r) for r in runs]
groups = {"without": [x for x in rows if x["hostile"] == "none"],
          "with": [x for x in rows if x["hostile"] != "none"]}
keys = ["ops_per_sec", "p50_us", "p99_us", "p999_us", "max_us", "rss_peak_mib", "vm_hwm_mib",
        "rss_start_mib", "server_cores_busy", "other_cores_busy"]
medians = {g: {k: statistics.median(x[k] for x in xs) for k in keys} | {
               "runs": len(xs), "errors": sum(x["errors"] for x in xs),
               "failed_runs": sum(not x["ok"] for x in xs)}
           for g, xs in groups.items() if xs}
hostile_runs = [r for r in runs if r["results"].get("hostile")]
(out / "results.json").write_text(json.dumps({"runs": rows, "medians": medians}, indent=2) + "\n")

machine = (out / "machine.txt").read_text()
first = runs[0]
c = first["config"]
md = ["# Hostile soak: the normal load without and with hostile clients", ""]
md += [f"Normal load: `{c['workload']}` ({c['mix']}), {c['connections']} connections x "
       f"{c['pipeline']} pipeline, {c['instances']} pre-created instances, payload "
       f"{c['payload_bytes']} B, {c['duration_secs']:g} s measured after {c['warmup_secs']:g} s "
       f"warm-up; every response verified. Server: corestate `--shards 2 --fsync every_write`, "
       f"fresh for every run (so VmHWM is the run's), data on a real disk.",
       "",
       f"Hostile clients (`--hostile {hostile_runs[0]['config']['hostile'] if hostile_runs else '-'}`), "
       "opened after setup and held open through warm-up, measured window and drain: "
       "*slowloris*: HELLO, then an RCPX header announcing a 16 MiB payload and 35 bytes of it, "
       "then one byte every 2 s; *unread*: GET_INSTANCE of one instance with a 1 MiB context, "
       "pipelined as fast as the socket takes them, never read; *biglist*: LIST_INSTANCES "
       '`{"limit": 10000}` pipelined, answers read at 256 KiB/s per connection.',
       "",
       f"Machine: {first['machine']['nproc']} cores ({first['machine']['cpu_model']}), "
       f"{first['machine']['mem_total_kib'] / 1048576:.1f} GiB RAM, kernel {first['machine']['kernel']}. "
       "**The server, the harness (one thread for the load, one for the hostile clients) and "
       "anything else running share these 2 cores.**", ""]
md += ["## Medians", "",
       "| | runs | ops/s | p50 µs | p99 µs | p99.9 µs | max µs | server peak RSS MiB (sampled) | VmHWM MiB | RSS after setup MiB | server cores busy | errors |",
       "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
for g, label in (("without", "without hostile clients"), ("with", "with hostile clients")):
    if g in medians:
        m = medians[g]
        md.append(f"| {label} | {m['runs']} | {m['ops_per_sec']:,.0f} | {m['p50_us']:,.0f} | "
                  f"{m['p99_us']:,.0f} | {m['p999_us']:,.0f} | {m['max_us']:,.0f} | "
                  f"{m['rss_peak_mib']:.1f} | {m['vm_hwm_mib']:.1f} | {m['rss_start_mib']:.1f} | "
                  f"{m['server_cores_busy']:.2f} | {m['errors']} |")
if len(medians) == 2:
    w, h = medians["without"], medians["with"]
    md.append(f"| with / without | | {h['ops_per_sec'] / w['ops_per_sec']:.2f}x | "
              f"{h['p50_us'] / w['p50_us']:.2f}x | {h['p99_us'] / w['p99_us']:.2f}x | "
              f"{h['p999_us'] / w['p999_us']:.2f}x | {h['max_us'] / w['max_us']:.2f}x | "
              f"+{h['rss_peak_mib'] - w['rss_peak_mib']:.1f} MiB | "
              f"+{h['vm_hwm_mib'] - w['vm_hwm_mib']:.1f} MiB | | | |")
noisy_runs = [x["run"] for x in rows if (x["other_cores_busy"] or 0) > NOISY_OTHER_CORES]
md += ["", "## Every run (in the order run)", "",
       f"*Other cores busy* is CPU used by neither the server nor the harness in the measured "
       f"window; above {NOISY_OTHER_CORES} cores the harness flags the run NOISY "
       f"({len(noisy_runs)} of {len(rows)} runs here"
       + (f": {', '.join(noisy_runs)}" if noisy_runs else "") + ").", "",
       "| run | ops/s | p50 / p99 / p99.9 / max µs | errors | longest stall ms | peak RSS / VmHWM MiB | server / harness / other cores busy | load avg (1 min) at start |",
       "|---|---:|---:|---:|---:|---:|---:|---:|"]
for x in rows:
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"
    noisy = (x["other_cores_busy"] or 0) > NOISY_OTHER_CORES
    md.append(f"| {x['run']}{'' if x['ok'] else ' **FAILED**'}{' NOISY' if noisy else ''} | {x['ops_per_sec']:,.0f} | "
              f"{x['p50_us']:,} / {x['p99_us']:,} / {x['p999_us']:,} / {x['max_us']:,} | "
              f"{x['errors']} | {x['max_stall_ms']} | {x['rss_peak_mib']:.1f} / {x['vm_hwm_mib']:.1f} | "
              f"{fmt(x['server_cores_busy'])} / {fmt(x['harness_cores_busy'])} / "
              f"{fmt(x['other_cores_busy'])} | {x['load_1m']:.2f} |")
if hostile_runs:
    md += ["", "## What the hostile clients did (per run with them)", "",
           "| run | kind | connections | closed by the server | requests sent | bytes sent | answers read | bytes read | largest answer B |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in hostile_runs:
        for k in r["results"]["hostile"]["kinds"]:
            closed = str(k["closed_by_server"])
            if k["first_close_after_secs"] is not None:
                closed += f" (first after {k['first_close_after_secs']:.1f} s: {'; '.join(k['close_reasons'])})"
            md.append(f"| {r['label']} | {k['kind']} | {k['connections']} | {closed} | "
                      f"{k['requests_sent']:,} | {k['bytes_sent']:,} | {k['answers_read']:,} | "
                      f"{k['bytes_read']:,} | {k['answer_bytes_max']:,} |")
    md += ["", "Hostile thread CPU: " + ", ".join(
        f"{r['label']} {r['results']['hostile']['thread_cpu_seconds']:.2f} s" for r in hostile_runs)
        + " (counted in the harness CPU)."]
md += ["", "## Per-second throughput", "",
       "Verified responses in each second from the start of the load: the first "
       f"{c['warmup_secs']:g} s are warm-up (hostile clients connect just before it), the "
       "measured window follows. Longest gap without any response: *longest stall* above.", "",
       "| run | ops/s, second by second |", "|---|---|"]
for r in runs:
    md.append(f"| {r['label']} | {', '.join(f'{n:,}' for n in r['results']['timeline_ops_per_sec'])} |")
md += ["", "## Peak RSS", "",
       "VmRSS of the server is read from `/proc/PID/status` every 200 ms from just before the "
       "hostile clients connect until the load has drained (*peak RSS*); *VmHWM* is the "
       "kernel's high-water mark at the end, which covers the server's whole life (setup "
       "included) and peaks between samples. *RSS after setup* is the first sample.", "",
       "## Machine and load", "", "```", machine.rstrip(), "```", "",
       "## Commands", "", "Run: `bash bench-results/scripts/hostile-soak.sh` (settings in `machine.txt` above).",
       "", "```", (out / "commands.txt").read_text().rstrip(),
       "```", ""]
(out / "summary.md").write_text("\n".join(md))
print(f"wrote {out / 'summary.md'} and {out / 'results.json'}")
PY
log "done: $((REPS * 2)) runs, $failed failed; summary in $OUT/summary.md"
((failed == 0))
