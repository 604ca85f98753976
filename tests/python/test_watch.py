"""Watch streams through rstmdb's official Python client (rstmdb 0.2.1).

`watch_all(...)` and `watch_instance(...)` are plain awaits that answer the
subscription; the events arrive on the same connection and are read with
`client.events()`, an async iterator over every subscription of that client.
The tests watch on one client and write on another, on instances placed on
both shards (`crc32c(instance_id) % 2`), and check every field of the
events the client parses: subscription_id, instance_id, machine, version,
wal_offset (equal to the APPLY_EVENT's), from_state, to_state, event,
payload (None when none was sent) and ctx (None without include_ctx).

To check that *nothing* arrives, the tests look at the client's own event
queue after a pause (`client._conn._events`), because abandoning a pending
`events()` iteration on a timeout ends that iterator.
"""

from __future__ import annotations

import asyncio

import pytest
from rstmdb import ServerError

from conftest import AUTH_TOKEN

SHARDS = 2
EVENT_TIMEOUT_S = 10.0
QUIET_S = 0.4

ORDER = {
    "states": ["created", "paid", "shipped", "cancelled"],
    "initial": "created",
    "transitions": [
        {"from": "created", "event": "PAY", "to": "paid"},
        {"from": "paid", "event": "SHIP", "to": "shipped"},
        {"from": ["created", "paid"], "event": "CANCEL", "to": "cancelled"},
        {"from": ["created", "paid", "shipped"], "event": "NOTE", "to": "created"},
    ],
}

TICKET = {
    "states": ["open", "closed"],
    "initial": "open",
    "transitions": [{"from": "open", "event": "CLOSE", "to": "closed"}],
}


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC32C[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def shard_of(instance_id: str) -> int:
    return crc32c(instance_id.encode()) % SHARDS


def ids_on_all_shards(prefix: str, per_shard: int) -> list[str]:
    """`per_shard` ids on each shard, interleaved shard 0, shard 1, ..."""
    by_shard: list[list[str]] = [[] for _ in range(SHARDS)]
    n = 0
    while any(len(ids) < per_shard for ids in by_shard):
        candidate = f"{prefix}-{n}"
        ids = by_shard[shard_of(candidate)]
        if len(ids) < per_shard:
            ids.append(candidate)
        n += 1
    return [by_shard[s][i] for i in range(per_shard) for s in range(SHARDS)]


def test_crc32c_matches_the_standard_check_value():
    # CRC-32C("123456789") = 0xE3069283 (RFC 3720 / the usual check value).
    assert crc32c(b"123456789") == 0xE3069283


async def take_events(client, n: int, timeout: float = EVENT_TIMEOUT_S) -> list:
    """The next `n` events from `client.events()`, within `timeout`."""
    got = []

    async def collect():
        async for event in client.events():
            got.append(event)
            if len(got) == n:
                return

    try:
        await asyncio.wait_for(collect(), timeout)
    except asyncio.TimeoutError:
        pass
    assert len(got) == n, f"expected {n} events within {timeout} s, got {len(got)}: {got}"
    return got


async def assert_quiet(client) -> None:
    await asyncio.sleep(QUIET_S)
    queue = client._conn._events
    extra = []
    while not queue.empty():
        extra.append(queue.get_nowait())
    assert not extra, f"unexpected events: {extra}"


async def setup_orders(writer, prefix: str, per_shard: int = 1) -> list[str]:
    await writer.put_machine("order", 1, ORDER)
    ids = ids_on_all_shards(prefix, per_shard)
    for instance_id in ids:
        await writer.create_instance("order", 1, instance_id=instance_id,
                                     initial_ctx={"customer": instance_id})
    return ids


async def test_watch_all_delivers_every_field_in_offset_order(server):
    async with server.client() as writer, server.client() as watcher:
        ids = await setup_orders(writer, "py-all")
        sub = await watcher.watch_all()
        assert sub.subscription_id.startswith("sub-")
        assert isinstance(sub.wal_offset, int)

        paid = await writer.apply_event(ids[0], "PAY", payload={"amount": 12})
        cancelled = await writer.apply_event(ids[1], "CANCEL")
        shipped = await writer.apply_event(ids[0], "SHIP", payload={"carrier": "ups"})

        events = await take_events(watcher, 3)
        offsets = [e.wal_offset for e in events]
        assert offsets == sorted(offsets) and len(set(offsets)) == 3, offsets
        assert offsets == sorted([paid.wal_offset, cancelled.wal_offset, shipped.wal_offset])
        by_offset = {e.wal_offset: e for e in events}
        for e in events:
            assert e.type == "event"
            assert e.subscription_id == sub.subscription_id
            assert e.machine == "order" and e.version == 1

        e = by_offset[paid.wal_offset]
        assert (e.instance_id, e.from_state, e.to_state, e.event) == (ids[0], "created", "paid", "PAY")
        assert e.payload == {"amount": 12}
        assert e.ctx == {"customer": ids[0], "amount": 12}

        e = by_offset[cancelled.wal_offset]
        assert (e.instance_id, e.from_state, e.to_state, e.event) == (
            ids[1], "created", "cancelled", "CANCEL")
        assert e.payload is None, "payload is null when none was sent"
        assert e.ctx == {"customer": ids[1]}

        e = by_offset[shipped.wal_offset]
        assert (e.from_state, e.to_state, e.event) == ("paid", "shipped", "SHIP")
        assert e.ctx == {"customer": ids[0], "amount": 12, "carrier": "ups"}

        # Creates and failed applies produce nothing.
        await writer.create_instance("order", 1, instance_id="py-all-extra")
        with pytest.raises(ServerError) as info:
            await writer.apply_event(ids[1], "PAY")
        assert info.value.code == "INVALID_TRANSITION"
        await assert_quiet(watcher)


async def test_watch_all_filters_and_include_ctx(server):
    async with server.client() as writer, server.client() as watcher:
        ids = await setup_orders(writer, "py-filter")
        await writer.put_machine("ticket", 1, TICKET)
        ticket = ids_on_all_shards("py-ticket", 1)[1]
        await writer.create_instance("ticket", 1, instance_id=ticket)

        to_paid = await watcher.watch_all(machines=["order"], to_states=["paid"], include_ctx=False)
        closes = await watcher.watch_all(events=["CLOSE"], from_states=["open"])

        a = await writer.apply_event(ids[0], "PAY", payload={"n": 1})
        await writer.apply_event(ids[1], "CANCEL")
        c = await writer.apply_event(ticket, "CLOSE")
        d = await writer.apply_event(ids[0], "NOTE")
        assert d.to_state == "created"
        e = await writer.apply_event(ids[0], "PAY")

        events = await take_events(watcher, 3)
        got = sorted((ev.subscription_id, ev.wal_offset) for ev in events)
        want = sorted([(to_paid.subscription_id, a.wal_offset),
                       (to_paid.subscription_id, e.wal_offset),
                       (closes.subscription_id, c.wal_offset)])
        assert got == want
        for ev in events:
            if ev.subscription_id == to_paid.subscription_id:
                assert ev.ctx is None, "include_ctx=False"
                assert ev.to_state == "paid"
            else:
                assert ev.ctx == {}, "include_ctx defaults to True"
                assert ev.machine == "ticket"
        await assert_quiet(watcher)


async def test_watch_instance_sees_only_its_instance(server):
    async with server.client() as writer, server.client() as watcher:
        ids = await setup_orders(writer, "py-inst")
        first = await writer.apply_event(ids[1], "PAY", payload={"step": 1})

        sub = await watcher.watch_instance(ids[1], include_ctx=False)
        assert sub.instance_id == ids[1]
        assert sub.current_state == "paid"
        assert sub.current_wal_offset == first.wal_offset
        assert sub.subscription_id.startswith("sub-")
        with pytest.raises(ServerError) as info:
            await watcher.watch_instance("py-inst-missing")
        assert info.value.code == "INSTANCE_NOT_FOUND"

        await writer.apply_event(ids[0], "PAY")
        shipped = await writer.apply_event(ids[1], "SHIP", payload={"step": 2})
        await writer.apply_event(ids[0], "SHIP")
        noted = await writer.apply_event(ids[1], "NOTE")

        events = await take_events(watcher, 2)
        assert [e.wal_offset for e in events] == [shipped.wal_offset, noted.wal_offset]
        assert all(e.instance_id == ids[1] and e.subscription_id == sub.subscription_id
                   for e in events)
        assert events[0].payload == {"step": 2} and events[1].payload is None
        assert all(e.ctx is None for e in events)
        await assert_quiet(watcher)


async def test_unwatch_stops_the_stream(server):
    async with server.client() as writer, server.client() as watcher:
        ids = await setup_orders(writer, "py-unwatch")
        everything = await watcher.watch_all()
        one = await watcher.watch_instance(ids[0])

        a = await writer.apply_event(ids[0], "PAY")
        events = await take_events(watcher, 2)
        assert sorted(e.subscription_id for e in events) == sorted(
            [everything.subscription_id, one.subscription_id])
        assert all(e.wal_offset == a.wal_offset for e in events)

        removed = await watcher.unwatch(everything.subscription_id)
        assert removed.removed is True
        assert removed.subscription_id == everything.subscription_id
        assert (await watcher.unwatch(everything.subscription_id)).removed is False
        assert (await watcher.unwatch("sub-unknown")).removed is False

        await writer.apply_event(ids[1], "PAY")
        b = await writer.apply_event(ids[0], "SHIP")
        events = await take_events(watcher, 1)
        assert events[0].subscription_id == one.subscription_id
        assert events[0].wal_offset == b.wal_offset
        await assert_quiet(watcher)

        await watcher.unwatch(one.subscription_id)
        await writer.apply_event(ids[0], "NOTE")
        await assert_quiet(watcher)
        assert await watcher.ping() is True


async def test_events_from_both_shards_arrive_once_in_offset_order(server):
    async with server.client() as writer, server.client() as watcher:
        ids = await setup_orders(writer, "py-order", per_shard=3)
        assert {shard_of(i) for i in ids} == set(range(SHARDS))
        await watcher.watch_all(include_ctx=False)

        async def flip(instance_id):
            offsets = []
            for event in ("PAY", "SHIP", "NOTE", "PAY", "CANCEL"):
                offsets.append((await writer.apply_event(instance_id, event)).wal_offset)
            return offsets

        acked = await asyncio.gather(*(flip(i) for i in ids))
        want = sorted(o for offsets in acked for o in offsets)
        events = await take_events(watcher, len(want))
        assert [e.wal_offset for e in events] == want
        await assert_quiet(watcher)


async def test_watches_need_authentication(auth_server):
    async with auth_server.client(token=AUTH_TOKEN) as writer:
        ids = await setup_orders(writer, "py-auth")
        async with auth_server.client() as anonymous:
            for call in (anonymous.watch_all(), anonymous.watch_instance(ids[0]),
                         anonymous.unwatch("sub-x")):
                with pytest.raises(ServerError) as info:
                    await call
                assert info.value.code == "UNAUTHORIZED"
            await writer.apply_event(ids[0], "PAY")
            await assert_quiet(anonymous)

        async with auth_server.client(token=AUTH_TOKEN) as watcher:
            sub = await watcher.watch_all()
            b = await writer.apply_event(ids[1], "PAY")
            (event,) = await take_events(watcher, 1)
            assert event.subscription_id == sub.subscription_id
            assert event.wal_offset == b.wal_offset
