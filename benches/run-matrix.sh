#!/usr/bin/env bash
# The standard benchmark matrix: corestate against rstmdb 0.3.0 with the
# same harness flags — workloads x (connections x pipeline) x fsync policy
# x repetitions. The two servers alternate run by run (the order flips each
# repetition) so machine noise hits both; every run gets a fresh server, a
# fresh port and a fresh data directory. Writes
#   bench-results/<date>/runs/*.json   one harness report per run
#   bench-results/<date>/logs/*        server and harness output
#   bench-results/<date>/matrix.txt    the settings and this script's command
#   bench-results/<date>/results.json  medians, ratios, targets
#   bench-results/<date>/summary.md    the table for the README
#
# Settings come from the environment (defaults in brackets):
#   WORKLOADS ["create apply get"]  SHAPES ["1x1 16x1 16x16 64x16"]
#   CELLS [WORKLOADS x SHAPES] workload:shape pairs instead, e.g.
#     "batch:16x1 batch:16x4 watch:16x16"
#   BATCH_OPS [10] (batch)  SUBSCRIBERS [4] (watch)
#   POLICIES ["every_write never"]  SERVERS ["corestate rstmdb"]  REPS [3]
#   DURATION [5] WARMUP [1] (seconds)  INSTANCES [1000]  PAYLOAD_BYTES [32]
#   OUT [bench-results/<UTC date>]  DATA_ROOT [target/bench-data] (must be
#   a real disk, not tmpfs: fsync cost is what is measured)
#   CORESTATE_BIN [target/release/corestate, built here]; CORESTATE_COMMIT
#   names the commit it was built from (for matrix.txt) when given
#   RSTMDB_BIN [target/rstmdb-0.3.0/bin/rstmdb, installed here if missing]
#   EXTRA_BENCH_FLAGS [] appended to every harness command
#   QUIET_LOAD_MAX [] when set, first wait until the 1-minute load average
#   is below it and no rustc runs (checked every QUIET_POLL_SECS [60], for
#   up to QUIET_WAIT_MAX_SECS [1800]); exit 3 if the machine never got quiet.
#   Then, before every run, wait (same limits, polling every 10 s) until no
#   rustc runs and the machine, with no server up, keeps fewer than
#   QUIET_CPU_MAX [0.3] cores busy over 3 s.
#   NOISY_RETRIES [0] repeat a run the harness flags NOISY (other processes
#   busy in its window) up to this many times; the noisy attempts' JSON is
#   kept as logs/<run>.noisy-<n>.json and left out of the summary
set -euo pipefail
# Servers here serve RCP only: no HTTP API listener (it would bind 7402).
export CORESTATE_HTTP_LISTEN=off

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

WORKLOADS=${WORKLOADS:-"create apply get"}
SHAPES=${SHAPES:-"1x1 16x1 16x16 64x16"}
POLICIES=${POLICIES:-"every_write never"}
SERVERS=${SERVERS:-"corestate rstmdb"}
REPS=${REPS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
INSTANCES=${INSTANCES:-1000}
PAYLOAD_BYTES=${PAYLOAD_BYTES:-32}
OUT=${OUT:-$ROOT/bench-results/$(date -u +%Y-%m-%d)}
DATA_ROOT=${DATA_ROOT:-$ROOT/target/bench-data}
RSTMDB_VERSION=0.3.0
RSTMDB_ROOT=$ROOT/target/rstmdb-$RSTMDB_VERSION
RSTMDB_BIN=${RSTMDB_BIN:-$RSTMDB_ROOT/bin/rstmdb}
BENCH_BIN=$ROOT/target/release/corestate-bench
EXTRA_BENCH_FLAGS=${EXTRA_BENCH_FLAGS:-}
BATCH_OPS=${BATCH_OPS:-10}
SUBSCRIBERS=${SUBSCRIBERS:-4}
QUIET_LOAD_MAX=${QUIET_LOAD_MAX:-}
QUIET_POLL_SECS=${QUIET_POLL_SECS:-60}
QUIET_WAIT_MAX_SECS=${QUIET_WAIT_MAX_SECS:-1800}
QUIET_CPU_MAX=${QUIET_CPU_MAX:-0.3}
NOISY_RETRIES=${NOISY_RETRIES:-0}
# Seconds of the CPU sample taken before each run, and between samples.
QUIET_SAMPLE_SECS=3
QUIET_RUN_POLL_SECS=10
if [[ -z "${CELLS:-}" ]]; then
    CELLS=""
    for _w in $WORKLOADS; do for _s in $SHAPES; do CELLS="$CELLS $_w:$_s"; done; done
fi
CELLS=$(echo $CELLS)
# How long a fresh server may take to accept connections.
SERVER_READY_TIMEOUT_SECS=20
# How long a server may take to exit after SIGTERM before SIGKILL.
SERVER_STOP_TIMEOUT_SECS=10

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# --- binaries ---------------------------------------------------------------
log "building the harness"
cargo build --release -p corestate-bench --bin corestate-bench >&2
if [[ -z "${CORESTATE_BIN:-}" ]]; then
    log "building corestate"
    cargo build --release --bin corestate >&2
    CORESTATE_BIN=$ROOT/target/release/corestate
fi
if [[ " $SERVERS " == *" rstmdb "* && ! -x "$RSTMDB_BIN" ]]; then
    log "installing rstmdb $RSTMDB_VERSION into $RSTMDB_ROOT"
    cargo install rstmdb --version "$RSTMDB_VERSION" --locked --root "$RSTMDB_ROOT" >&2 ||
        cargo install rstmdb --version "$RSTMDB_VERSION" --root "$RSTMDB_ROOT" >&2
fi

mkdir -p "$OUT/runs" "$OUT/logs" "$DATA_ROOT"
{
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet -- . ':(exclude)bench-results' 2>/dev/null || echo ' (+ uncommitted changes)')"
    echo "CELLS='$CELLS' POLICIES='$POLICIES' SERVERS='$SERVERS' REPS=$REPS DURATION=$DURATION WARMUP=$WARMUP INSTANCES=$INSTANCES PAYLOAD_BYTES=$PAYLOAD_BYTES BATCH_OPS=$BATCH_OPS SUBSCRIBERS=$SUBSCRIBERS benches/run-matrix.sh"
    echo "corestate binary: $("$CORESTATE_BIN" --version 2>/dev/null || echo '?'), built $(date -u -r "$CORESTATE_BIN" +%Y-%m-%dT%H:%M:%SZ)${CORESTATE_COMMIT:+ from commit $CORESTATE_COMMIT}"
    echo "corestate: CORESTATE_HTTP_LISTEN=off $CORESTATE_BIN --bind 127.0.0.1:<fresh port> --data-dir <fresh dir> --fsync <policy>"
    echo "rstmdb:    RSTMDB_BIND=127.0.0.1:<fresh port> RSTMDB_DATA=<fresh dir> RSTMDB_FSYNC_POLICY=<policy> $RSTMDB_BIN   (rstmdb $RSTMDB_VERSION from crates.io)"
} > "$OUT/matrix.txt"

# --- servers ----------------------------------------------------------------
SERVER_PID=""
SERVER_DIR=""

# A port nobody listens on: glommio sets SO_REUSEPORT, so a leftover server
# on a reused port would silently share (steal) connections.
fresh_port() {
    if command -v python3 >/dev/null; then
        python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
    else
        local port
        while :; do
            port=$((20000 + RANDOM % 40000))
            ss -Htan "sport = :$port" 2>/dev/null | grep -q . || { echo "$port"; return; }
        done
    fi
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

# start_server NAME POLICY LOG -> SERVER_PID, SERVER_PORT
start_server() {
    local name=$1 policy=$2 logfile=$3
    SERVER_PORT=$(fresh_port)
    SERVER_DIR=$(mktemp -d "$DATA_ROOT/$name-XXXXXX")
    case $name in
        corestate)
            "$CORESTATE_BIN" --bind "127.0.0.1:$SERVER_PORT" --data-dir "$SERVER_DIR" \
                --fsync "$policy" >"$logfile" 2>&1 &
            ;;
        rstmdb)
            RSTMDB_BIND="127.0.0.1:$SERVER_PORT" RSTMDB_DATA="$SERVER_DIR" \
                RSTMDB_FSYNC_POLICY="$policy" RUST_LOG=warn "$RSTMDB_BIN" >"$logfile" 2>&1 &
            ;;
        *)
            log "unknown server $name"
            exit 2
            ;;
    esac
    SERVER_PID=$!
    local waited=0
    until (exec 3<>"/dev/tcp/127.0.0.1/$SERVER_PORT") 2>/dev/null; do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            log "$name exited during start-up; see $logfile"
            tail -20 "$logfile" >&2
            exit 2
        fi
        if ((waited >= SERVER_READY_TIMEOUT_SECS * 10)); then
            log "$name did not accept connections within ${SERVER_READY_TIMEOUT_SECS}s"
            exit 2
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
}

# --- a quiet machine --------------------------------------------------------
load_1m() { cut -d' ' -f1 /proc/loadavg; }
rustc_count() { pgrep -c rustc || true; }
# Cores kept busy by everything on the machine over $1 seconds (/proc/stat:
# user nice system irq softirq steal; idle and iowait are not busy).
cpu_busy_cores() {
    local _c u1 n1 s1 i1 w1 q1 sq1 st1 u2 n2 s2 i2 w2 q2 sq2 st2 _rest
    read -r _c u1 n1 s1 i1 w1 q1 sq1 st1 _rest </proc/stat
    sleep "$1"
    read -r _c u2 n2 s2 i2 w2 q2 sq2 st2 _rest </proc/stat
    awk -v b=$(((u2 + n2 + s2 + q2 + sq2 + st2) - (u1 + n1 + s1 + q1 + sq1 + st1))) \
        -v hz="$(getconf CLK_TCK)" -v t="$1" 'BEGIN { printf "%.2f", b / hz / t }'
}
# Before a run (no server up): wait for no rustc and an idle CPU.
wait_quiet_run() {
    [[ -n "$QUIET_LOAD_MAX" ]] || return 0
    local waited=0 busy
    while :; do
        busy=$(cpu_busy_cores "$QUIET_SAMPLE_SECS")
        if [[ $(rustc_count) -eq 0 ]] && awk -v b="$busy" -v m="$QUIET_CPU_MAX" 'BEGIN { exit !(b < m) }'; then
            ((waited == 0)) || log "quiet again after ${waited}s (${busy} cores busy)"
            return 0
        fi
        if ((waited >= QUIET_WAIT_MAX_SECS)); then
            log "the machine never got quiet in ${QUIET_WAIT_MAX_SECS}s before a run ($busy cores busy, $(rustc_count) rustc): stopping"
            exit 3
        fi
        ((waited % 60 == 0)) && log "machine busy before a run ($busy cores busy, $(rustc_count) rustc); waiting"
        sleep "$QUIET_RUN_POLL_SECS"
        waited=$((waited + QUIET_RUN_POLL_SECS))
    done
}
if [[ -n "$QUIET_LOAD_MAX" ]]; then
    waited=0
    until awk -v l="$(load_1m)" -v m="$QUIET_LOAD_MAX" 'BEGIN { exit !(l < m) }' &&
        [[ $(rustc_count) -eq 0 ]]; do
        if ((waited >= QUIET_WAIT_MAX_SECS)); then
            log "the machine never got quiet in ${QUIET_WAIT_MAX_SECS}s (load $(load_1m), $(rustc_count) rustc): not measuring"
            exit 3
        fi
        log "machine busy (load $(load_1m), $(rustc_count) rustc); waiting ${QUIET_POLL_SECS}s"
        sleep "$QUIET_POLL_SECS"
        waited=$((waited + QUIET_POLL_SECS))
    done
    log "machine quiet (load $(load_1m), no rustc) after ${waited}s"
    echo "started on a quiet machine: 1-minute load $(load_1m) < $QUIET_LOAD_MAX, no rustc, after waiting ${waited}s" >>"$OUT/matrix.txt"
fi

# --- the disk ---------------------------------------------------------------
# One fdatasync of a small overwrite on the data disk, the floor under a
# durable apply at 1x1 (issue 13, goal 2): the median of FDATASYNC_SAMPLES.
FDATASYNC_SAMPLES=${FDATASYNC_SAMPLES:-200}
python3 - "$DATA_ROOT" "$FDATASYNC_SAMPLES" >"$OUT/fdatasync.json" <<'PY'
import json, os, statistics, sys, tempfile, time
root, n = sys.argv[1], int(sys.argv[2])
fd, path = tempfile.mkstemp(dir=root, prefix="fdatasync-")
# Overwrites of allocated, synced blocks, as the WAL's preallocated
# segments are written (an allocating write also commits metadata).
os.pwrite(fd, b"\0" * (256 * 4096), 0)
os.fsync(fd)
block = b"x" * 4096
samples = []
try:
    for i in range(n):
        os.pwrite(fd, block, (i % 256) * 4096)
        t = time.perf_counter()
        os.fdatasync(fd)
        samples.append((time.perf_counter() - t) * 1e6)
finally:
    os.close(fd)
    os.unlink(path)
samples.sort()
print(json.dumps({"samples": n, "write_bytes": 4096, "median_us": statistics.median(samples),
                  "p90_us": samples[int(n * 0.9)], "min_us": samples[0]}))
PY
log "fdatasync on $DATA_ROOT: $(cat "$OUT/fdatasync.json")"

# --- the matrix -------------------------------------------------------------
read -r -a server_list <<<"$SERVERS"
read -r -a cell_list <<<"$CELLS"
total=0
for _p in $POLICIES; do
    total=$((total + REPS * ${#server_list[@]} * ${#cell_list[@]}))
done
done_runs=0
failed_runs=0
started=$(date +%s)

for policy in $POLICIES; do
    for cell in "${cell_list[@]}"; do
        workload=${cell%%:*}
        shape=${cell#*:}
        conns=${shape%x*}
        pipeline=${shape#*x}
        workload_flags=()
        case $workload in
            batch) workload_flags=(--batch-ops "$BATCH_OPS") ;;
            watch) workload_flags=(--subscribers "$SUBSCRIBERS") ;;
        esac
        for rep in $(seq 1 "$REPS"); do
            order=("${server_list[@]}")
            if ((rep % 2 == 0)); then
                order=()
                for ((i = ${#server_list[@]} - 1; i >= 0; i--)); do order+=("${server_list[$i]}"); done
            fi
            for server in "${order[@]}"; do
                name="$policy-$workload-$shape-$server-r$rep"
                attempt=0
                while :; do
                    wait_quiet_run
                    start_server "$server" "$policy" "$OUT/logs/$name.server.log"
                    # shellcheck disable=SC2086
                    cmd=("$BENCH_BIN" --addr "127.0.0.1:$SERVER_PORT" --workload "$workload"
                        --connections "$conns" --pipeline "$pipeline" --duration "$DURATION"
                        --warmup "$WARMUP" --instances "$INSTANCES" --payload-bytes "$PAYLOAD_BYTES"
                        --server-pid "$SERVER_PID" --json "$OUT/runs/$name.json" --no-progress-bar
                        --label "$server" --tag "server=$server" --tag "fsync=$policy" --tag "rep=$rep"
                        "${workload_flags[@]}" $EXTRA_BENCH_FLAGS)
                    status=0
                    "${cmd[@]}" >"$OUT/logs/$name.bench.txt" 2>"$OUT/logs/$name.bench.err" || status=$?
                    stop_server
                    if ((attempt < NOISY_RETRIES)) && grep -q 'NOISY' "$OUT/logs/$name.bench.txt"; then
                        attempt=$((attempt + 1))
                        log "$name: NOISY $(grep -m1 -o '([0-9.]* by other processes)' "$OUT/logs/$name.bench.txt"), repeating (attempt $((attempt + 1)))"
                        mv "$OUT/runs/$name.json" "$OUT/logs/$name.noisy-$attempt.json" 2>/dev/null || true
                        mv "$OUT/logs/$name.bench.txt" "$OUT/logs/$name.noisy-$attempt.bench.txt"
                        continue
                    fi
                    break
                done
                done_runs=$((done_runs + 1))
                ops=$(grep -m1 'throughput' "$OUT/logs/$name.bench.txt" | awk '{print $2}' || true)
                extra=$(grep -m1 -E '^  (batches|!!! LOSS|!!! ORDER)' "$OUT/logs/$name.bench.txt" |
                    sed 's/^ *//' | cut -c1-90 || true)
                if ((status != 0)); then
                    failed_runs=$((failed_runs + 1))
                    log "[$done_runs/$total] $name: FAILED (exit $status), see $OUT/logs/$name.bench.*"
                    tail -5 "$OUT/logs/$name.bench.err" >&2 || true
                else
                    log "[$done_runs/$total] $name: ${ops:-?} ops/s${extra:+; $extra} ($(($(date +%s) - started)) s elapsed)"
                fi
            done
        done
    done
done

"$BENCH_BIN" summarize "$OUT"
log "done: $done_runs runs, $failed_runs failed; summary in $OUT/summary.md"
if ((failed_runs > 0)); then
    exit 1
fi
