#!/usr/bin/env bash
# The one test command (README "Test"): installs everything the tests need
# (Rust dependencies via cargo, a Python venv with the official rstmdb
# client) and runs every test: unit tests, Rust integration tests against the
# real binary, and the Python client suite.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/pyvenv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt

cargo build --bins
cargo test --workspace --all-targets

CORESTATE_BIN="$PWD/target/debug/corestate" "$venv/bin/python" -m pytest -q tests/python
