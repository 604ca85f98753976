#!/usr/bin/env bash
# Durable applies 16x16 against a fresh 3-node cluster (one shard per node,
# unpinned), peer links plain or over mutual TLS, through the leader's node
# and a follower's; REPS rounds, alternating:
#   BIN=<corestate> [REPS=3] [DUR=5] bash runs.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE/../../.."
source bench-results/scripts/cluster-node.sh
REPS=${REPS:-3}; DUR=${DUR:-5}
PKI=$(mktemp -d /tmp/peer-pki.XXXX); trap 'rm -rf "$PKI"' EXIT
make_peer_pki "$PKI"
for rep in $(seq 1 "$REPS"); do
  for path in leader follower; do
    for links in plain tls; do
      out="$HERE/runs/$links-$path-$rep"; mkdir -p "$out"
      via=""; [ "$path" = follower ] && via=1
      pki=""; [ "$links" = tls ] && pki=$PKI
      env PEER_TLS_DIR="$pki" BIN="${BIN:-target/release/corestate}" PIN=false WL=apply \
        DUR="$DUR" VIA_FOLLOWER="$via" OUT="$out" \
        bash bench-results/scripts/cluster-one.sh >"$out/run.txt" 2>&1 || echo "run failed: $out"
    done
  done
done
