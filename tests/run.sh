#!/usr/bin/env bash
# The one test command (README "Test"): installs everything the tests need
# (Rust dependencies via cargo, a Python venv with the official rstmdb
# client, Debian's headless Chromium for the page test) and runs every test:
# unit tests, Rust integration tests against the real binary, and the Python
# client suite (with rstmdb's official CLI, rstmdb-cli, installed into target/
# like the reference server of the benches).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian's Chromium and its WebDriver, for the live page test
# (tests/http/page.rs), which fails rather than skips without them.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "tests/run.sh: the page test needs chromium and chromium-driver;" \
      "run as root or: sudo apt-get install -y chromium chromium-driver" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi

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
