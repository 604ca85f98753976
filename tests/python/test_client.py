"""corestate against rstmdb's official Python client (rstmdb 0.2.1).

Each test starts its own server (conftest.py) and talks to it only through
`rstmdb.Client`, the way an application would. Two things the client does
not expose are reached through its own request path: `expected_wal_offset`
and `event_id` on APPLY_EVENT (`Client._request`), and the `retryable` flag
of an error (`Client._conn.request`, which returns the raw response).

Where corestate deliberately differs from rstmdb 0.3 the tests check
corestate's behaviour: `initial_ctx` defaults to `{}`; invalid definitions
and guards are BAD_REQUEST (not retryable); guards are strict; several
transitions may share a (state, event) and the first passing guard wins;
an idempotent replay answers `applied: false` and keys survive restarts;
LIST_INSTANCES is ordered by instance id; wal_offset values are opaque and
only compared with each other.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from rstmdb import ConnectionError as ClientConnectionError
from rstmdb import Operation, ServerError

from conftest import AUTH_TOKEN

# ---------------------------------------------------------------------------
# Machines used across the suite

ORDER = {
    "states": ["created", "paid", "shipped", "cancelled"],
    "initial": "created",
    "transitions": [
        {"from": "created", "event": "PAY", "to": "paid"},
        {"from": ["paid"], "event": "SHIP", "to": "shipped"},
        {"from": ["created", "paid"], "event": "CANCEL", "to": "cancelled"},
        {"from": ["created"], "event": "NOTE", "to": "created"},
        {"from": ["paid"], "event": "NOTE", "to": "paid"},
    ],
}

# Guarded alternatives: REVIEW picks the first transition whose guard
# passes; DECIDE falls back to an unguarded transition.
LOAN = {
    "states": ["pending", "approved", "manual", "rejected"],
    "initial": "pending",
    "transitions": [
        {"from": "pending", "event": "UPDATE", "to": "pending"},
        {"from": "pending", "event": "REVIEW", "to": "approved", "guard": "ctx.score >= 80"},
        {"from": "pending", "event": "REVIEW", "to": "manual", "guard": "ctx.score >= 50"},
        {"from": "pending", "event": "DECIDE", "to": "approved", "guard": "ctx.vip == true"},
        {"from": "pending", "event": "DECIDE", "to": "rejected"},
    ],
}

MS_PER_S = 1000


def two_state_machine(guard: str | None = None) -> dict:
    transition = {"from": "a", "event": "GO", "to": "b"}
    if guard is not None:
        transition["guard"] = guard
    return {"states": ["a", "b"], "initial": "a", "transitions": [transition]}


async def expect_code(code: str, awaitable) -> ServerError:
    """Await and require a ServerError carrying `code`."""
    with pytest.raises(ServerError) as info:
        await awaitable
    assert info.value.code == code, f"expected {code}, got {info.value}"
    return info.value


async def raw_request(client, op: Operation, params: dict):
    """The raw response (with `error.retryable`), bypassing result parsing."""
    return await client._conn.request(op, params)


async def apply_raw(client, **params) -> dict:
    """APPLY_EVENT with parameters the client's apply_event() cannot send."""
    return await client._request(Operation.APPLY_EVENT, params)


# ---------------------------------------------------------------------------
# Session


async def test_client_connects_and_pings(server):
    async with server.client() as c:
        assert c.is_connected
        assert await c.ping() is True
        info = await c.info()
        assert info["protocol_version"] == 1


# ---------------------------------------------------------------------------
# Machines


async def test_put_machine_then_get_returns_normalised_definition(server):
    async with server.client() as c:
        put = await c.put_machine("order", 1, ORDER)
        assert put.created is True
        assert put.machine == "order" and put.version == 1
        assert len(put.stored_checksum) == 8
        int(put.stored_checksum, 16)

        got = await c.get_machine("order", 1)
        assert got.checksum == put.stored_checksum
        assert got.definition["states"] == ORDER["states"]
        assert got.definition["initial"] == "created"
        # `from` is always an array in the normalised form.
        assert got.definition["transitions"][0] == {"from": ["created"], "event": "PAY", "to": "paid"}
        assert len(got.definition["transitions"]) == len(ORDER["transitions"])


async def test_reput_of_same_definition_is_idempotent(server):
    async with server.client() as c:
        first = await c.put_machine("order", 1, ORDER)
        again = await c.put_machine("order", 1, ORDER)
        assert again.created is False
        assert again.stored_checksum == first.stored_checksum

        # Key order, `from` as a string vs an array, and unknown keys do not
        # change the definition's identity.
        same = {
            "transitions": [
                {"to": "paid", "event": "PAY", "from": ["created"]},
                {"to": "shipped", "event": "SHIP", "from": "paid", "comment": "dropped"},
                {"to": "cancelled", "event": "CANCEL", "from": ["created", "paid"]},
                {"to": "created", "event": "NOTE", "from": "created"},
                {"to": "paid", "event": "NOTE", "from": "paid"},
            ],
            "initial": "created",
            "states": ["created", "paid", "shipped", "cancelled"],
            "unknown_key": 1,
        }
        equivalent = await c.put_machine("order", 1, same)
        assert equivalent.created is False
        assert equivalent.stored_checksum == first.stored_checksum


# (definition sent, stored_checksum) — docs/PROTOCOL.md Appendix A.
CHECKSUM_VECTORS = [
    ({"states": ["a"], "initial": "a", "transitions": []}, "6b16bc3e"),
    ({"transitions": [{"to": "paid", "event": "PAY", "from": "created", "description": "x"}],
      "initial": "created", "states": ["created", "paid"], "meta": None, "extra": 1},
     "26adbd14"),
    ({"states": ["created", "paid", "shipped"], "initial": "created",
      "transitions": [{"from": "created", "event": "PAY", "to": "paid"},
                      {"from": ["paid"], "event": "SHIP", "to": "shipped", "guard": "ctx.ready"}],
      "meta": {"z": 1, "a": [1.0, 2]}},
     "387f29a5"),
    ({"states": ["s"], "initial": "s", "transitions": [],
      "meta": {"b": "é/\n\"\u0001", "a": 1e20, "c": 1.5e-7, "d": 100.0, "e": -0.0,
               "f": 12345678901234567890}},
     "f5e5f316"),
]


async def test_machine_checksums_match_the_spec_vectors(server):
    async with server.client() as c:
        for n, (definition, checksum) in enumerate(CHECKSUM_VECTORS):
            put = await c.put_machine(f"vector-{n}", 1, definition)
            assert put.stored_checksum == checksum, f"vector {n}"
            assert (await c.get_machine(f"vector-{n}", 1)).checksum == checksum


async def test_put_of_different_definition_at_same_version_fails_machine_version_exists(server):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        changed = dict(ORDER, states=ORDER["states"] + ["refunded"])
        await expect_code("MACHINE_VERSION_EXISTS", c.put_machine("order", 1, changed))
        # The stored version is unchanged and a new version is fine.
        got = await c.get_machine("order", 1)
        assert got.definition["states"] == ORDER["states"]
        assert (await c.put_machine("order", 2, changed)).created is True


async def test_list_machines_sorted_by_name_with_versions_ascending(server):
    async with server.client() as c:
        assert await c.list_machines() == []
        await c.put_machine("order", 7, ORDER)
        await c.put_machine("order", 0, ORDER)
        await c.put_machine("loan", 1, LOAN)
        await c.put_machine("order", 2, ORDER)
        assert await c.list_machines() == [
            {"machine": "loan", "versions": [1]},
            {"machine": "order", "versions": [0, 2, 7]},
        ]


async def test_get_unknown_machine_fails_machine_not_found(server):
    async with server.client() as c:
        await expect_code("MACHINE_NOT_FOUND", c.get_machine("nope", 1))
        await c.put_machine("order", 1, ORDER)
        await expect_code("MACHINE_NOT_FOUND", c.get_machine("order", 2))


INVALID_DEFINITIONS = {
    "initial not in states": {"states": ["a"], "initial": "z", "transitions": []},
    "empty states": {"states": [], "initial": "a", "transitions": []},
    "target not in states": {
        "states": ["a"], "initial": "a",
        "transitions": [{"from": "a", "event": "GO", "to": "z"}]},
    "source not in states": {
        "states": ["a"], "initial": "a",
        "transitions": [{"from": ["a", "z"], "event": "GO", "to": "a"}]},
    "missing states": {"initial": "a", "transitions": []},
    "missing transitions": {"states": ["a"], "initial": "a"},
    "states not strings": {"states": [1], "initial": "a", "transitions": []},
    "transition missing event": {
        "states": ["a"], "initial": "a", "transitions": [{"from": "a", "to": "a"}]},
}

INVALID_GUARDS = [
    "",
    "   ",
    "n == 1",
    "ctx.",
    "(ctx.a",
    'ctx.a == "x',
    "ctx.a > abc",
    'ctx.a >= "x"',
    "ctx.a > ctx.b",
    "ctx.a ||",
    # Strict parsing: trailing text that rstmdb 0.3 silently ignores.
    "ctx.a garbage &&& (((",
    "ctx.a = 1",
    "ctx.a & ctx.b",
    "ctx.n > 1e3",
    "ctx.n == 1 ctx.zero",
    "ctx.t == trueish",
    "ctx.a-b",
]


async def test_invalid_definitions_fail_bad_request_not_retryable(server):
    async with server.client() as c:
        for name, definition in INVALID_DEFINITIONS.items():
            resp = await raw_request(c, Operation.PUT_MACHINE,
                                     {"machine": "bad", "version": 1, "definition": definition})
            assert resp.status == "error", f"{name}: accepted"
            assert resp.error.code == "BAD_REQUEST", f"{name}: {resp.error}"
            assert resp.error.retryable is False, f"{name}: {resp.error}"
        # Nothing was registered, and the connection is still usable.
        assert await c.list_machines() == []


async def test_invalid_guards_fail_bad_request_not_retryable(server):
    async with server.client() as c:
        for guard in INVALID_GUARDS:
            resp = await raw_request(c, Operation.PUT_MACHINE,
                                     {"machine": "bad", "version": 1,
                                      "definition": two_state_machine(guard)})
            assert resp.status == "error", f"guard {guard!r}: accepted"
            assert resp.error.code == "BAD_REQUEST", f"guard {guard!r}: {resp.error}"
            assert resp.error.retryable is False, f"guard {guard!r}: {resp.error}"
        assert await c.list_machines() == []


async def test_non_ascii_guard_field_is_handled_without_dropping_the_connection(server):
    # rstmdb 0.3 crashes its connection handler here (PROTOCOL.md §6.3). Either a
    # clean rejection or working support is acceptable; a dropped connection
    # is not.
    async with server.client() as c:
        resp = await raw_request(c, Operation.PUT_MACHINE,
                                 {"machine": "u", "version": 1,
                                  "definition": two_state_machine('ctx.ü == "x\\é"')})
        if resp.status == "error":
            assert resp.error.code == "BAD_REQUEST"
        assert await c.ping() is True


# ---------------------------------------------------------------------------
# Instances: create, get


async def test_create_instance_with_id_and_ctx_then_get(server):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        created = await c.create_instance("order", 1, instance_id="order-1",
                                          initial_ctx={"customer": "ann", "items": [1, 2]})
        assert created.instance_id == "order-1"
        assert created.state == "created"

        got = await c.get_instance("order-1")
        assert got.machine == "order" and got.version == 1
        assert got.state == "created"
        assert got.ctx == {"customer": "ann", "items": [1, 2]}
        assert got.last_wal_offset == created.wal_offset
        assert got.last_event_id is None


async def test_create_instance_without_id_generates_uuid_v4(server):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        a = await c.create_instance("order", 1)
        b = await c.create_instance("order", 1)
        for created in (a, b):
            parsed = uuid.UUID(created.instance_id)
            assert parsed.version == 4
            assert created.instance_id == str(parsed)  # 36 chars, lower-case, hyphenated
        assert a.instance_id != b.instance_id
        assert a.wal_offset != b.wal_offset


async def test_instance_created_without_ctx_has_empty_ctx_and_merges_payload(server):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        created = await c.create_instance("order", 1, instance_id="bare")
        got = await c.get_instance("bare")  # must parse: ctx is {} not null
        assert got.ctx == {}
        # The client drops an empty initial_ctx; either way ctx is {}.
        await c.create_instance("order", 1, instance_id="empty", initial_ctx={})
        assert (await c.get_instance("empty")).ctx == {}

        applied = await c.apply_event("bare", "PAY", payload={"amount": 5})
        assert applied.ctx == {"amount": 5}
        assert (await c.get_instance("bare")).ctx == {"amount": 5}
        assert applied.wal_offset != created.wal_offset


async def test_create_with_existing_id_fails_instance_exists(server):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        await c.create_instance("order", 1, instance_id="dup", initial_ctx={"v": 1})
        await c.apply_event("dup", "PAY")
        await expect_code("INSTANCE_EXISTS",
                          c.create_instance("order", 1, instance_id="dup", initial_ctx={"v": 2}))
        got = await c.get_instance("dup")
        assert got.state == "paid" and got.ctx == {"v": 1}


async def test_create_for_unknown_machine_or_version_fails_machine_not_found(server):
    async with server.client() as c:
        await expect_code("MACHINE_NOT_FOUND", c.create_instance("nope", 1, instance_id="x"))
        await c.put_machine("order", 1, ORDER)
        await expect_code("MACHINE_NOT_FOUND", c.create_instance("order", 2, instance_id="x"))
        await expect_code("INSTANCE_NOT_FOUND", c.get_instance("x"))


async def test_get_unknown_instance_fails_instance_not_found(server):
    async with server.client() as c:
        err = await expect_code("INSTANCE_NOT_FOUND", c.get_instance("ghost"))
        assert "ghost" in err.message


async def test_instances_are_bound_to_their_machine_version(server):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        v2 = dict(ORDER, transitions=[{"from": "created", "event": "SKIP", "to": "shipped"}])
        await c.put_machine("order", 2, v2)
        await c.create_instance("order", 1, instance_id="one")
        await c.create_instance("order", 2, instance_id="two")
        await expect_code("INVALID_TRANSITION", c.apply_event("one", "SKIP"))
        await expect_code("INVALID_TRANSITION", c.apply_event("two", "PAY"))
        assert (await c.apply_event("two", "SKIP")).to_state == "shipped"
        assert (await c.get_instance("two")).version == 2


async def test_unicode_ids_and_context_round_trip(server):
    async with server.client() as c:
        await c.put_machine("machine ü", 1, ORDER)
        ident = "заказ 1 / 注文 🚀"
        ctx = {"name": "Zoë", "emoji": "🚀", "nested": {"k": ["ü", None, 1.5, True]}}
        await c.create_instance("machine ü", 1, instance_id=ident, initial_ctx=ctx)
        got = await c.get_instance(ident)
        assert got.machine == "machine ü"
        assert got.ctx == ctx
        listed = await c.list_instances(machine="machine ü")
        assert [i.id for i in listed.instances] == [ident]


async def test_large_context_round_trips(server):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        blob = "x" * 300_000
        await c.create_instance("order", 1, instance_id="big", initial_ctx={"blob": blob})
        applied = await c.apply_event("big", "PAY", payload={"more": "y" * 100_000})
        assert applied.ctx == {"blob": blob, "more": "y" * 100_000}
        assert (await c.get_instance("big")).ctx == applied.ctx


# ---------------------------------------------------------------------------
# Instances: list


async def test_list_instances_filters_by_machine_and_state(server):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        await c.put_machine("order", 2, ORDER)
        await c.put_machine("loan", 1, LOAN)
        for i in range(4):
            await c.create_instance("order", 1 + i % 2, instance_id=f"o{i}")
        for i in range(3):
            await c.create_instance("loan", 1, instance_id=f"l{i}")
        await c.apply_event("o1", "PAY")
        await c.apply_event("o3", "PAY")
        await c.apply_event("o3", "SHIP")

        everything = await c.list_instances()
        assert everything.total == 7 and everything.has_more is False
        assert len(everything.instances) == 7

        orders = await c.list_instances(machine="order")  # any version
        assert orders.total == 4
        assert {i.id for i in orders.instances} == {"o0", "o1", "o2", "o3"}
        assert {i.version for i in orders.instances} == {1, 2}

        paid = await c.list_instances(machine="order", state="paid")
        assert paid.total == 1 and [i.id for i in paid.instances] == ["o1"]

        created = await c.list_instances(state="created")
        assert created.total == 2 and [i.id for i in created.instances] == ["o0", "o2"]
        pending = await c.list_instances(state="pending")
        assert pending.total == 3

        none = await c.list_instances(machine="order", state="pending")
        assert none.total == 0 and none.instances == [] and none.has_more is False
        assert (await c.list_instances(machine="nope")).total == 0


async def test_list_instances_pages_with_limit_and_offset_in_id_order(server):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        ids = [f"inst-{n:02d}" for n in range(7)]
        for ident in [ids[i] for i in (4, 0, 6, 2, 5, 1, 3)]:  # not in id order
            await c.create_instance("order", 1, instance_id=ident)

        full = await c.list_instances()
        assert [i.id for i in full.instances] == ids

        seen = []
        offset = 0
        while True:
            page = await c.list_instances(machine="order", limit=3, offset=offset)
            assert page.total == 7
            seen += [i.id for i in page.instances]
            offset += len(page.instances)
            assert page.has_more == (offset < 7)
            if not page.has_more:
                break
        assert seen == ids

        assert [i.id for i in (await c.list_instances(limit=2, offset=5)).instances] == ids[5:]
        zero = await c.list_instances(limit=0)
        assert zero.instances == [] and zero.total == 7 and zero.has_more is True
        past_end = await c.list_instances(offset=50)
        assert past_end.instances == [] and past_end.total == 7 and past_end.has_more is False


async def test_list_instances_defaults_to_100_rows_in_byte_order_of_ids(server):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        ids = [f"n{n:03d}" for n in range(117)] + ["B", "Z", "a", "é", "\u00e9x", "~"]
        await asyncio.gather(*(c.create_instance("order", 1, instance_id=i) for i in ids))
        ordered = sorted(ids, key=lambda i: i.encode("utf-8"))
        first = await c.list_instances()
        assert first.total == len(ids) and first.has_more is True
        assert [i.id for i in first.instances] == ordered[:100]
        rest = await c.list_instances(offset=100)
        assert [i.id for i in rest.instances] == ordered[100:]
        assert rest.has_more is False


async def test_list_instances_summaries_carry_state_offsets_and_ms_timestamps(server):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        before_ms = int(time.time() * MS_PER_S)
        await c.create_instance("order", 1, instance_id="s1")
        applied = await c.apply_event("s1", "PAY")
        after_ms = int(time.time() * MS_PER_S)

        [summary] = (await c.list_instances()).instances
        assert summary.id == "s1"
        assert summary.machine == "order" and summary.version == 1
        assert summary.state == "paid"
        assert summary.last_wal_offset == applied.wal_offset
        slack_ms = 5 * MS_PER_S
        assert before_ms - slack_ms <= summary.created_at <= summary.updated_at <= after_ms + slack_ms


# ---------------------------------------------------------------------------
# Instances: delete


async def test_delete_instance_is_soft_and_repeatable(server):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        await c.create_instance("order", 1, instance_id="keep")
        await c.create_instance("order", 1, instance_id="gone")

        deleted = await c.delete_instance("gone")
        assert deleted["deleted"] is True
        assert deleted["instance_id"] == "gone"
        assert isinstance(deleted["wal_offset"], int)

        await expect_code("INSTANCE_NOT_FOUND", c.get_instance("gone"))
        await expect_code("INSTANCE_NOT_FOUND", c.apply_event("gone", "PAY"))
        listed = await c.list_instances()
        assert [i.id for i in listed.instances] == ["keep"] and listed.total == 1

        again = await c.delete_instance("gone")
        assert again["deleted"] is True
        assert again["wal_offset"] == deleted["wal_offset"]


async def test_delete_unknown_instance_fails_instance_not_found(server):
    async with server.client() as c:
        await expect_code("INSTANCE_NOT_FOUND", c.delete_instance("ghost"))


async def test_deleted_id_can_be_created_again_from_scratch(server):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        await c.create_instance("order", 1, instance_id="phoenix", initial_ctx={"life": 1})
        await c.apply_event("phoenix", "PAY")
        await c.delete_instance("phoenix")
        reborn = await c.create_instance("order", 1, instance_id="phoenix",
                                         initial_ctx={"life": 2})
        assert reborn.state == "created"
        got = await c.get_instance("phoenix")
        assert got.state == "created" and got.ctx == {"life": 2}


# ---------------------------------------------------------------------------
# APPLY_EVENT


async def test_apply_event_transitions_and_merges_payload_shallowly(server):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        created = await c.create_instance(
            "order", 1, instance_id="m1",
            initial_ctx={"a": 1, "keep": "me", "nested": {"x": 1, "y": 2}})

        applied = await c.apply_event("m1", "PAY",
                                      payload={"a": 2, "b": None, "nested": {"z": 3}})
        assert applied.applied is True
        assert applied.from_state == "created" and applied.to_state == "paid"
        expected_ctx = {"a": 2, "keep": "me", "b": None, "nested": {"z": 3}}
        assert applied.ctx == expected_ctx
        assert applied.wal_offset != created.wal_offset
        assert applied.event_id is None

        got = await c.get_instance("m1")
        assert got.state == "paid"
        assert got.ctx == expected_ctx
        assert got.last_wal_offset == applied.wal_offset

        # An apply without payload keeps the context.
        shipped = await c.apply_event("m1", "SHIP")
        assert shipped.ctx == expected_ctx
        assert shipped.from_state == "paid" and shipped.to_state == "shipped"


async def test_self_transition_writes_and_merges(server):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        await c.create_instance("order", 1, instance_id="self", initial_ctx={"n": 0})
        first = await c.apply_event("self", "NOTE", payload={"n": 1})
        second = await c.apply_event("self", "NOTE", payload={"n": 2})
        assert (first.from_state, first.to_state) == ("created", "created")
        assert second.ctx == {"n": 2}
        assert second.wal_offset != first.wal_offset
        assert (await c.get_instance("self")).last_wal_offset == second.wal_offset


async def test_wal_offsets_of_one_instance_increase(server):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        offsets = [(await c.create_instance("order", 1, instance_id="w")).wal_offset]
        for _ in range(5):
            offsets.append((await c.apply_event("w", "NOTE")).wal_offset)
        offsets.append((await c.delete_instance("w"))["wal_offset"])
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)


async def test_event_id_is_echoed_and_kept_as_last_event_id(server):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        await c.create_instance("order", 1, instance_id="e")
        result = await apply_raw(c, instance_id="e", event="PAY", event_id="evt-1")
        assert result["event_id"] == "evt-1"
        assert (await c.get_instance("e")).last_event_id == "evt-1"


async def test_event_without_transition_fails_invalid_transition(server):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        created = await c.create_instance("order", 1, instance_id="t", initial_ctx={"v": 1})
        await expect_code("INVALID_TRANSITION", c.apply_event("t", "SHIP", payload={"v": 2}))
        await expect_code("INVALID_TRANSITION", c.apply_event("t", "pay"))  # case-sensitive
        got = await c.get_instance("t")
        assert got.state == "created" and got.ctx == {"v": 1}
        assert got.last_wal_offset == created.wal_offset


async def test_apply_to_unknown_instance_fails_instance_not_found(server):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        await expect_code("INSTANCE_NOT_FOUND", c.apply_event("ghost", "PAY"))


# ---------------------------------------------------------------------------
# Guards


async def test_guard_sees_context_before_the_payload(server):
    async with server.client() as c:
        await c.put_machine("loan", 1, LOAN)
        await c.create_instance("loan", 1, instance_id="g", initial_ctx={"score": 10})
        # The payload would satisfy the guard, but guards see the old ctx.
        await expect_code("GUARD_FAILED", c.apply_event("g", "REVIEW", payload={"score": 95}))
        got = await c.get_instance("g")
        assert got.state == "pending" and got.ctx == {"score": 10}

        await c.apply_event("g", "UPDATE", payload={"score": 95})
        passed = await c.apply_event("g", "REVIEW")
        assert passed.to_state == "approved"


async def test_guarded_alternatives_first_passing_guard_wins(server):
    async with server.client() as c:
        await c.put_machine("loan", 1, LOAN)
        cases = {"high": 90, "edge": 80, "mid": 60, "low": 49}
        for ident, score in cases.items():
            await c.create_instance("loan", 1, instance_id=ident, initial_ctx={"score": score})
        # 90 and 80 pass both guards: the first listed transition wins.
        assert (await c.apply_event("high", "REVIEW")).to_state == "approved"
        assert (await c.apply_event("edge", "REVIEW")).to_state == "approved"
        assert (await c.apply_event("mid", "REVIEW")).to_state == "manual"
        await expect_code("GUARD_FAILED", c.apply_event("low", "REVIEW"))
        assert (await c.get_instance("low")).state == "pending"


async def test_unguarded_alternative_is_the_fallback(server):
    async with server.client() as c:
        await c.put_machine("loan", 1, LOAN)
        await c.create_instance("loan", 1, instance_id="vip", initial_ctx={"vip": True})
        await c.create_instance("loan", 1, instance_id="normal", initial_ctx={"vip": False})
        await c.create_instance("loan", 1, instance_id="unknown")
        assert (await c.apply_event("vip", "DECIDE")).to_state == "approved"
        assert (await c.apply_event("normal", "DECIDE")).to_state == "rejected"
        assert (await c.apply_event("unknown", "DECIDE")).to_state == "rejected"


# (guard, initial ctx, passes?) — semantics of PROTOCOL.md §6.5.
GUARD_CASES = [
    ("ctx.flag", {"flag": True}, True),
    ("ctx.flag", {"flag": False}, False),
    ("ctx.flag", {"other": 1}, False),
    ("ctx.flag", {"flag": 0}, False),
    ("ctx.flag", {"flag": "x"}, True),
    ("ctx.flag", {"flag": ""}, False),
    ("ctx.flag", {"flag": []}, False),
    ("ctx.flag", {"flag": {"k": 1}}, True),
    ('ctx.name == "bob"', {"name": "bob"}, True),
    ('ctx.name == "bob"', {"name": "Bob"}, False),
    ('ctx.name != "bob"', {"other": 1}, True),
    ("ctx.x == null", {"other": 1}, True),
    ("ctx.n == 1", {"n": 1.0}, True),
    ('ctx.n == "1"', {"n": 1}, False),
    ("ctx.n == true", {"n": 1}, False),
    ("ctx.s > 5", {"s": "10"}, False),
    ("ctx.n>=-1.5", {"n": -1.5}, True),
    ("ctx.n < .5", {"n": 0.25}, True),
    ("ctx.n > 5 && ctx.n <= 10", {"n": 10}, True),
    ("ctx.n > 5 && ctx.n <= 10", {"n": 11}, False),
    ("ctx.a || ctx.b", {"b": "x"}, True),
    ("ctx.a || ctx.b", {"c": 1}, False),
    ("!ctx.n > 5", {"n": 3}, True),
    ("!(ctx.a && ctx.b)", {"a": True, "b": True}, False),
    ("!!ctx.a", {"a": True}, True),
    ("ctx.a && (ctx.b || ctx.c)", {"a": 1, "c": 1}, True),
    ('ctx.user.tier == "gold"', {"user": {"tier": "gold"}}, True),
    ('ctx.user.tier == "gold"', {"user": "gold"}, False),
    ("ctx.items.0", {"items": [1]}, False),
    ("ctx.snake_case1", {"snake_case1": True}, True),
    # PROTOCOL.md Appendix A truth table rows (strict-grammar ones).
    ("ctx.big == 9007199254740993", {"big": 9007199254740992}, True),
    ("ctx.n < 1.0000000000000002", {"n": 1}, True),
    ("ctx.n > 5.", {"n": 1}, False),
    ("ctx.n.", {"n": 1}, False),
    ('ctx.s == "a\\"b"', {"s": 'a\\"b'}, True),  # literal is not unescaped
    ('ctx.q == "a\\"b"', {"q": 'a"b'}, False),
    ("ctx.n > 0 && ctx.zero || ctx.t", {"n": 1, "zero": 0, "t": True}, True),
    ("ctx.zero || ctx.n && ctx.t", {"n": 1, "zero": 0, "t": True}, True),
    ("ctx.n != null", {"n": 1}, True),
    ("ctx.nul == null", {"nul": None}, True),
]


async def test_guard_expressions_follow_the_spec_semantics(server):
    async with server.client() as c:
        failures = []
        for n, (guard, ctx, passes) in enumerate(GUARD_CASES):
            machine = f"guard-{n}"
            await c.put_machine(machine, 1, two_state_machine(guard))
            await c.create_instance(machine, 1, instance_id=machine, initial_ctx=ctx)
            try:
                result = await c.apply_event(machine, "GO")
                outcome = result.to_state == "b"
            except ServerError as e:
                if e.code != "GUARD_FAILED":
                    raise
                outcome = False
            if outcome != passes:
                failures.append(f"{guard!r} with ctx {ctx}: expected {passes}, got {outcome}")
        assert not failures, "\n".join(failures)


# ---------------------------------------------------------------------------
# Optimistic concurrency


async def test_expected_state_mismatch_fails_conflict(server):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        await c.create_instance("order", 1, instance_id="occ", initial_ctx={"v": 1})
        err = await expect_code("CONFLICT", c.apply_event("occ", "PAY", payload={"v": 2},
                                                          expected_state="paid"))
        assert "paid" in err.message and "created" in err.message
        got = await c.get_instance("occ")
        assert got.state == "created" and got.ctx == {"v": 1}

        ok = await c.apply_event("occ", "PAY", payload={"v": 2}, expected_state="created")
        assert ok.to_state == "paid"


async def test_expected_state_is_checked_before_the_transition(server):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        await c.create_instance("order", 1, instance_id="occ")
        await expect_code("CONFLICT", c.apply_event("occ", "SHIP", expected_state="paid"))


async def test_expected_wal_offset_mismatch_fails_conflict(server):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        created = await c.create_instance("order", 1, instance_id="occ")

        wrong = created.wal_offset + 1
        await expect_code("CONFLICT", apply_raw(c, instance_id="occ", event="PAY",
                                                expected_wal_offset=wrong))
        assert (await c.get_instance("occ")).state == "created"

        first = await apply_raw(c, instance_id="occ", event="PAY",
                                expected_wal_offset=created.wal_offset)
        assert first["to_state"] == "paid"

        # The offset seen before the last write is now stale.
        await expect_code("CONFLICT", apply_raw(c, instance_id="occ", event="SHIP",
                                                expected_wal_offset=created.wal_offset))
        current = (await c.get_instance("occ")).last_wal_offset
        assert current == first["wal_offset"]
        second = await apply_raw(c, instance_id="occ", event="SHIP", expected_wal_offset=current)
        assert second["to_state"] == "shipped"


async def test_concurrent_applies_with_expected_state_let_exactly_one_win(server):
    async with server.client() as c1, server.client() as c2:
        await c1.put_machine("order", 1, ORDER)
        await c1.create_instance("order", 1, instance_id="race")
        attempts = [
            client.apply_event("race", "PAY", payload={"winner": n}, expected_state="created")
            for n, client in enumerate([c1, c2] * 10)
        ]
        results = await asyncio.gather(*attempts, return_exceptions=True)
        wins = [r for r in results if not isinstance(r, BaseException)]
        losses = [r for r in results if isinstance(r, BaseException)]
        assert len(wins) == 1, results
        assert all(isinstance(e, ServerError) and e.code == "CONFLICT" for e in losses), losses
        got = await c2.get_instance("race")
        assert got.state == "paid" and got.ctx == wins[0].ctx


async def test_pipelined_requests_on_one_connection_all_complete(server):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        ids = [f"p{n:03d}" for n in range(100)]
        await asyncio.gather(*(c.create_instance("order", 1, instance_id=i,
                                                 initial_ctx={"n": n})
                               for n, i in enumerate(ids)))
        applied = await asyncio.gather(*(c.apply_event(i, "PAY") for i in ids))
        assert all(a.to_state == "paid" for a in applied)
        listed = await c.list_instances(state="paid", limit=1000)
        assert [i.id for i in listed.instances] == ids
        gets = await asyncio.gather(*(c.get_instance(i) for i in ids))
        assert [g.ctx for g in gets] == [{"n": n} for n in range(100)]


async def test_pipelined_applies_to_one_instance_take_effect_in_send_order(server):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        await c.create_instance("order", 1, instance_id="seq", initial_ctx={"n": -1})
        count = 50
        # gather starts the tasks in order; each writes its frame before its
        # first await, so the requests leave in this order on one connection.
        results = await asyncio.gather(*(c.apply_event("seq", "NOTE", payload={"n": n})
                                         for n in range(count)))
        assert [r.ctx["n"] for r in results] == list(range(count))
        offsets = [r.wal_offset for r in results]
        assert offsets == sorted(offsets) and len(set(offsets)) == count
        got = await c.get_instance("seq")
        assert got.ctx == {"n": count - 1} and got.last_wal_offset == offsets[-1]


# ---------------------------------------------------------------------------
# Idempotency


async def test_apply_replay_with_same_key_returns_first_result_without_writing(server):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        await c.create_instance("order", 1, instance_id="idem", initial_ctx={"v": 0})
        first = await c.apply_event("idem", "PAY", payload={"v": 1}, idempotency_key="k1")
        assert first.applied is True and first.to_state == "paid"

        replay = await c.apply_event("idem", "PAY", payload={"v": 1}, idempotency_key="k1")
        assert replay.applied is False
        assert (replay.from_state, replay.to_state) == ("created", "paid")
        assert replay.ctx == {"v": 1}
        assert replay.wal_offset == first.wal_offset
        got = await c.get_instance("idem")
        assert got.state == "paid" and got.last_wal_offset == first.wal_offset

        # A replay is answered from the cache even when the request differs,
        # and still reports the context as it was then.
        await c.apply_event("idem", "NOTE", payload={"v": 2})
        different = await c.apply_event("idem", "CANCEL", payload={"v": 9},
                                        expected_state="shipped", idempotency_key="k1")
        assert different.applied is False
        assert different.to_state == "paid" and different.ctx == {"v": 1}
        assert different.wal_offset == first.wal_offset
        got = await c.get_instance("idem")
        assert got.state == "paid" and got.ctx == {"v": 2}


async def test_concurrent_replays_of_one_key_apply_exactly_once(server):
    async with server.client() as c1, server.client() as c2:
        await c1.put_machine("order", 1, ORDER)
        await c1.create_instance("order", 1, instance_id="once", initial_ctx={"n": 0})
        attempts = [client.apply_event("once", "NOTE", payload={"n": n}, idempotency_key="k")
                    for n, client in enumerate([c1, c2] * 10, start=1)]
        results = await asyncio.gather(*attempts)
        applied = [r for r in results if r.applied]
        assert len(applied) == 1, results
        first = applied[0]
        for r in results:
            assert (r.wal_offset, r.ctx, r.to_state) == (first.wal_offset, first.ctx, "created")
        got = await c1.get_instance("once")
        assert got.last_wal_offset == first.wal_offset and got.ctx == first.ctx


async def test_idempotency_keys_are_scoped_per_instance(server):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        await c.create_instance("order", 1, instance_id="x1")
        await c.create_instance("order", 1, instance_id="x2")
        a = await c.apply_event("x1", "PAY", idempotency_key="same")
        b = await c.apply_event("x2", "PAY", idempotency_key="same")
        assert a.applied is True and b.applied is True
        assert a.wal_offset != b.wal_offset
        assert (await c.get_instance("x2")).state == "paid"


async def test_failed_apply_is_not_cached_under_its_key(server):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        await c.create_instance("order", 1, instance_id="retry")
        await expect_code("CONFLICT", c.apply_event("retry", "PAY", expected_state="paid",
                                                    idempotency_key="k"))
        await expect_code("INVALID_TRANSITION", c.apply_event("retry", "SHIP",
                                                              idempotency_key="k"))
        ok = await c.apply_event("retry", "PAY", idempotency_key="k")
        assert ok.applied is True and ok.to_state == "paid"
        again = await c.apply_event("retry", "PAY", idempotency_key="k")
        assert again.applied is False and again.wal_offset == ok.wal_offset


async def test_replay_on_deleted_instance_fails_instance_not_found(server):
    async with server.client() as c:
        await c.put_machine("order", 1, ORDER)
        await c.create_instance("order", 1, instance_id="del")
        await c.apply_event("del", "PAY", idempotency_key="k")
        await c.delete_instance("del")
        await expect_code("INSTANCE_NOT_FOUND", c.apply_event("del", "PAY", idempotency_key="k"))


# ---------------------------------------------------------------------------
# Authentication


async def test_client_with_token_connects_and_works_when_auth_required(auth_server):
    async with auth_server.client(token=AUTH_TOKEN) as c:
        assert await c.ping() is True
        await c.info()
        assert (await c.put_machine("order", 1, ORDER)).created is True
        await c.create_instance("order", 1, instance_id="a1", initial_ctx={"k": 1})
        assert (await c.apply_event("a1", "PAY")).to_state == "paid"
        assert (await c.get_instance("a1")).ctx == {"k": 1}
        assert (await c.list_instances()).total == 1
        assert await c.list_machines() == [{"machine": "order", "versions": [1]}]


async def test_client_without_token_is_unauthorized_for_everything_but_ping(auth_server):
    async with auth_server.client(token=AUTH_TOKEN) as authed:
        await authed.put_machine("order", 1, ORDER)
        await authed.create_instance("order", 1, instance_id="a1")

    async with auth_server.client() as c:  # HELLO needs no auth
        assert await c.ping() is True
        await expect_code("UNAUTHORIZED", c.put_machine("order", 2, ORDER))
        await expect_code("UNAUTHORIZED", c.create_instance("order", 1, instance_id="a2"))
        await expect_code("UNAUTHORIZED", c.apply_event("a1", "PAY"))
        await expect_code("UNAUTHORIZED", c.delete_instance("a1"))
        await expect_code("UNAUTHORIZED", c.get_instance("a1"))
        await expect_code("UNAUTHORIZED", c.get_machine("order", 1))
        await expect_code("UNAUTHORIZED", c.list_instances())
        await expect_code("UNAUTHORIZED", c.list_machines())
        await expect_code("UNAUTHORIZED", c.info())
        assert await c.ping() is True  # the connection survives

    async with auth_server.client(token=AUTH_TOKEN) as authed:
        got = await authed.get_instance("a1")
        assert got.state == "created"
        await expect_code("MACHINE_NOT_FOUND", authed.get_machine("order", 2))


async def test_client_with_wrong_token_fails_auth_failed(auth_server):
    client = auth_server.client(token="not-the-secret")
    try:
        await expect_code("AUTH_FAILED", client.connect())
        assert not client.is_connected
    finally:
        await client.close()


async def test_any_token_is_accepted_when_auth_is_not_required(server):
    async with server.client(token="whatever") as c:
        assert (await c.put_machine("order", 1, ORDER)).created is True


# ---------------------------------------------------------------------------
# Durability across a crash


async def snapshot_of(c, instance_ids):
    """Everything an instance exposes, minus the timestamps reset at recovery."""
    instances = {}
    for ident in instance_ids:
        got = await c.get_instance(ident)
        instances[ident] = got.model_dump()
    listed = await c.list_instances(limit=1000)
    summaries = [(i.id, i.machine, i.version, i.state, i.last_wal_offset)
                 for i in listed.instances]
    return instances, summaries, listed.total


async def test_acknowledged_writes_survive_sigkill_and_restart(server):
    async with server.client() as c:
        put_order = await c.put_machine("order", 1, ORDER)
        put_order2 = await c.put_machine("order", 2, dict(ORDER, states=ORDER["states"] + ["x"]))
        put_loan = await c.put_machine("loan", 1, LOAN)

        await c.create_instance("order", 1, instance_id="o-1", initial_ctx={"customer": "ann"})
        paid = await c.apply_event("o-1", "PAY", payload={"amount": 10}, idempotency_key="k-pay")
        await c.create_instance("order", 2, instance_id="o-2")
        await c.apply_event("o-2", "CANCEL", payload={"reason": "changed mind"})
        await c.create_instance("order", 1, instance_id="o-3", initial_ctx={"doomed": True})
        deleted = await c.delete_instance("o-3")
        generated = (await c.create_instance("loan", 1, initial_ctx={"score": 70})).instance_id
        await c.apply_event(generated, "REVIEW", idempotency_key="k-review")
        for n in range(20):  # spread over both shards
            await c.create_instance("order", 1, instance_id=f"bulk-{n:02d}", initial_ctx={"n": n})
            if n % 3 == 0:
                await c.apply_event(f"bulk-{n:02d}", "PAY")

        live_ids = ["o-1", "o-2", generated] + [f"bulk-{n:02d}" for n in range(20)]
        before = await snapshot_of(c, live_ids)
        machines_before = await c.list_machines()

    server.restart()

    async with server.client() as c:
        assert await snapshot_of(c, live_ids) == before
        assert await c.list_machines() == machines_before
        assert (await c.get_machine("order", 1)).checksum == put_order.stored_checksum
        assert (await c.get_machine("order", 2)).checksum == put_order2.stored_checksum
        assert (await c.get_machine("loan", 1)).checksum == put_loan.stored_checksum
        assert (await c.put_machine("order", 1, ORDER)).created is False
        await expect_code("MACHINE_VERSION_EXISTS", c.put_machine("order", 1, LOAN))

        got = await c.get_instance("o-1")
        assert got.state == "paid" and got.ctx == {"customer": "ann", "amount": 10}
        assert (await c.get_instance(generated)).state == "manual"

        # Soft delete survives, and a second delete still answers the original offset.
        await expect_code("INSTANCE_NOT_FOUND", c.get_instance("o-3"))
        assert (await c.delete_instance("o-3"))["wal_offset"] == deleted["wal_offset"]

        # Idempotency keys survive the restart.
        replay = await c.apply_event("o-1", "PAY", payload={"amount": 10},
                                     idempotency_key="k-pay")
        assert replay.applied is False
        assert replay.wal_offset == paid.wal_offset
        assert replay.to_state == "paid" and replay.ctx == paid.ctx
        assert (await c.get_instance("o-1")).last_wal_offset == paid.wal_offset
        assert (await c.apply_event(generated, "REVIEW",
                                    idempotency_key="k-review")).applied is False

        # Ids stay taken; new writes get fresh offsets after the recovered ones.
        await expect_code("INSTANCE_EXISTS", c.create_instance("order", 1, instance_id="o-1"))
        shipped = await c.apply_event("o-1", "SHIP", idempotency_key="k-ship")
        assert shipped.wal_offset > paid.wal_offset
        reborn = await c.create_instance("order", 1, instance_id="o-3")
        assert reborn.wal_offset > deleted["wal_offset"]
        await c.create_instance("order", 1, instance_id="after-restart", initial_ctx={"z": 1})
        after_first = await snapshot_of(c, live_ids + ["o-3", "after-restart"])

    server.restart()

    async with server.client() as c:
        assert await snapshot_of(c, live_ids + ["o-3", "after-restart"]) == after_first
        assert (await c.get_instance("o-1")).state == "shipped"
        again = await c.apply_event("o-1", "SHIP", idempotency_key="k-ship")
        assert again.applied is False and again.wal_offset == shipped.wal_offset


async def test_writes_acknowledged_before_a_crash_under_load_survive(server):
    """SIGKILL while several connections write: nothing acknowledged is lost."""
    counter = {"states": ["s"], "initial": "s",
               "transitions": [{"from": "s", "event": "INC", "to": "s"}]}
    writers = 4
    per_writer = 6
    acked: dict[str, int] = {}
    acked_offset: dict[str, int] = {}
    sent: dict[str, int] = {}

    async with server.client() as c:
        await c.put_machine("counter", 1, counter)
        for w in range(writers):
            for k in range(per_writer):
                ident = f"c{w}-{k}"
                await c.create_instance("counter", 1, instance_id=ident, initial_ctx={"n": 0})
                acked[ident] = sent[ident] = 0

    clients = [server.client() for _ in range(writers)]
    for client in clients:
        await client.connect()

    async def write(client, w):
        n = 0
        while True:
            n += 1
            # One instance after another, several in flight on the connection.
            batch = [f"c{w}-{k}" for k in range(per_writer)]
            for ident in batch:
                sent[ident] = n
            results = await asyncio.gather(
                *(client.apply_event(i, "INC", payload={"n": n}) for i in batch),
                return_exceptions=True)
            for ident, result in zip(batch, results):
                if isinstance(result, BaseException):
                    return
                assert result.ctx == {"n": n}
                acked[ident] = n
                acked_offset[ident] = result.wal_offset

    tasks = [asyncio.create_task(write(client, w)) for w, client in enumerate(clients)]
    try:
        await asyncio.sleep(1.0)
        assert all(not t.done() for t in tasks), [t.exception() for t in tasks if t.done()]
        server.kill()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 15)
        for t in tasks:
            assert t.exception() is None, t.exception()
    finally:
        for client in clients:
            await client.close()
    assert min(acked.values()) > 0, "no write was acknowledged before the crash"

    server.start()
    async with server.client() as c:
        lost = []
        for ident in acked:
            got = await c.get_instance(ident)
            n = got.ctx["n"]
            if not acked[ident] <= n <= sent[ident]:
                lost.append(f"{ident}: acked {acked[ident]}, sent {sent[ident]}, recovered {n}")
            elif n == acked[ident] and got.last_wal_offset != acked_offset[ident]:
                lost.append(f"{ident}: offset {got.last_wal_offset} != acked {acked_offset[ident]}")
        assert not lost, "\n".join(lost)
        # The recovered server keeps working on those instances.
        ident = next(iter(acked))
        after = await c.apply_event(ident, "INC", payload={"n": -1})
        assert after.wal_offset > acked_offset[ident]


async def test_restart_of_an_empty_data_dir_serves_nothing(server):
    server.restart()
    async with server.client() as c:
        assert await c.list_machines() == []
        listed = await c.list_instances()
        assert listed.total == 0 and listed.instances == []


# ---------------------------------------------------------------------------
# How the client behaves when the server goes away


async def test_client_reports_connection_error_after_server_crash(server):
    client = server.client()
    await client.connect()
    try:
        await client.put_machine("order", 1, ORDER)
        server.kill()
        with pytest.raises(ClientConnectionError):
            for _ in range(50):  # the read loop notices EOF asynchronously
                await client.ping()
                await asyncio.sleep(0.02)
        assert not client.is_connected
    finally:
        await client.close()
