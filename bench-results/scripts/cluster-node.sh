# Sourced by the cluster bench scripts (run from the repository's root):
# ports, and the config of one node of a 3-node bench cluster.

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 400); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

# bench_node_yaml NODE PIN_CORES PEER_PORT_1 PEER_PORT_2 PEER_PORT_3
# prints node NODE's config (1..3): pinned or not (`corestate.pin_cores`);
# when pinned, its shards start at CPU NODE-1, so the nodes spread over the
# machine's cores instead of all pinning shard 0 to CPU 0. Leader balancing
# is off: a bench finds the leader and drives it.
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
