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
}
