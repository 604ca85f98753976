#!/usr/bin/env bash
# The one test command (README "Test"): installs everything the tests need
# (Rust dependencies via cargo, a Python venv with the official rstmdb
# client) and runs every test: unit tests, Rust integration tests against the
# real binary, and the Python client suite (with rstmdb's official CLI,
# rstmdb-cli, installed into target/ like the reference server of the benches).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/pyvenv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt

# rstmdb-cli 0.3.0 from crates.io, for tests/python/test_cli.py.
cli_version=0.3.0
cli_root=target/rstmdb-cli-$cli_version
cli="$PWD/$cli_root/bin/rstmdb-cli"
if [ ! -x "$cli" ]; then
  cargo install rstmdb-cli --version "$cli_version" --locked --root "$cli_root" ||
    cargo install rstmdb-cli --version "$cli_version" --root "$cli_root"
fi

cargo build --bins
cargo test --workspace --all-targets

# Each test's server preallocates its WAL segments (~128 MiB a data
# directory): keep the temporary directories in target/ (pytest empties it
# at the start of a run) and only those of failed tests.
CORESTATE_BIN="$PWD/target/debug/corestate" RSTMDB_CLI="$cli" \
  "$venv/bin/python" -m pytest -q tests/python \
  --basetemp "$PWD/target/pytest-tmp" -o tmp_path_retention_policy=failed
