"""rstmdb's official command-line client, `rstmdb-cli` 0.3.0 (crates.io),
against the real corestate binary: every subcommand once, plus the global
options (-s, -t and $RSTMDB_TOKEN, the TLS options).

tests/run.sh installs the CLI into target/rstmdb-cli-0.3.0 with
`cargo install` and exports its path as RSTMDB_CLI; without RSTMDB_CLI the
tests look there. `CLI_SUBCOMMANDS` lists the subcommands;
`test_the_list_names_every_subcommand_of_the_help` compares it with what
`rstmdb-cli --help` prints, so a subcommand this file does not know fails.

How the CLI behaves (read from its source, rstmdb-cli-0.3.0/src):
* every subcommand but `hash-token` connects (HELLO, then AUTH when a token
  is given), prints its result on stdout and exits 0; an error is printed
  on stderr as `Error: ...` (a failed connection or AUTH as `Connection
  failed: ...`) and the exit status is 1;
* `watch-instance` and `watch-all` print `Watching ... (sub_id: ...)` on
  stderr, then one JSON line per event on stdout until SIGINT, on which
  they send UNWATCH, print `Stopping watch...` and exit 0;
* `unwatch` runs on a connection of its own, which has no subscriptions, so
  it always answers `removed: false` (rstmdb 0.3 keeps subscriptions per
  connection too) and prints `Warning: subscription ... not found`;
* `repl`, or no subcommand at all, reads commands with rustyline. It needs
  no TTY: with stdin a pipe rustyline reads plain lines (no prompt, no
  editing, no history), so most tests feed it commands on stdin; EOF
  prints `^D` and ends it like `exit`. `test_repl_on_a_terminal` runs it
  on a pseudo-terminal (the `pty` module) for the interactive path: the
  `rstmdb> ` prompt, Ctrl+C, Ctrl+D and the history file
  $HOME/.rstmdb_history (HOME is the test's temporary directory);
* `-k`/`--insecure` never sends a client certificate (rstmdb-client 0.3.0
  builds its insecure TLS config `with_no_client_auth()`), and the client
  logs its "insecure" WARN line to stdout.

Output is checked with NO_COLOR=1 (the `colored` crate then prints plain
text).
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import AUTH_TOKEN, AUTH_TOKEN_HASH, HOST
from test_tls import pki, tls_config  # noqa: F401  (pki is a fixture)

CLI_VERSION = "0.3.0"

# Every subcommand `rstmdb-cli --help` lists, in its order.
CLI_SUBCOMMANDS = [
    "repl",
    "ping",
    "info",
    "replication-status",
    "put-machine",
    "get-machine",
    "list-machines",
    "create-instance",
    "get-instance",
    "apply-event",
    "delete-instance",
    "wal-read",
    "compact",
    "flush-all",
    "hash-token",
    "watch-instance",
    "watch-all",
    "unwatch",
    "help",
]

CLI_TIMEOUT_S = 20.0
WAIT_S = 10.0
POLL_S = 0.02
EXIT_WAIT_S = 5.0
FLUSH_CONFIG = "storage:\n  allow_flush_all: true\n"

ORDER = {
    "states": ["created", "paid", "shipped", "cancelled"],
    "initial": "created",
    "transitions": [
        {"from": "created", "event": "PAY", "to": "paid"},
        {"from": "paid", "event": "SHIP", "to": "shipped"},
        {"from": ["created", "paid"], "event": "CANCEL", "to": "cancelled"},
    ],
}

TICKET = {
    "states": ["open", "closed"],
    "initial": "open",
    "transitions": [{"from": "open", "event": "CLOSE", "to": "closed"}],
}


def compact_json(value) -> str:
    """JSON without spaces (the REPL splits its input on whitespace)."""
    return json.dumps(value, separators=(",", ":"))


def cli_binary() -> str:
    binary = os.environ.get("RSTMDB_CLI")
    if not binary:
        binary = str(Path(__file__).resolve().parents[2] / "target" / f"rstmdb-cli-{CLI_VERSION}"
                     / "bin" / "rstmdb-cli")
    if not os.access(binary, os.X_OK):
        pytest.fail(f"rstmdb-cli not found or not executable: {binary} (tests/run.sh installs "
                    f"it: cargo install rstmdb-cli --version {CLI_VERSION} --locked "
                    f"--root target/rstmdb-cli-{CLI_VERSION}; or set RSTMDB_CLI)")
    return binary


@pytest.fixture
def cli_env(tmp_path) -> dict:
    """The CLI's environment: none of the developer's RSTMDB_* settings, no
    colours, HOME (the REPL's history file) in the test's directory."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RSTMDB_", "CORESTATE_", "RUST_LOG", "CLICOLOR"))}
    env["NO_COLOR"] = "1"
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env["HOME"] = str(home)
    return env


@pytest.fixture
def cli(cli_env):
    """`cli(server, *args, token=None, input=None, env=None)` runs one
    rstmdb-cli command against `server` (None: no -s) and returns the
    CompletedProcess (text stdout/stderr)."""

    def run(server, *args: str, token: str | None = None, input: str | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
        argv = [cli_binary()]
        if server is not None:
            argv += ["-s", f"{HOST}:{server.port}"]
        if token is not None:
            argv += ["-t", token]
        argv += list(args)
        return subprocess.run(argv, input=input if input is not None else "",
                              capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
                              env={**cli_env, **(env or {})})

    return run


def ok(result: subprocess.CompletedProcess) -> str:
    """stdout of a command that must have succeeded."""
    assert result.returncode == 0, (
        f"{result.args} exited {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}")
    return result.stdout


def failed(result: subprocess.CompletedProcess) -> str:
    """stderr of a command that must have failed."""
    assert result.returncode == 1, (
        f"{result.args} exited {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}")
    return result.stderr


def field(text: str, label: str) -> str:
    """The value after `label:` on its line."""
    match = re.search(rf"^\s*{re.escape(label)}:\s*(.*)$", text, re.M)
    assert match, f"no {label!r} in {text!r}"
    return match.group(1).strip()


def assert_in_order(text: str, *snippets: str) -> None:
    at = 0
    for snippet in snippets:
        found = text.find(snippet, at)
        assert found >= 0, f"{snippet!r} not found (in order) after position {at} of:\n{text}"
        at = found + len(snippet)


class Streaming:
    """A long-running CLI process (watch-*) writing to files; stopped by its
    own PID."""

    def __init__(self, argv: list[str], env: dict, directory: Path, name: str):
        self.out_path = directory / f"{name}.stdout"
        self.err_path = directory / f"{name}.stderr"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=err, env=env)

    def stdout(self) -> str:
        return self.out_path.read_text()

    def stderr(self) -> str:
        return self.err_path.read_text()

    def wait_for(self, read, pattern: str, timeout: float = WAIT_S) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, read(), re.M)
            if match:
                return match
            if self.proc.poll() is not None:
                pytest.fail(f"{self.proc.args} exited {self.proc.returncode} before printing "
                            f"{pattern!r}\nstdout: {self.stdout()}\nstderr: {self.stderr()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{pattern!r} did not appear within {timeout} s\n"
                            f"stdout: {self.stdout()}\nstderr: {self.stderr()}")
            time.sleep(POLL_S)

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout().splitlines() if line.strip()]

    def interrupt(self) -> int:
        """SIGINT (the CLI's Ctrl+C: it unwatches and exits 0); returns the
        exit status."""
        os.kill(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout=EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.proc.args} did not exit within {EXIT_WAIT_S} s of SIGINT")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def streaming(cli_env, tmp_path):
    """`streaming(server, *args)` starts a long-running CLI command."""
    started: list[Streaming] = []

    def start(server, *args: str, token: str | None = None) -> Streaming:
        argv = [cli_binary(), "-s", f"{HOST}:{server.port}"]
        if token is not None:
            argv += ["-t", token]
        proc = Streaming(argv + list(args), cli_env, tmp_path, f"cli-{len(started)}")
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.kill()


WATCH_INSTANCE_BANNER = (r"^Watching instance (?P<id>\S+) \(sub_id: (?P<sub>sub-\S+), "
                         r"state: (?P<state>\S+), wal_offset: (?P<offset>\d+)\)$")
WATCH_ALL_BANNER = r"^Watching all events \(sub_id: (?P<sub>sub-\S+), wal_offset: (?P<offset>\d+)\)$"


# ---------------------------------------------------------------------------
# The list, the version, hash-token, help


def test_the_list_names_every_subcommand_of_the_help(cli):
    out = ok(cli(None, "--help"))
    section = out.split("Commands:", 1)[1].split("Options:", 1)[0]
    listed = [line.split()[0] for line in section.splitlines() if line.strip()]
    assert listed == CLI_SUBCOMMANDS, (
        f"missing from CLI_SUBCOMMANDS: {[c for c in listed if c not in CLI_SUBCOMMANDS]}; "
        f"not in --help: {[c for c in CLI_SUBCOMMANDS if c not in listed]}")


def test_version(cli):
    assert ok(cli(None, "--version")).strip() == f"rstmdb-cli {CLI_VERSION}"


def test_help_subcommand(cli):
    out = ok(cli(None, "help", "put-machine"))
    assert "Register a machine definition" in out
    assert "--name <NAME>" in out and "--version <VERSION>" in out


def test_hash_token_prints_the_sha256_hex(cli):
    assert ok(cli(None, "hash-token", AUTH_TOKEN)) == AUTH_TOKEN_HASH + "\n"
    token = "another token, with spaces"
    assert ok(cli(None, "hash-token", token)).strip() == hashlib.sha256(token.encode()).hexdigest()


# ---------------------------------------------------------------------------
# Session: ping, info, replication-status


def test_ping(server, cli):
    assert ok(cli(server, "ping")) == "PONG\n"


def test_info(server, cli):
    info = json.loads(ok(cli(server, "info")))
    assert info["protocol_version"] == 1
    assert info["server_name"] == "corestate"
    assert info["features"] == ["batch", "idempotency", "wal_read", "watch"]
    assert info["auth_required"] is False
    assert info["shards"] == 2
    assert isinstance(info["max_frame_bytes"], int) and isinstance(info["max_batch_ops"], int)


def test_replication_status(server, cli):
    # corestate is standalone; the CLI prints this for role "standalone".
    assert ok(cli(server, "replication-status")) == "Server is not configured for replication\n"


# ---------------------------------------------------------------------------
# Machines: put-machine, get-machine, list-machines


async def test_put_machine_get_machine_list_machines(server, cli, tmp_path):
    assert ok(cli(server, "list-machines")) == "No machines registered\n"

    out = ok(cli(server, "put-machine", "--name", "order", "--version", "1", json.dumps(ORDER)))
    created = re.fullmatch(r"Created machine order v1 \(checksum: ([0-9a-f]{8})\)\n", out)
    assert created, out
    checksum = created.group(1)
    again = ok(cli(server, "put-machine", "-n", "order", "-v", "1", json.dumps(ORDER)))
    assert again == f"Already exists machine order v1 (checksum: {checksum})\n"

    # @file.json form, and a second version.
    definition = tmp_path / "ticket.json"
    definition.write_text(json.dumps(TICKET))
    out = ok(cli(server, "put-machine", "-n", "ticket", "-v", "1", f"@{definition}"))
    assert re.fullmatch(r"Created machine ticket v1 \(checksum: [0-9a-f]{8}\)\n", out), out
    ok(cli(server, "put-machine", "-n", "order", "-v", "2", json.dumps(ORDER)))

    async with server.client() as c:
        assert (await c.get_machine("order", 1)).checksum == checksum

    out = ok(cli(server, "get-machine", "--name", "order", "--version", "1"))
    header, body = out.split("\n", 1)
    assert header == "Machine order v1"
    got = json.loads(body)
    assert got["states"] == ORDER["states"] and got["initial"] == "created"
    assert got["transitions"][0] == {"from": ["created"], "event": "PAY", "to": "paid"}

    out = ok(cli(server, "list-machines"))
    lines = sorted(line.strip() for line in out.splitlines() if line.strip())
    assert lines == ["order v2 (4 states, 3 transitions)", "ticket v1 (2 states, 1 transitions)"]

    assert "MACHINE_NOT_FOUND" in failed(cli(server, "get-machine", "-n", "order", "-v", "9"))


# ---------------------------------------------------------------------------
# Instances: create-instance, get-instance, apply-event, delete-instance


async def test_create_get_apply_delete_instance(server, cli):
    ok(cli(server, "put-machine", "-n", "order", "-v", "1", json.dumps(ORDER)))

    out = ok(cli(server, "create-instance", "--machine", "order", "--version", "1",
                 "--id", "o-1", "--ctx", json.dumps({"customer": "ada"})))
    assert out.startswith("Created instance o-1\n"), out
    assert field(out, "Machine") == "order v1"
    assert field(out, "State") == "created"
    created_offset = int(field(out, "WAL offset"))

    # Without --id the server picks one.
    out = ok(cli(server, "create-instance", "-m", "order", "-V", "1"))
    generated = re.match(r"Created instance (\S+)\n", out).group(1)
    assert generated != "o-1"

    out = ok(cli(server, "get-instance", "o-1"))
    assert out.startswith("Instance o-1\n"), out
    assert field(out, "Machine") == "order v1"
    assert field(out, "State") == "created"
    assert int(field(out, "Last WAL offset")) == created_offset
    context = out.split("Context:", 1)[1].rsplit("Last WAL offset:", 1)[0]
    assert json.loads(context) == {"customer": "ada"}

    out = ok(cli(server, "apply-event", "--instance", "o-1", "--event", "PAY",
                 "--payload", json.dumps({"amount": 5}), "--expected-state", "created"))
    assert out.startswith("Applied event PAY on o-1\n"), out
    assert "created → paid" in out
    paid_offset = int(field(out, "WAL offset"))
    assert paid_offset > created_offset
    out = ok(cli(server, "apply-event", "-i", "o-1", "-e", "SHIP"))
    assert "paid → shipped" in out

    out = ok(cli(server, "get-instance", "o-1"))
    assert field(out, "State") == "shipped"
    async with server.client() as c:
        got = await c.get_instance("o-1")
        assert (got.state, got.ctx) == ("shipped", {"customer": "ada", "amount": 5})
        assert int(field(out, "Last WAL offset")) == got.last_wal_offset
        assert (await c.get_instance(generated)).state == "created"

    assert "CONFLICT" in failed(cli(server, "apply-event", "-i", generated, "-e", "PAY",
                                    "--expected-state", "paid"))
    assert "INVALID_TRANSITION" in failed(cli(server, "apply-event", "-i", "o-1", "-e", "PAY"))

    assert ok(cli(server, "delete-instance", "o-1")) == "Deleted instance o-1\n"
    assert "INSTANCE_NOT_FOUND" in failed(cli(server, "get-instance", "o-1"))
    assert "INSTANCE_NOT_FOUND" in failed(cli(server, "delete-instance", "ghost"))
    async with server.client() as c:
        assert [r.id for r in (await c.list_instances()).instances] == [generated]


# ---------------------------------------------------------------------------
# Storage: wal-read, compact, flush-all

WAL_LINE = re.compile(r"^\[\s*(\d+)\]\s+(\d+) \| (\w+)$", re.M)


async def write_some(server) -> dict:
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        created = await c.create_instance("order", 1, instance_id="o-1", initial_ctx={"a": 1})
        paid = await c.apply_event("o-1", "PAY")
        return {"created": created.wal_offset, "paid": paid.wal_offset}


async def test_wal_read(server, cli):
    assert ok(cli(server, "wal-read")) == "No WAL entries\n"
    offsets = await write_some(server)

    out = ok(cli(server, "wal-read"))
    rows = WAL_LINE.findall(out)
    assert [(int(seq), kind) for seq, _, kind in rows] == [
        (1, "put_machine"), (2, "create_instance"), (3, "apply_event")]
    assert [int(off) for _, off, _ in rows][1:] == [offsets["created"], offsets["paid"]]
    assert "Instance: o-1, Machine: order v1" in out
    assert "Instance: o-1, Event: PAY, created → paid" in out
    assert int(field(out, "Next offset")) > offsets["paid"]

    out = ok(cli(server, "wal-read", "--from", "0", "--limit", "1"))
    rows = WAL_LINE.findall(out)
    assert [(int(seq), kind) for seq, _, kind in rows] == [(1, "put_machine")]
    next_offset = int(field(out, "Next offset"))
    out = ok(cli(server, "wal-read", "-f", str(next_offset), "-l", "5"))
    assert [int(seq) for seq, _, _ in WAL_LINE.findall(out)] == [2, 3]


async def test_compact(server, cli):
    await write_some(server)
    for args in (["compact"], ["compact", "--force"], ["compact", "-f"]):
        out = ok(cli(server, *args))
        assert out.startswith("Compaction complete\n"), out
        assert int(field(out, "Snapshots created")) >= 0
        assert int(field(out, "WAL segments deleted")) >= 0
        assert re.fullmatch(r"\d+(\.\d+)? (B|KB|MB|GB)", field(out, "Bytes reclaimed"))
        assert int(field(out, "Total snapshots")) >= 1
        assert int(field(out, "WAL segments remaining")) >= 1
    async with server.client() as c:
        got = await c.get_instance("o-1")
        assert (got.state, got.ctx) == ("paid", {"a": 1})


async def test_flush_all(start_server, cli):
    server = start_server(FLUSH_CONFIG)
    await write_some(server)
    ok(cli(server, "put-machine", "-n", "ticket", "-v", "1", json.dumps(TICKET)))
    ok(cli(server, "create-instance", "-m", "ticket", "-V", "1", "-i", "t-1"))

    out = ok(cli(server, "flush-all"))
    assert out == "Database flushed\n  Instances removed: 2\n  Machines removed: 2\n"
    assert ok(cli(server, "list-machines")) == "No machines registered\n"
    async with server.client() as c:
        assert (await c.list_instances()).total == 0


def test_flush_all_refused_when_disabled(server, cli):
    err = failed(cli(server, "flush-all"))
    assert "BAD_REQUEST" in err and "allow_flush_all" in err


# ---------------------------------------------------------------------------
# Watches: watch-instance, watch-all, unwatch


async def test_watch_instance(server, cli, streaming):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        created = await c.create_instance("order", 1, instance_id="o-1",
                                          initial_ctx={"customer": "ada"})

        watch = streaming(server, "watch-instance", "o-1")
        banner = watch.wait_for(watch.stderr, WATCH_INSTANCE_BANNER)
        assert (banner["id"], banner["state"]) == ("o-1", "created")
        assert int(banner["offset"]) == created.wal_offset

        paid = await c.apply_event("o-1", "PAY", payload={"amount": 5})
        watch.wait_for(watch.stdout, r"^\{.*\}$")
        [event] = watch.events()
        assert event == {
            "type": "event",
            "subscription_id": banner["sub"],
            "instance_id": "o-1",
            "machine": "order",
            "version": 1,
            "wal_offset": paid.wal_offset,
            "from_state": "created",
            "to_state": "paid",
            "event": "PAY",
            "payload": {"amount": 5},
            "ctx": {"customer": "ada", "amount": 5},
        }

        # --no-ctx
        quiet = streaming(server, "watch-instance", "--no-ctx", "o-1")
        banner2 = quiet.wait_for(quiet.stderr, WATCH_INSTANCE_BANNER)
        assert banner2["state"] == "paid" and int(banner2["offset"]) == paid.wal_offset
        shipped = await c.apply_event("o-1", "SHIP")
        quiet.wait_for(quiet.stdout, r"^\{.*\}$")
        watch.wait_for(watch.stdout, rf'"wal_offset":{shipped.wal_offset}\b')
        [event] = quiet.events()
        assert (event["subscription_id"], event["wal_offset"], event["to_state"]) == (
            banner2["sub"], shipped.wal_offset, "shipped")
        assert "ctx" not in event or event["ctx"] is None

        for proc in (watch, quiet):
            assert proc.interrupt() == 0
            assert "Stopping watch..." in proc.stderr()
        assert len(watch.events()) == 2  # it saw SHIP too

    assert "INSTANCE_NOT_FOUND" in failed(cli(server, "watch-instance", "ghost"))


async def test_watch_all_with_filters(server, streaming):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        await c.put_machine("ticket", 1, TICKET)
        await c.create_instance("order", 1, instance_id="o-1", initial_ctx={"k": 1})
        await c.create_instance("order", 1, instance_id="o-2")
        await c.create_instance("ticket", 1, instance_id="t-1")

        everything = streaming(server, "watch-all")
        all_banner = everything.wait_for(everything.stderr, WATCH_ALL_BANNER)
        filtered = streaming(server, "watch-all", "--machines", "order,ticket",
                             "--from-states", "created", "--to-states", "paid,cancelled",
                             "--events", "PAY", "--no-ctx")
        banner = filtered.wait_for(filtered.stderr, WATCH_ALL_BANNER)
        assert banner["sub"] != all_banner["sub"]

        closed = await c.apply_event("t-1", "CLOSE")                     # event CLOSE
        cancelled = await c.apply_event("o-2", "CANCEL")                 # event CANCEL
        paid = await c.apply_event("o-1", "PAY", payload={"n": 1})       # matches
        shipped = await c.apply_event("o-1", "SHIP")                     # from paid

        everything.wait_for(everything.stdout, rf'"wal_offset":{shipped.wal_offset}\b')
        got = everything.events()
        assert sorted(e["wal_offset"] for e in got) == sorted(
            [closed.wal_offset, cancelled.wal_offset, paid.wal_offset, shipped.wal_offset])
        assert all(e["subscription_id"] == all_banner["sub"] for e in got)
        by_offset = {e["wal_offset"]: e for e in got}
        assert by_offset[closed.wal_offset]["ctx"] == {}
        assert by_offset[paid.wal_offset]["ctx"] == {"k": 1, "n": 1}

        filtered.wait_for(filtered.stdout, r"^\{.*\}$")
        time.sleep(0.3)  # anything unfiltered would have arrived by now
        [event] = filtered.events()
        assert (event["subscription_id"], event["instance_id"], event["wal_offset"]) == (
            banner["sub"], "o-1", paid.wal_offset)
        assert (event["machine"], event["from_state"], event["to_state"], event["event"]) == (
            "order", "created", "paid", "PAY")
        assert event["payload"] == {"n": 1}
        assert "ctx" not in event or event["ctx"] is None

        for proc in (everything, filtered):
            assert proc.interrupt() == 0
            assert "Stopping watch..." in proc.stderr()


async def test_unwatch(server, cli, streaming):
    async with server.client() as c:
        await c.put_machine("ticket", 1, TICKET)
        await c.create_instance("ticket", 1, instance_id="t-1")

        watch = streaming(server, "watch-all")
        sub = watch.wait_for(watch.stderr, WATCH_ALL_BANNER)["sub"]

        # The one-shot `unwatch` has a connection of its own, without
        # subscriptions: removed is false, and the other process's watch
        # goes on (subscriptions belong to their connection).
        out = ok(cli(server, "unwatch", sub))
        assert out == f"Warning: subscription {sub} not found\n"
        first = await c.apply_event("t-1", "CLOSE")
        watch.wait_for(watch.stdout, rf'"wal_offset":{first.wal_offset}\b')

        assert ok(cli(server, "unwatch", "sub-does-not-exist")) == (
            "Warning: subscription sub-does-not-exist not found\n")

        assert watch.interrupt() == 0
        assert [e["wal_offset"] for e in watch.events()] == [first.wal_offset]


# ---------------------------------------------------------------------------
# The REPL


async def test_repl_runs_every_command(server, cli):
    definition = compact_json(ORDER)
    script = "\n".join([
        "help",
        "ping",
        "info",
        f"put-machine order 1 {definition}",
        f"pm order 1 {definition}",
        "get-machine order 1",
        "list-machines",
        f"create order 1 o-1 {compact_json({'customer': 'ada'})}",
        "c order 1 o-2",
        "get o-1",
        "apply o-1 PAY " + compact_json({"amount": 5}),
        "a o-2 CANCEL",
        "list-instances order",
        "li order paid",
        "wal",
        "wal 0 2",
        "wal-stats",
        "delete o-2",
        "get o-2",
        "no-such-command",
        "reconnect",
        "ping",
        "exit",
        "ping",  # never read: `exit` ended the REPL
    ]) + "\n"
    result = cli(server, "repl", input=script)
    out = ok(result)
    async with server.client() as c:
        o1 = await c.get_instance("o-1")
    assert_in_order(
        out,
        "rstmdb CLI", f"Connecting to {HOST}:{server.port}...", "Connected!",
        "Type 'help' for available commands.",
        "Available commands:", "wal-stats                       Show WAL statistics",
        "PONG",
        '"server_name": "corestate"',
        "Created order v1 (checksum: ",
        "Exists order v1 (checksum: ",
        '"initial": "created"',
        "order v1 (4 states, 3 transitions)",
        "Created o-1 (state: created, offset: ",
        "Created o-2 (state: created, offset: ",
        "order 1 v\n  State: created\n  Context: {\n  \"customer\": \"ada\"\n}",
        f"PAY created → paid (offset: {o1.last_wal_offset})",
        "CANCEL created → cancelled (offset: ",
        "Instances (2 total)\n  o-1 (order v1) state=paid\n  o-2 (order v1) state=cancelled",
        "Instances (1 total)\n  o-1 (order v1) state=paid",
        "[1] put_machine\n[2] create_instance\n[3] create_instance\n[4] apply_event\n"
        "[5] apply_event\n",
        "[1] put_machine\n[2] create_instance\n\n",
        "WAL Statistics\n  Entries: 5\n",
        "I/O Statistics\n",
        "Deleted o-2",
        "Error: server error: INSTANCE_NOT_FOUND",
        "Unknown command: no-such-command. Type 'help' for help.",
        "Closing existing connection...", f"Reconnecting to {HOST}:{server.port}...",
        "Reconnected!",
        "PONG",
        "Disconnected.",
    )
    assert out.count("PONG") == 2
    assert "^D" not in out, "`exit` ended the REPL, not EOF"

    wal_stats = out.split("WAL Statistics", 1)[1]
    assert int(field(wal_stats, "Entries")) == 5
    assert int(field(wal_stats, "Segments")) >= 1
    assert int(field(wal_stats, "Latest offset")) > o1.last_wal_offset
    assert int(field(wal_stats, "Bytes written")) > 0
    assert int(field(wal_stats, "Writes")) > 0
    assert int(field(wal_stats, "Fsyncs")) > 0
    assert int(field(wal_stats, "Reads")) > 0, "the `wal` commands read records"
    assert int(field(wal_stats, "Bytes read")) > 0



class PtyProcess:
    """A CLI process on a pseudo-terminal, as a person at a terminal runs
    it; stopped by its own PID."""

    def __init__(self, argv: list[str], env: dict):
        self.master, follower = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=follower, stdout=follower, stderr=follower,
                                     env=env, start_new_session=True)
        os.close(follower)
        self.output = b""
        self.consumed = 0

    def read_until(self, token: bytes, timeout: float = WAIT_S) -> None:
        """Wait for `token` after what earlier calls matched, and move past it
        (so waiting for the prompt waits for the next prompt)."""
        deadline = time.monotonic() + timeout
        while token not in self.output[self.consumed:]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"{token!r} did not appear within {timeout} s: {self.output!r}")
            ready, _, _ = select.select([self.master], [], [], min(remaining, 0.1))
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # the process exited and closed the terminal
                    chunk = b""
                if not chunk:
                    pytest.fail(f"terminal closed before {token!r}: {self.output!r}")
                self.output += chunk
        self.consumed = self.output.index(token, self.consumed) + len(token)

    def type(self, text: bytes) -> None:
        os.write(self.master, text)

    def wait(self) -> int:
        try:
            return self.proc.wait(timeout=EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.proc.args} did not exit within {EXIT_WAIT_S} s: {self.output!r}")

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        os.close(self.master)


def test_repl_on_a_terminal(server, cli_env):
    """The interactive path: rustyline on a TTY prints the `rstmdb> `
    prompt, Ctrl+C (^C) abandons the line and keeps the REPL, Ctrl+D ends
    it, and the history is saved in $HOME/.rstmdb_history."""
    term = PtyProcess([cli_binary(), "-s", f"{HOST}:{server.port}", "repl"], cli_env)
    try:
        term.read_until(b"Connected!")
        term.read_until(b"rstmdb> ")
        term.type(b"ping\r")
        term.read_until(b"PONG")
        term.read_until(b"rstmdb> ")
        term.type(b"pm door 1 " + compact_json(TICKET).encode() + b"\r")
        term.read_until(b"Created door v1 (checksum: ")
        # Type only at a fresh prompt: between commands the terminal is back
        # in cooked mode, where ^C and ^D mean something else.
        term.read_until(b"rstmdb> ")
        term.type(b"half a line\x03")
        term.read_until(b"^C")
        term.read_until(b"rstmdb> ")
        term.type(b"c door 1 d-1\r")
        term.read_until(b"Created d-1 (state: open, offset: ")
        term.read_until(b"rstmdb> ")
        term.type(b"\x04")  # Ctrl+D on an empty line
        term.read_until(b"Disconnected.")
        assert term.wait() == 0
    finally:
        term.close()
    text = term.output.decode("utf-8", "replace")
    assert text.count("rstmdb> ") >= 4
    history = (Path(cli_env["HOME"]) / ".rstmdb_history").read_text().splitlines()
    assert history[-3:] == ["ping", "pm door 1 " + compact_json(TICKET), "c door 1 d-1"]
    assert "half a line" not in history


def test_no_subcommand_starts_the_repl_and_eof_ends_it(server, cli):
    out = ok(cli(server, input="ping\nq\n"))
    assert_in_order(out, "Connected!", "PONG", "Disconnected.")
    out = ok(cli(server, input="ping\n"))  # EOF
    assert_in_order(out, "Connected!", "PONG", "^D", "Disconnected.")


# ---------------------------------------------------------------------------
# Authentication: -t / $RSTMDB_TOKEN


def test_token_option_against_a_server_that_requires_auth(auth_server, cli):
    # PING needs no auth; INFO does.
    assert ok(cli(auth_server, "ping")) == "PONG\n"
    err = failed(cli(auth_server, "info"))
    assert "UNAUTHORIZED" in err

    info = json.loads(ok(cli(auth_server, "info", token=AUTH_TOKEN)))
    assert info["auth_required"] is True
    out = ok(cli(auth_server, "--token", AUTH_TOKEN, "put-machine", "-n", "ticket", "-v", "1",
                 json.dumps(TICKET)))
    assert out.startswith("Created machine ticket v1")
    # The token from the environment, as -t documents ([env: RSTMDB_TOKEN]).
    out = ok(cli(auth_server, "list-machines", env={"RSTMDB_TOKEN": AUTH_TOKEN}))
    assert out.strip() == "ticket v1 (2 states, 1 transitions)"

    err = failed(cli(auth_server, "ping", token="wrong"))
    assert "Connection failed" in err and "AUTH_FAILED" in err
    out = ok(cli(auth_server, "repl", token=AUTH_TOKEN, input="lm\n"))
    assert "ticket v1 (2 states, 1 transitions)" in out


async def test_token_option_on_watch(auth_server, cli, streaming):
    assert "UNAUTHORIZED" in failed(cli(auth_server, "watch-all"))
    async with auth_server.client(token=AUTH_TOKEN) as c:
        await c.put_machine("ticket", 1, TICKET)
        await c.create_instance("ticket", 1, instance_id="t-1")
        watch = streaming(auth_server, "watch-all", token=AUTH_TOKEN)
        watch.wait_for(watch.stderr, WATCH_ALL_BANNER)
        closed = await c.apply_event("t-1", "CLOSE")
        watch.wait_for(watch.stdout, rf'"wal_offset":{closed.wal_offset}\b')
        assert watch.interrupt() == 0


# ---------------------------------------------------------------------------
# TLS options: --tls, --ca-cert, --client-cert, --client-key, -k, --server-name


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_tls_options(start_server, pki, cli):
    server = start_server(tls_config(pki, mtls=True))
    ca = ["--ca-cert", str(pki / "ca.pem")]
    client_cert = ["--client-cert", str(pki / "client.pem"), "--client-key", str(pki / "client.key")]

    assert ok(cli(server, *ca, *client_cert, "ping")) == "PONG\n"
    assert ok(cli(server, "--tls", *ca, *client_cert, "--server-name", "localhost",
                  "ping")) == "PONG\n"
    out = ok(cli(server, *ca, *client_cert, "info"))
    assert json.loads(out)["server_name"] == "corestate"
    out = ok(cli(server, *ca, *client_cert, "repl", input="ping\n"))
    assert_in_order(out, "Connected!", "PONG", "Disconnected.")

    # Refusals: a server certificate the CLI cannot verify, no client
    # certificate on an mTLS port, half a client identity.
    assert "Connection failed" in failed(cli(server, "--ca-cert", str(pki / "rogue-ca.pem"),
                                             *client_cert, "ping"))
    assert "Connection failed" in failed(cli(server, *ca, "ping"))
    err = failed(cli(server, *ca, "--client-cert", str(pki / "client.pem"), "ping"))
    assert "--client-cert and --client-key must be used together" in err
    assert server.is_running()

    # -k (no certificate verification) on a TLS port without mTLS.
    # rstmdb-client 0.3.0's insecure connector never sends a client
    # certificate (tls.rs: `with_no_client_auth()`), so -k cannot reach an
    # mTLS port; and the client logs a WARN line to stdout.
    plain_tls = start_server(tls_config(pki))
    out = ok(cli(plain_tls, "--tls", "-k", "ping"))
    assert out.splitlines()[-1] == "PONG"
    assert "Using insecure TLS" in out
    assert "Connection failed" in failed(cli(plain_tls, "ping"))  # plain TCP on a TLS port
