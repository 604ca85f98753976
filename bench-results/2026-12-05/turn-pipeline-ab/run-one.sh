#!/usr/bin/env bash
# Moved to bench-results/scripts/cluster-one.sh (same arguments).
exec bash "$(dirname "$0")/../../scripts/cluster-one.sh" "$@"
