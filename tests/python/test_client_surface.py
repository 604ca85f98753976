"""Every public method of rstmdb's official Python client (rstmdb 0.2.1),
called against the real corestate binary, with the parsed result checked.

The lists below name the whole public surface of the package that talks to
a server: `rstmdb.Client` and the lower-level `rstmdb.Connection` that the
package also exports. (The other exports are models, errors, `Frame` and
`create_ssl_context`, which make no requests; TLS is tested in
test_tls.py.) `test_the_lists_name_the_whole_public_surface` compares them
with what introspection finds, so a method the client gains, or one dropped
from a list, fails there. Every call a test in this file makes on a listed
name is recorded, and `test_every_listed_method_was_called`, the last test
of the file, fails if one was never called.

A method that raises, or returns a result of the wrong shape, fails its
test: nothing here catches an exception except where an error answer is
the behaviour under test (`pytest.raises`). The `Client.__init__` options
(token, timeouts, auto-reconnect settings, `on_reconnect`) are exercised
along the way; `tls`/`ca_cert`/`client_cert`/`client_key`/`insecure` are in
test_tls.py.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import re
import sys

import pytest
import rstmdb
from rstmdb import (
    ApplyEventResult,
    Client,
    Connection,
    CreateInstanceResult,
    FlushAllResult,
    GetInstanceResult,
    GetMachineResult,
    InstanceSummary,
    ListInstancesResult,
    Operation,
    PutMachineResult,
    Response,
    ServerError,
    StreamEvent,
    UnwatchResult,
    WalIoStats,
    WalStatsResult,
    WatchAllResult,
    WatchInstanceResult,
)
from rstmdb import ConnectionError as ClientConnectionError

from conftest import AUTH_TOKEN, HOST

# ---------------------------------------------------------------------------
# The public surface, by name

# rstmdb.Client (0.2.1): every public method and property.
PUBLIC_METHODS = [
    # session
    "connect",
    "close",
    "reconnect",
    "is_connected",  # property
    "ping",
    "info",
    # machines
    "put_machine",
    "get_machine",
    "list_machines",
    # instances
    "create_instance",
    "get_instance",
    "list_instances",
    "delete_instance",
    "apply_event",
    # watches
    "watch_instance",
    "watch_all",
    "unwatch",
    "events",  # async iterator
    # storage
    "wal_read",
    "wal_stats",
    "compact",
    "flush_all",
]

# rstmdb.Connection (0.2.1), exported by the package: the low-level API.
CONNECTION_PUBLIC_METHODS = [
    "connect",
    "request",
    "events",
    "close",
    "is_connected",  # property
]

EXPECTED_PACKAGE_VERSION = "0.2.1"
EVENT_TIMEOUT_S = 10.0
HEX8 = re.compile(r"^[0-9a-f]{8}$")

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

FLUSH_CONFIG = "storage:\n  allow_flush_all: true\n"


def public_surface(cls) -> set[str]:
    """Public callables and properties defined on `cls` (not on `object`)."""
    names = set()
    for name, value in inspect.getmembers(cls):
        if name.startswith("_"):
            continue
        if isinstance(value, property) or callable(value):
            names.add(name)
    return names


# ---------------------------------------------------------------------------
# Which listed names the tests of this file called (directly, not through
# the client's own internals: `async with client` calls `connect` from
# client.py, which does not count).

CALLED: set[tuple[str, str]] = set()
THIS_FILE = __file__


def _recording(cls_name: str, name: str, original):
    key = (cls_name, name)

    def called_from_here() -> bool:
        return sys._getframe(2).f_code.co_filename == THIS_FILE

    if isinstance(original, property):
        def getter(self):
            if called_from_here():
                CALLED.add(key)
            return original.fget(self)
        return property(getter, doc=original.__doc__)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        if called_from_here():
            CALLED.add(key)
        return original(*args, **kwargs)
    return wrapper


@pytest.fixture(scope="module", autouse=True)
def record_calls():
    patch = pytest.MonkeyPatch()
    for cls, names in ((Client, PUBLIC_METHODS), (Connection, CONNECTION_PUBLIC_METHODS)):
        for name in names:
            original = inspect.getattr_static(cls, name, None)
            if original is not None:
                patch.setattr(cls, name, _recording(cls.__name__, name, original))
    yield
    patch.undo()


# ---------------------------------------------------------------------------
# Helpers


async def next_event(client, timeout: float = EVENT_TIMEOUT_S) -> StreamEvent:
    """The next event from `client.events()` within `timeout`."""
    events = client.events()
    try:
        return await asyncio.wait_for(events.__anext__(), timeout)
    except asyncio.TimeoutError:
        pytest.fail(f"no event within {timeout} s")
    finally:
        await events.aclose()


def assert_summary(row, *, id, machine, version, state, last_wal_offset):
    assert isinstance(row, InstanceSummary)
    assert (row.id, row.machine, row.version, row.state, row.last_wal_offset) == (
        id, machine, version, state, last_wal_offset)
    assert isinstance(row.created_at, int) and isinstance(row.updated_at, int)
    assert 0 < row.created_at <= row.updated_at


# ---------------------------------------------------------------------------
# The lists


def test_the_lists_name_the_whole_public_surface():
    assert rstmdb.__version__ == EXPECTED_PACKAGE_VERSION
    assert len(PUBLIC_METHODS) == len(set(PUBLIC_METHODS)), "a name is listed twice"
    assert set(PUBLIC_METHODS) == public_surface(Client), (
        f"missing from PUBLIC_METHODS: {sorted(public_surface(Client) - set(PUBLIC_METHODS))}; "
        f"listed but not on Client: {sorted(set(PUBLIC_METHODS) - public_surface(Client))}")
    assert set(CONNECTION_PUBLIC_METHODS) == public_surface(Connection), (
        f"Connection has {sorted(public_surface(Connection))}")
    # The package's exports that are classes with methods talking to a
    # server are exactly Client and Connection.
    talking = {name for name in rstmdb.__all__
               if inspect.isclass(getattr(rstmdb, name))
               and any(inspect.iscoroutinefunction(v) or inspect.isasyncgenfunction(v)
                       for _, v in inspect.getmembers(getattr(rstmdb, name)))}
    assert talking == {"Client", "Connection"}


# ---------------------------------------------------------------------------
# Session: connect, is_connected, close, reconnect, ping, info


async def test_connect_close_reconnect_and_is_connected(server):
    reconnects = []
    c = server.client(on_reconnect=lambda: reconnects.append("called"))
    assert c.is_connected is False
    assert await c.connect() is None
    assert c.is_connected is True
    assert await c.ping() is True

    assert await c.close() is None
    assert c.is_connected is False
    with pytest.raises(ClientConnectionError):  # no auto_reconnect
        await c.ping()

    assert await c.reconnect() is None
    assert reconnects == ["called"]
    assert c.is_connected is True
    assert await c.ping() is True
    # reconnect() on a live connection replaces it.
    assert await c.reconnect() is None
    assert reconnects == ["called", "called"]
    assert await c.ping() is True
    await c.close()
    assert c.is_connected is False


async def test_auto_reconnect_options_reconnect_on_the_next_request(server):
    reconnects = []
    c = server.client(auto_reconnect=True, max_reconnect_attempts=3,
                      reconnect_base_delay=0.01, reconnect_max_delay=0.05,
                      on_reconnect=lambda: reconnects.append("called"))
    await c.connect()
    await c.put_machine("order", 1, ORDER)
    await c.close()
    assert c.is_connected is False
    got = await c.get_machine("order", 1)  # reconnects first
    assert isinstance(got, GetMachineResult)
    assert reconnects == ["called"]
    assert c.is_connected is True
    await c.close()


async def test_token_is_sent_on_connect_and_on_reconnect(auth_server):
    c = auth_server.client(token=AUTH_TOKEN)
    await c.connect()
    assert c.is_connected
    put = await c.put_machine("order", 1, ORDER)
    assert put.created is True
    await c.reconnect()
    assert (await c.get_machine("order", 1)).checksum == put.stored_checksum
    await c.close()

    wrong = auth_server.client(token="not-the-token")
    with pytest.raises(ServerError) as info:
        await wrong.connect()
    assert info.value.code == "AUTH_FAILED"
    await wrong.close()


async def test_ping_and_info(server):
    c = server.client()
    await c.connect()
    assert await c.ping() is True
    info = await c.info()
    assert isinstance(info, dict)
    assert info["protocol_version"] == 1
    assert info["server_name"] == "corestate"
    assert isinstance(info["server_version"], str) and info["server_version"]
    assert info["features"] == ["batch", "idempotency", "wal_read", "watch"]
    assert isinstance(info["max_frame_bytes"], int) and info["max_frame_bytes"] > 0
    assert isinstance(info["max_batch_ops"], int) and info["max_batch_ops"] > 0
    assert info["auth_required"] is False
    assert info["shards"] == 2
    await c.close()


# ---------------------------------------------------------------------------
# Machines


async def test_put_machine_get_machine_list_machines(server):
    async with server.client() as c:
        assert await c.list_machines() == []

        put = await c.put_machine("order", 1, ORDER)
        assert isinstance(put, PutMachineResult)
        assert (put.machine, put.version, put.created) == ("order", 1, True)
        assert HEX8.match(put.stored_checksum), put.stored_checksum

        again = await c.put_machine("order", 1, ORDER)
        assert (again.created, again.stored_checksum) == (False, put.stored_checksum)

        v2 = await c.put_machine("order", 2, ORDER)
        assert (v2.version, v2.created) == (2, True)
        ticket = await c.put_machine("ticket", 1, TICKET)
        assert ticket.created is True and HEX8.match(ticket.stored_checksum)
        assert ticket.stored_checksum != put.stored_checksum

        got = await c.get_machine("order", 1)
        assert isinstance(got, GetMachineResult)
        assert got.checksum == put.stored_checksum
        assert got.definition["states"] == ORDER["states"]
        assert got.definition["initial"] == "created"
        assert got.definition["transitions"][0] == {"from": ["created"], "event": "PAY", "to": "paid"}
        assert len(got.definition["transitions"]) == len(ORDER["transitions"])

        machines = await c.list_machines()
        assert isinstance(machines, list)
        assert sorted(machines, key=lambda m: m["machine"]) == [
            {"machine": "order", "versions": [1, 2]},
            {"machine": "ticket", "versions": [1]},
        ]

        with pytest.raises(ServerError) as info:
            await c.get_machine("order", 3)
        assert info.value.code == "MACHINE_NOT_FOUND"


# ---------------------------------------------------------------------------
# Instances


async def test_create_instance_with_every_option(server):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)

        named = await c.create_instance("order", 1, instance_id="o-1",
                                        initial_ctx={"customer": "ada"})
        assert isinstance(named, CreateInstanceResult)
        assert (named.instance_id, named.state) == ("o-1", "created")
        assert isinstance(named.wal_offset, int) and named.wal_offset >= 0

        generated = await c.create_instance("order", 1)
        assert isinstance(generated.instance_id, str) and generated.instance_id
        assert generated.instance_id != "o-1"
        assert generated.state == "created"
        assert generated.wal_offset != named.wal_offset

        keyed = await c.create_instance(machine="order", version=1, instance_id="o-2",
                                        initial_ctx={"n": 1}, idempotency_key="create-o-2")
        replay = await c.create_instance(machine="order", version=1, instance_id="o-2",
                                         initial_ctx={"n": 1}, idempotency_key="create-o-2")
        assert replay == keyed, "a replayed key answers the first result"

        with pytest.raises(ServerError) as info:
            await c.create_instance("order", 1, instance_id="o-1")
        assert info.value.code == "INSTANCE_EXISTS"


async def test_get_instance(server):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        created = await c.create_instance("order", 1, instance_id="o-1",
                                          initial_ctx={"customer": "ada"})
        got = await c.get_instance("o-1")
        assert isinstance(got, GetInstanceResult)
        assert (got.machine, got.version, got.state) == ("order", 1, "created")
        assert got.ctx == {"customer": "ada"}
        assert got.last_wal_offset == created.wal_offset
        assert got.last_event_id is None

        paid = await c.apply_event("o-1", "PAY", payload={"amount": 5})
        got = await c.get_instance("o-1")
        assert got.state == "paid"
        assert got.ctx == {"customer": "ada", "amount": 5}
        assert got.last_wal_offset == paid.wal_offset

        with pytest.raises(ServerError) as info:
            await c.get_instance("nope")
        assert info.value.code == "INSTANCE_NOT_FOUND"


async def test_list_instances_filters_and_pages(server):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        await c.put_machine("ticket", 1, TICKET)
        offsets = {}
        for i in range(5):
            offsets[f"o-{i}"] = (await c.create_instance("order", 1, instance_id=f"o-{i}")).wal_offset
        offsets["t-0"] = (await c.create_instance("ticket", 1, instance_id="t-0")).wal_offset
        for i in (1, 3):
            offsets[f"o-{i}"] = (await c.apply_event(f"o-{i}", "PAY")).wal_offset

        everything = await c.list_instances()
        assert isinstance(everything, ListInstancesResult)
        assert (everything.total, everything.has_more) == (6, False)
        assert [r.id for r in everything.instances] == sorted(offsets)
        for row in everything.instances:
            machine = "ticket" if row.id.startswith("t") else "order"
            state = {"o-1": "paid", "o-3": "paid", "t-0": "open"}.get(row.id, "created")
            assert_summary(row, id=row.id, machine=machine, version=1, state=state,
                           last_wal_offset=offsets[row.id])

        orders = await c.list_instances(machine="order")
        assert [r.id for r in orders.instances] == [f"o-{i}" for i in range(5)]
        assert (orders.total, orders.has_more) == (5, False)

        paid = await c.list_instances(machine="order", state="paid")
        assert [r.id for r in paid.instances] == ["o-1", "o-3"]
        assert paid.total == 2

        opened = await c.list_instances(state="open")
        assert [r.id for r in opened.instances] == ["t-0"]

        page1 = await c.list_instances(machine="order", limit=2)
        assert [r.id for r in page1.instances] == ["o-0", "o-1"]
        assert (page1.total, page1.has_more) == (5, True)
        page2 = await c.list_instances(machine="order", limit=2, offset=2)
        assert [r.id for r in page2.instances] == ["o-2", "o-3"]
        assert page2.has_more is True
        page3 = await c.list_instances("order", None, 2, 4)
        assert [r.id for r in page3.instances] == ["o-4"]
        assert (page3.total, page3.has_more) == (5, False)

        none = await c.list_instances(machine="no-such-machine")
        assert (none.instances, none.total, none.has_more) == ([], 0, False)


async def test_apply_event_with_and_without_idempotency_key(server):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        created = await c.create_instance("order", 1, instance_id="o-1",
                                          initial_ctx={"customer": "ada"})
        await c.create_instance("order", 1, instance_id="o-2")

        plain = await c.apply_event("o-1", "PAY")
        assert isinstance(plain, ApplyEventResult)
        assert (plain.from_state, plain.to_state, plain.applied) == ("created", "paid", True)
        assert plain.ctx == {"customer": "ada"}
        assert plain.wal_offset > created.wal_offset
        assert plain.event_id is None

        shipped = await c.apply_event("o-1", "SHIP", payload={"carrier": "ups"},
                                      expected_state="paid")
        assert (shipped.from_state, shipped.to_state, shipped.applied) == ("paid", "shipped", True)
        assert shipped.ctx == {"customer": "ada", "carrier": "ups"}
        assert shipped.wal_offset > plain.wal_offset

        keyed = await c.apply_event(instance_id="o-2", event="PAY", payload={"amount": 3},
                                    expected_state="created", idempotency_key="pay-o-2")
        assert (keyed.from_state, keyed.to_state, keyed.applied) == ("created", "paid", True)
        assert keyed.ctx == {"amount": 3}
        replay = await c.apply_event(instance_id="o-2", event="PAY", payload={"amount": 3},
                                     expected_state="created", idempotency_key="pay-o-2")
        assert replay.applied is False, "a replay writes nothing"
        assert (replay.from_state, replay.to_state, replay.wal_offset, replay.ctx) == (
            keyed.from_state, keyed.to_state, keyed.wal_offset, keyed.ctx)
        assert (await c.get_instance("o-2")).last_wal_offset == keyed.wal_offset

        with pytest.raises(ServerError) as info:
            await c.apply_event("o-2", "SHIP", expected_state="created")
        assert info.value.code == "CONFLICT"
        with pytest.raises(ServerError) as info:
            await c.apply_event("o-1", "PAY")
        assert info.value.code == "INVALID_TRANSITION"


async def test_delete_instance_with_and_without_idempotency_key(server):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        first = await c.create_instance("order", 1, instance_id="o-1")
        await c.create_instance("order", 1, instance_id="o-2")

        deleted = await c.delete_instance("o-1")
        assert isinstance(deleted, dict)
        assert deleted["instance_id"] == "o-1"
        assert deleted["deleted"] is True
        assert isinstance(deleted["wal_offset"], int) and deleted["wal_offset"] > first.wal_offset
        with pytest.raises(ServerError) as info:
            await c.get_instance("o-1")
        assert info.value.code == "INSTANCE_NOT_FOUND"

        keyed = await c.delete_instance("o-2", idempotency_key="delete-o-2")
        assert (keyed["instance_id"], keyed["deleted"]) == ("o-2", True)
        replay = await c.delete_instance("o-2", idempotency_key="delete-o-2")
        assert replay == keyed, "a replayed key answers the first result"

        # Deletes are soft and repeatable (as in rstmdb): a second delete
        # answers the first one's offset.
        again = await c.delete_instance("o-1")
        assert again == deleted
        with pytest.raises(ServerError) as info:
            await c.delete_instance("ghost")
        assert info.value.code == "INSTANCE_NOT_FOUND"
        assert (await c.list_instances()).total == 0


# ---------------------------------------------------------------------------
# Watches: watch_instance, watch_all, events, unwatch


async def test_watch_instance_events_and_unwatch(server):
    async with server.client() as writer, server.client() as watcher:
        await writer.put_machine("order", 1, ORDER)
        created = await writer.create_instance("order", 1, instance_id="o-1",
                                               initial_ctx={"customer": "ada"})

        sub = await watcher.watch_instance("o-1")
        assert isinstance(sub, WatchInstanceResult)
        assert sub.subscription_id.startswith("sub-")
        assert (sub.instance_id, sub.current_state) == ("o-1", "created")
        assert sub.current_wal_offset == created.wal_offset

        paid = await writer.apply_event("o-1", "PAY", payload={"amount": 5})
        event = await next_event(watcher)
        assert isinstance(event, StreamEvent)
        assert (event.type, event.subscription_id, event.instance_id) == (
            "event", sub.subscription_id, "o-1")
        assert (event.machine, event.version, event.wal_offset) == ("order", 1, paid.wal_offset)
        assert (event.from_state, event.to_state, event.event) == ("created", "paid", "PAY")
        assert event.payload == {"amount": 5}
        assert event.ctx == {"customer": "ada", "amount": 5}

        removed = await watcher.unwatch(sub.subscription_id)
        assert isinstance(removed, UnwatchResult)
        assert (removed.subscription_id, removed.removed) == (sub.subscription_id, True)
        again = await watcher.unwatch(sub.subscription_id)
        assert again.removed is False

        no_ctx = await watcher.watch_instance(instance_id="o-1", include_ctx=False)
        assert no_ctx.subscription_id != sub.subscription_id
        assert (no_ctx.current_state, no_ctx.current_wal_offset) == ("paid", paid.wal_offset)
        shipped = await writer.apply_event("o-1", "SHIP")
        event = await next_event(watcher)
        assert (event.subscription_id, event.wal_offset) == (no_ctx.subscription_id, shipped.wal_offset)
        assert event.payload is None and event.ctx is None
        assert (await watcher.unwatch(no_ctx.subscription_id)).removed is True

        with pytest.raises(ServerError) as info:
            await watcher.watch_instance("nope")
        assert info.value.code == "INSTANCE_NOT_FOUND"


async def test_watch_all_with_every_filter_events_and_unwatch(server):
    async with server.client() as writer, server.client() as watcher:
        await writer.put_machine("order", 1, ORDER)
        await writer.put_machine("ticket", 1, TICKET)
        await writer.create_instance("order", 1, instance_id="o-1", initial_ctx={"k": 1})
        await writer.create_instance("order", 1, instance_id="o-2")
        await writer.create_instance("ticket", 1, instance_id="t-1")

        everything = await watcher.watch_all()
        assert isinstance(everything, WatchAllResult)
        assert everything.subscription_id.startswith("sub-")
        assert isinstance(everything.wal_offset, int)
        closed = await writer.apply_event("t-1", "CLOSE")
        event = await next_event(watcher)
        assert (event.subscription_id, event.instance_id, event.machine) == (
            everything.subscription_id, "t-1", "ticket")
        assert (event.event, event.wal_offset, event.ctx) == ("CLOSE", closed.wal_offset, {})
        assert (await watcher.unwatch(everything.subscription_id)).removed is True

        filtered = await watcher.watch_all(machines=["order"], from_states=["paid"],
                                           to_states=["cancelled"], events=["CANCEL"],
                                           include_ctx=False)
        assert filtered.subscription_id != everything.subscription_id
        # None of these match every filter ...
        await writer.apply_event("o-2", "CANCEL")           # from created
        await writer.apply_event("o-1", "PAY")              # event PAY
        # ... this one does.
        cancelled = await writer.apply_event("o-1", "CANCEL", payload={"why": "late"})
        event = await next_event(watcher)
        assert (event.subscription_id, event.instance_id, event.wal_offset) == (
            filtered.subscription_id, "o-1", cancelled.wal_offset)
        assert (event.from_state, event.to_state, event.event) == ("paid", "cancelled", "CANCEL")
        assert event.payload == {"why": "late"}
        assert event.ctx is None, "include_ctx=False"
        removed = await watcher.unwatch(filtered.subscription_id)
        assert (removed.subscription_id, removed.removed) == (filtered.subscription_id, True)


# ---------------------------------------------------------------------------
# Storage: wal_read, wal_stats, compact, flush_all


async def write_some(c) -> dict:
    put = await c.put_machine("order", 1, ORDER)
    created = await c.create_instance("order", 1, instance_id="o-1", initial_ctx={"a": 1})
    paid = await c.apply_event("o-1", "PAY", payload={"amount": 2})
    return {"put": put, "created": created, "paid": paid}


async def test_wal_read_from_offset_and_limit(server):
    async with server.client() as c:
        wrote = await write_some(c)

        result = await c.wal_read()
        assert isinstance(result, dict)
        records = result["records"]
        assert [r["sequence"] for r in records] == [1, 2, 3]
        offsets = [r["offset"] for r in records]
        assert offsets == sorted(offsets) and len(set(offsets)) == 3
        assert offsets[1:] == [wrote["created"].wal_offset, wrote["paid"].wal_offset]
        assert isinstance(result["next_offset"], int) and result["next_offset"] > offsets[-1]

        put, create, apply = (r["entry"] for r in records)
        assert put["type"] == "put_machine"
        assert (put["machine"], put["version"]) == ("order", 1)
        assert create["type"] == "create_instance"
        assert (create["instance_id"], create["machine"], create["version"]) == ("o-1", "order", 1)
        assert create["initial_ctx"] == {"a": 1}
        assert apply["type"] == "apply_event"
        assert (apply["instance_id"], apply["event"], apply["from_state"], apply["to_state"]) == (
            "o-1", "PAY", "created", "paid")
        assert apply["payload"] == {"amount": 2}

        first = await c.wal_read(from_offset=0, limit=1)
        assert [r["sequence"] for r in first["records"]] == [1]
        assert first["next_offset"] > offsets[0]
        rest = await c.wal_read(first["next_offset"], 5)
        assert [r["sequence"] for r in rest["records"]] == [2, 3]
        assert [r["offset"] for r in rest["records"]] == offsets[1:]
        tail = await c.wal_read(from_offset=offsets[2])
        assert [r["offset"] for r in tail["records"]] == [offsets[2]]


async def test_wal_stats(server):
    async with server.client() as c:
        await write_some(c)
        wal = await c.wal_read()
        last = wal["records"][-1]

        stats = await c.wal_stats()
        assert isinstance(stats, WalStatsResult)
        assert stats.entry_count == last["sequence"] == 3
        assert stats.segment_count >= 1
        assert stats.total_size_bytes > 0
        assert isinstance(stats.latest_offset, int) and stats.latest_offset > last["offset"]
        io = stats.io_stats
        assert isinstance(io, WalIoStats)
        assert io.bytes_written > 0 and io.writes > 0 and io.fsyncs > 0  # --fsync every_write
        assert io.reads > 0 and io.bytes_read > 0, "the WAL_READ above read records"

        await c.apply_event("o-1", "SHIP")
        later = await c.wal_stats()
        assert later.entry_count == 4
        assert later.total_size_bytes > stats.total_size_bytes
        assert later.io_stats.bytes_written > io.bytes_written
        assert later.io_stats.writes > io.writes


async def test_compact_with_and_without_force_snapshot(server):
    async with server.client() as c:
        wrote = await write_some(c)
        await c.create_instance("order", 1, instance_id="o-2")

        result = await c.compact()
        assert isinstance(result, dict)
        for key in ("snapshots_created", "segments_deleted", "bytes_reclaimed",
                    "total_snapshots", "wal_segments"):
            assert isinstance(result[key], int) and result[key] >= 0, (key, result)
        assert result["total_snapshots"] >= result["snapshots_created"]
        assert result["wal_segments"] >= 1

        forced = await c.compact(force_snapshot=True)
        assert forced["snapshots_created"] >= 1, forced
        assert forced["total_snapshots"] >= 1

        got = await c.get_instance("o-1")
        assert (got.state, got.ctx, got.last_wal_offset) == (
            "paid", {"a": 1, "amount": 2}, wrote["paid"].wal_offset)
        assert (await c.list_instances()).total == 2
        after = await c.apply_event("o-1", "SHIP")
        assert after.wal_offset > wrote["paid"].wal_offset


async def test_flush_all_removes_everything_when_enabled(start_server):
    server = start_server(FLUSH_CONFIG)
    async with server.client() as c:
        await write_some(c)
        await c.put_machine("ticket", 1, TICKET)
        await c.create_instance("ticket", 1, instance_id="t-1")

        flushed = await c.flush_all()
        assert isinstance(flushed, FlushAllResult)
        assert (flushed.flushed, flushed.instances_removed, flushed.machines_removed) == (True, 2, 2)
        assert await c.list_machines() == []
        assert (await c.list_instances()).total == 0
        # The server goes on working.
        assert (await c.put_machine("order", 1, ORDER)).created is True


async def test_flush_all_is_refused_when_disabled(server):
    async with server.client() as c:
        await write_some(c)
        with pytest.raises(ServerError) as info:
            await c.flush_all()
        assert info.value.code == "BAD_REQUEST"
        assert "allow_flush_all" in info.value.message
        assert (await c.get_instance("o-1")).state == "paid"


# ---------------------------------------------------------------------------
# rstmdb.Connection, the low-level API


async def test_connection_connect_request_events_close(auth_server):
    conn = Connection(HOST, auth_server.port, connect_timeout=5.0, request_timeout=10.0)
    assert conn.is_connected is False
    assert await conn.connect(client_name="surface-test", auth_token=AUTH_TOKEN) is None
    assert conn.is_connected is True

    pong = await conn.request(Operation.PING, {})
    assert isinstance(pong, Response)
    assert (pong.status, pong.result, pong.error) == ("ok", {"pong": True}, None)

    put = await conn.request(Operation.PUT_MACHINE,
                             {"machine": "ticket", "version": 1, "definition": TICKET})
    assert put.status == "ok" and put.result["created"] is True
    await conn.request(Operation.CREATE_INSTANCE, {"machine": "ticket", "version": 1,
                                                   "instance_id": "t-1"})
    sub = await conn.request(Operation.WATCH_INSTANCE, {"instance_id": "t-1"})
    assert sub.status == "ok"
    applied = await conn.request(Operation.APPLY_EVENT, {"instance_id": "t-1", "event": "CLOSE"})
    assert applied.status == "ok"

    events = conn.events()
    event = await asyncio.wait_for(events.__anext__(), EVENT_TIMEOUT_S)
    await events.aclose()
    assert isinstance(event, StreamEvent)
    assert (event.subscription_id, event.instance_id, event.to_state, event.wal_offset) == (
        sub.result["subscription_id"], "t-1", "closed", applied.result["wal_offset"])

    missing = await conn.request(Operation.GET_INSTANCE, {"instance_id": "nope"})
    assert missing.status == "error"
    assert missing.error.code == "INSTANCE_NOT_FOUND"
    assert missing.error.retryable is False

    assert await conn.close() is None
    assert conn.is_connected is False


# ---------------------------------------------------------------------------
# Keep this test last: it reads what the tests above called.


def test_every_listed_method_was_called(request):
    here = [item for item in request.session.items if item.module is request.module]
    if len(here) != len([n for n in dir(request.module) if n.startswith("test_")]):
        pytest.skip("only meaningful when every test of this file runs")
    missing_client = [n for n in PUBLIC_METHODS if ("Client", n) not in CALLED]
    missing_conn = [n for n in CONNECTION_PUBLIC_METHODS if ("Connection", n) not in CALLED]
    assert not missing_client, f"Client methods no test called: {missing_client}"
    assert not missing_conn, f"Connection methods no test called: {missing_conn}"
