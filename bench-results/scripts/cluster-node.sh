# Sourced by the cluster bench scripts (run from the repository's root):
# ports, and the config of one node of a 3-node bench cluster.

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
# replication_status PORT: the REPLICATION_STATUS result of the node whose
# RCP port is PORT, as one line of JSON.
replication_status() {
  RCP_TIMEOUT_S=5 python3 bench-results/scripts/rcp.py "$1" REPLICATION_STATUS |
    python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin)["result"]))'
}
wait_port() { for _ in $(seq 400); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

# bench_node_yaml NODE PIN_CORES PEER_PORT_1 PEER_PORT_2 PEER_PORT_3
# prints node NODE's config (1..3): pinned or not (`corestate.pin_cores`);
# when pinned, its shards start at CPU NODE-1, so the nodes spread over the
# machine's cores instead of all pinning shard 0 to CPU 0. Leader balancing
# is off: a bench finds the leader and drives it. BENCH_NODE_EXTRA_YAML:
# more lines of the cluster section (each indented by four spaces).
bench_node_yaml() {
  local i=$1 pin=$2
  shift 2
  local peers=("$@")
  cat <<YAML
corestate:
  first_core: $((i - 1))
  pin_cores: $pin
  cluster:
    node_id: $i
    name: bench
    balance_leaders: false
    token: cluster-bench-token-0123456789
    peer_listen: "127.0.0.1:${peers[$((i - 1))]}"
    members:
      - {id: 1, peer: "127.0.0.1:${peers[0]}"}
      - {id: 2, peer: "127.0.0.1:${peers[1]}"}
      - {id: 3, peer: "127.0.0.1:${peers[2]}"}
YAML
  printf '%s' "${BENCH_NODE_EXTRA_YAML:-}"
  # PEER_TLS_DIR (made by make_peer_pki): peer links over mutual TLS.
  if [ -n "${PEER_TLS_DIR:-}" ]; then
    cat <<YAML
    tls:
      cert_path: "$PEER_TLS_DIR/node.pem"
      key_path: "$PEER_TLS_DIR/node.key"
      peer_ca_path: "$PEER_TLS_DIR/ca.pem"
YAML
  fi
}

# make_peer_pki DIR: a throwaway CA and one node certificate it signs (IP SAN
# 127.0.0.1, for server and client authentication), as PEM files in DIR.
make_peer_pki() {
  local d=$1
  mkdir -p "$d"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=bench peer CA" -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=bench node" \
    -keyout "$d/node.key" -out "$d/node.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' >"$d/ext.cnf"
  openssl x509 -req -in "$d/node.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
    -days 2 -extfile "$d/ext.cnf" -out "$d/node.pem" 2>/dev/null
}

# role_of PORT: that node's role in REPLICATION_STATUS (leader, follower…),
# empty when it does not answer.
role_of() {
  replication_status "$1" 2>/dev/null |
    python3 -c 'import json, sys; print(json.load(sys.stdin).get("role"))' 2>/dev/null || true
}

# leader_port PORT…: the first of these RCP ports whose node leads (every
# shard's group), polled for up to 30 s.
leader_port() {
  local deadline=$((SECONDS + 30)) port
  while [ "$SECONDS" -lt "$deadline" ]; do
    for port in "$@"; do
      if [ "$(role_of "$port")" = leader ]; then
        echo "$port"
        return 0
      fi
    done
    sleep 0.2
  done
  echo "no leader within 30 s" >&2
  return 1
}

# start_bench_cluster PIN_CORES FSYNC LOG_DIR: three nodes of one shard
# each on fresh ports, data under $WORK (set by the caller, as is $BIN);
# sets PORTS (their RCP ports) and NODE_PIDS, by node, adds the PIDs to
# PIDS (the caller's cleanup kills them), and waits until all listen.
start_bench_cluster() {
  local pin=$1 fsync=$2 logs=$3 peers=() i
  PORTS=()
  NODE_PIDS=()
  BENCH_FSYNC=$fsync
  BENCH_LOGS=$logs
  for i in 1 2 3; do peers+=("$(free_port)"); PORTS+=("$(free_port)"); done
  for i in 1 2 3; do
    mkdir -p "$WORK/node-$i"
    bench_node_yaml "$i" "$pin" "${peers[@]}" >"$WORK/node-$i.yaml"
    : >"$logs/node-$i.log"
    start_bench_node "$i"
  done
  for i in "${PORTS[@]}"; do wait_port "$i"; done
}

# start_bench_node NODE: (re)starts node NODE (1..3) of the cluster
# start_bench_cluster made, on its data directory, appending to its log;
# sets NODE_PIDS[NODE-1] and adds the PID to PIDS.
start_bench_node() {
  local i=$1
  "$BIN" --config "$WORK/node-$i.yaml" --bind 127.0.0.1:"${PORTS[$((i - 1))]}" \
    --data-dir "$WORK/node-$i" --fsync "$BENCH_FSYNC" --shards 1 2>>"$BENCH_LOGS/node-$i.log" &
  NODE_PIDS[$((i - 1))]=$!
  PIDS+=($!)
}

# bench_cluster_setup NAME: build the release server and bench client; set
# BIN, BENCH, WORK (a fresh directory /tmp/NAME.XXXX) and PIDS; on exit,
# SIGKILL every PID in PIDS and remove WORK.
bench_cluster_setup() {
  cargo build --release --bin corestate >/dev/null
  cargo build --release -p corestate-bench >/dev/null
  BIN=target/release/corestate
  BENCH=target/release/corestate-bench
  WORK=$(mktemp -d "/tmp/$1.XXXX")
  PIDS=()
  trap 'for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$WORK"' EXIT
}
