#!/usr/bin/env bash
# A long campaign of the deterministic simulation (shards/src/sim): N seeds,
# each a server of 1–4 shards crashed and restarted several times under
# injected disk faults and checked after every restart. Prints the command
# and the campaign's counts as markdown on stdout. Run from the repo root:
#   SEEDS=4000 bash bench-results/scripts/sim-campaign.sh > bench-results/<date>/simulation-campaign.md
# A failing seed stops the campaign and prints how to replay it.
set -euo pipefail
SEEDS=${SEEDS:-4000}
FIRST=${FIRST:-1}
# The commit is taken when the build starts: the tree may change during a
# long run, and the binary is what was built here.
commit=$(git rev-parse --short HEAD)
[ -n "$(git status --porcelain -- shards)" ] && commit="$commit (the shards crate with uncommitted changes)"
cargo test --release -q -p shards --lib --no-run 2>/dev/null
start=$(date +%s)
out=$(CORESTATE_SIM_SEEDS=$SEEDS CORESTATE_SIM_FIRST_SEED=$FIRST \
  cargo test --release -q -p shards --lib sim::tests::seeds -- --nocapture 2>&1) || {
  echo "$out" | grep -v '^  [<-]' | tail -60
  exit 1
}
end=$(date +%s)
echo "# Simulation campaign"
echo
echo "- date: $(date -u +%Y-%m-%dT%H:%MZ), commit $commit"
echo "- machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
echo "- command: \`CORESTATE_SIM_SEEDS=$SEEDS CORESTATE_SIM_FIRST_SEED=$FIRST cargo test --release -p shards --lib sim::tests::seeds -- --nocapture\`"
echo "- wall time: $((end - start)) s"
echo
echo "$out" | grep -E '^[0-9]+ seeds:' | sed 's/^/    /'
