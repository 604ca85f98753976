//! corestate driven by the official Rust client, `rstmdb-client` 0.3.0:
//! machines, instances, events, guards, optimistic concurrency,
//! idempotency, error codes and authentication, as a real application
//! would use them.

mod support;

use std::collections::BTreeSet;

use rstmdb_client::{Client, ClientError};
use serde_json::{json, Value};

use support::*;

async fn connect(server: &Server) -> Client {
    rstmdb_connect(server.addr(), None)
        .await
        .unwrap_or_else(|e| panic!("rstmdb-client cannot connect: {e}"))
}

/// The error of a call that must fail with `code` (and `retryable: false`).
fn expect_code<T: std::fmt::Debug>(result: Result<T, ClientError>, code: &str) -> String {
    match result {
        Ok(value) => panic!("expected {code}, got success: {value:?}"),
        Err(ClientError::ServerError {
            code: got,
            message,
            retryable,
        }) => {
            assert_eq!(got.to_string(), code, "message: {message}");
            assert!(!retryable, "{code} must not be retryable ({message})");
            message
        }
        Err(other) => panic!("expected server error {code}, got {other}"),
    }
}

fn order_definition() -> Value {
    json!({
        "states": ["created", "paid", "shipped", "cancelled"],
        "initial": "created",
        "transitions": [
            {"from": "created", "event": "PAY", "to": "paid"},
            {"from": ["created", "paid"], "event": "CANCEL", "to": "cancelled"},
            {"from": "paid", "event": "SHIP", "to": "shipped", "guard": "ctx.address != null"},
            {"from": "paid", "event": "NOTE", "to": "paid"}
        ]
    })
}

#[tokio::test]
async fn machines_are_put_got_and_listed() {
    let server = Server::start(&[]);
    let client = connect(&server).await;

    // Appendix A: unknown keys dropped, `from` normalised, CRC-32C checksum.
    let sent = json!({"transitions": [{"to": "paid", "event": "PAY", "from": "created",
                                       "description": "x"}],
                      "initial": "created", "states": ["created", "paid"],
                      "meta": null, "extra": 1});
    let put = client.put_machine("order", 1, sent.clone()).await.unwrap();
    assert!(put.created);
    assert_eq!(put.machine, "order");
    assert_eq!(put.version, 1);
    assert_eq!(put.stored_checksum, "26adbd14");

    let again = client.put_machine("order", 1, sent).await.unwrap();
    assert!(!again.created, "identical re-put is idempotent");
    assert_eq!(again.stored_checksum, "26adbd14");

    let got = client.get_machine("order", 1).await.unwrap();
    assert_eq!(got.checksum, "26adbd14");
    assert_eq!(
        got.definition,
        json!({"states": ["created", "paid"], "initial": "created",
               "transitions": [{"from": ["created"], "event": "PAY", "to": "paid"}]})
    );

    expect_code(
        client.put_machine("order", 1, order_definition()).await,
        "MACHINE_VERSION_EXISTS",
    );
    client
        .put_machine("order", 7, order_definition())
        .await
        .unwrap();
    client
        .put_machine("order", 0, order_definition())
        .await
        .unwrap();
    let invoice = json!({"states": ["a"], "initial": "a", "transitions": []});
    let put = client.put_machine("invoice", 3, invoice).await.unwrap();
    assert_eq!(put.stored_checksum, "6b16bc3e");

    expect_code(client.get_machine("order", 2).await, "MACHINE_NOT_FOUND");
    expect_code(client.get_machine("nope", 1).await, "MACHINE_NOT_FOUND");

    let list = client.list_machines().await.unwrap();
    assert_eq!(
        list["items"],
        json!([{"machine": "invoice", "versions": [3]},
               {"machine": "order", "versions": [0, 1, 7]}]),
        "{list}"
    );
}

#[tokio::test]
async fn invalid_definitions_are_bad_requests_and_not_retryable() {
    let server = Server::start(&[]);
    let client = connect(&server).await;
    let cases = [
        json!({"states": ["a"], "initial": "b", "transitions": []}),
        json!({"states": ["a"], "initial": "a",
               "transitions": [{"from": "a", "event": "E", "to": "zz"}]}),
        json!({"states": ["a"], "initial": "a",
               "transitions": [{"from": "zz", "event": "E", "to": "a"}]}),
        json!({"initial": "a", "transitions": []}),
        json!({"states": "a", "initial": "a", "transitions": []}),
        json!("not an object"),
    ];
    for definition in cases {
        expect_code(
            client.put_machine("bad", 1, definition.clone()).await,
            "BAD_REQUEST",
        );
    }
    // Nothing was registered by the failures.
    let list = client.list_machines().await.unwrap();
    assert_eq!(list["items"], json!([]), "{list}");
}

#[tokio::test]
async fn instances_are_created_got_listed_and_deleted() {
    let server = Server::start(&[]);
    let client = connect(&server).await;
    client
        .put_machine("order", 1, order_definition())
        .await
        .unwrap();
    client
        .put_machine(
            "other",
            1,
            json!({"states": ["x"], "initial": "x", "transitions": []}),
        )
        .await
        .unwrap();

    let created = client
        .create_instance(
            "order",
            1,
            Some("o-2"),
            Some(json!({"customer": "ann"})),
            None,
        )
        .await
        .unwrap();
    assert_eq!(created.instance_id, "o-2");
    assert_eq!(created.state, "created");

    let got = client.get_instance("o-2").await.unwrap();
    assert_eq!(got.machine, "order");
    assert_eq!(got.version, 1);
    assert_eq!(got.state, "created");
    assert_eq!(got.ctx, json!({"customer": "ann"}));
    assert_eq!(got.last_wal_offset, created.wal_offset);
    assert_eq!(got.last_event_id, None);

    // No initial_ctx: the context defaults to {}.
    client
        .create_instance("order", 1, Some("o-1"), None, None)
        .await
        .unwrap();
    assert_eq!(client.get_instance("o-1").await.unwrap().ctx, json!({}));

    // No instance_id: a UUID v4 is generated.
    let generated = client
        .create_instance("order", 1, None, None, None)
        .await
        .unwrap();
    let id = &generated.instance_id;
    assert_eq!(id.len(), 36, "generated id {id}");
    assert_eq!(id.matches('-').count(), 4, "generated id {id}");
    assert_eq!(id.as_bytes()[14], b'4', "UUID version 4: {id}");
    client.get_instance(id).await.unwrap();

    client
        .create_instance("other", 1, Some("x-1"), None, None)
        .await
        .unwrap();

    expect_code(
        client
            .create_instance("order", 1, Some("o-1"), None, None)
            .await,
        "INSTANCE_EXISTS",
    );
    expect_code(
        client
            .create_instance("order", 9, Some("o-9"), None, None)
            .await,
        "MACHINE_NOT_FOUND",
    );
    expect_code(
        client
            .create_instance("ghost", 1, Some("o-9"), None, None)
            .await,
        "MACHINE_NOT_FOUND",
    );

    client
        .apply_event("o-2", "PAY", None, None, None)
        .await
        .unwrap();

    // Listing: ascending ids, filters, paging.
    let all = client.list_instances(None, None, None, None).await.unwrap();
    assert_eq!(all.total, 4);
    assert!(!all.has_more);
    let ids: Vec<&str> = all.instances.iter().map(|s| s.id.as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "LIST_INSTANCES is ascending by id");
    assert_eq!(
        ids.iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from(["o-1", "o-2", "x-1", id.as_str()])
    );

    let orders = client
        .list_instances(Some("order"), None, None, None)
        .await
        .unwrap();
    assert_eq!(orders.total, 3);
    assert!(orders.instances.iter().all(|s| s.machine == "order"));

    let paid = client
        .list_instances(Some("order"), Some("paid"), None, None)
        .await
        .unwrap();
    assert_eq!(paid.total, 1);
    assert_eq!(paid.instances[0].id, "o-2");
    assert_eq!(paid.instances[0].state, "paid");
    assert_eq!(paid.instances[0].version, 1);

    let page = client
        .list_instances(None, None, Some(2), Some(1))
        .await
        .unwrap();
    assert_eq!(page.total, 4);
    assert!(page.has_more);
    let page_ids: Vec<&str> = page.instances.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(page_ids, sorted[1..3].to_vec());

    // Delete: gone from GET and LIST, repeated delete is idempotent.
    let deleted = client.delete_instance("o-1", None).await.unwrap();
    assert_eq!(deleted["deleted"], true, "{deleted}");
    assert_eq!(deleted["instance_id"], "o-1", "{deleted}");
    let delete_offset = deleted["wal_offset"].as_u64().expect("wal_offset");
    expect_code(client.get_instance("o-1").await, "INSTANCE_NOT_FOUND");
    expect_code(
        client.apply_event("o-1", "PAY", None, None, None).await,
        "INSTANCE_NOT_FOUND",
    );
    let again = client.delete_instance("o-1", None).await.unwrap();
    assert_eq!(again["deleted"], true, "{again}");
    assert_eq!(again["wal_offset"], delete_offset, "{again}");
    expect_code(
        client.delete_instance("never-was", None).await,
        "INSTANCE_NOT_FOUND",
    );
    let all = client.list_instances(None, None, None, None).await.unwrap();
    assert_eq!(all.total, 3);
    assert!(all.instances.iter().all(|s| s.id != "o-1"));

    // A deleted id can be created afresh.
    let recreated = client
        .create_instance("order", 1, Some("o-1"), Some(json!({"v": 2})), None)
        .await
        .unwrap();
    assert_eq!(recreated.state, "created");
    assert!(recreated.wal_offset > delete_offset);
    assert_eq!(
        client.get_instance("o-1").await.unwrap().ctx,
        json!({"v": 2})
    );
}

#[tokio::test]
async fn apply_event_moves_state_and_merges_payload_into_ctx() {
    let server = Server::start(&[]);
    let client = connect(&server).await;
    client
        .put_machine("order", 1, order_definition())
        .await
        .unwrap();
    let created = client
        .create_instance(
            "order",
            1,
            Some("o"),
            Some(json!({"customer": "ann", "nested": {"a": 1, "b": 2}, "keep": true})),
            None,
        )
        .await
        .unwrap();

    let paid = client
        .apply_event(
            "o",
            "PAY",
            Some(json!({"amount": 10, "nested": {"c": 3}, "keep": null})),
            None,
            None,
        )
        .await
        .unwrap();
    assert!(paid.applied);
    assert_eq!(paid.from_state, "created");
    assert_eq!(paid.to_state, "paid");
    assert!(paid.wal_offset > created.wal_offset);
    // Shallow merge: top-level keys overwrite; nested objects are replaced;
    // a null value is stored, not a deletion.
    let expected_ctx = json!({"customer": "ann", "nested": {"c": 3}, "keep": null, "amount": 10});
    assert_eq!(paid.ctx, Some(expected_ctx.clone()));

    // A non-object payload and no payload leave ctx unchanged.
    let noted = client
        .apply_event("o", "NOTE", Some(json!([1, 2])), None, None)
        .await
        .unwrap();
    assert_eq!(noted.from_state, "paid");
    assert_eq!(noted.to_state, "paid", "self-transition");
    assert_eq!(noted.ctx, Some(expected_ctx.clone()));
    assert!(noted.wal_offset > paid.wal_offset);
    let noted_again = client
        .apply_event("o", "NOTE", None, None, None)
        .await
        .unwrap();
    assert_eq!(noted_again.ctx, Some(expected_ctx.clone()));

    let got = client.get_instance("o").await.unwrap();
    assert_eq!(got.state, "paid");
    assert_eq!(got.ctx, expected_ctx);
    assert_eq!(got.last_wal_offset, noted_again.wal_offset);

    expect_code(
        client.apply_event("o", "PAY", None, None, None).await,
        "INVALID_TRANSITION",
    );
    expect_code(
        client.apply_event("o", "pay", None, None, None).await,
        "INVALID_TRANSITION",
    );
    expect_code(
        client.apply_event("missing", "PAY", None, None, None).await,
        "INSTANCE_NOT_FOUND",
    );

    // `from` as a list: CANCEL works from paid.
    let cancelled = client
        .apply_event("o", "CANCEL", None, None, None)
        .await
        .unwrap();
    assert_eq!(cancelled.to_state, "cancelled");
    assert_eq!(client.get_instance("o").await.unwrap().state, "cancelled");
}

#[tokio::test]
async fn guards_see_the_old_context_and_block_transitions() {
    let server = Server::start(&[]);
    let client = connect(&server).await;
    client
        .put_machine(
            "door",
            1,
            json!({"states": ["shut", "open"], "initial": "shut", "transitions": [
                {"from": "shut", "event": "UNLOCK", "to": "shut"},
                {"from": "shut", "event": "OPEN", "to": "open", "guard": "ctx.unlocked"},
                {"from": "open", "event": "CLOSE", "to": "shut"}]}),
        )
        .await
        .unwrap();
    client
        .create_instance(
            "door",
            1,
            Some("d1"),
            Some(json!({"unlocked": false})),
            None,
        )
        .await
        .unwrap();

    // The payload is not visible to the guard, and a failed event merges nothing.
    expect_code(
        client
            .apply_event("d1", "OPEN", Some(json!({"unlocked": true})), None, None)
            .await,
        "GUARD_FAILED",
    );
    let got = client.get_instance("d1").await.unwrap();
    assert_eq!(got.state, "shut");
    assert_eq!(got.ctx, json!({"unlocked": false}));

    client
        .apply_event("d1", "UNLOCK", Some(json!({"unlocked": true})), None, None)
        .await
        .unwrap();
    let opened = client
        .apply_event("d1", "OPEN", None, None, None)
        .await
        .unwrap();
    assert_eq!(opened.to_state, "open");
}

#[tokio::test]
async fn guarded_alternatives_pick_the_first_passing_transition() {
    let server = Server::start(&[]);
    let client = connect(&server).await;
    let transitions = json!([
        {"from": "new", "event": "SIZE", "to": "huge", "guard": "ctx.n > 100"},
        {"from": "new", "event": "SIZE", "to": "big", "guard": "ctx.n > 10"},
        {"from": "new", "event": "SIZE", "to": "small", "guard": "ctx.n > 0"}
    ]);
    let states = json!(["new", "huge", "big", "small"]);
    client
        .put_machine(
            "router",
            1,
            json!({"states": states, "initial": "new", "transitions": transitions}),
        )
        .await
        .unwrap();
    let mut with_fallback = transitions.as_array().unwrap().clone();
    with_fallback.push(json!({"from": "new", "event": "SIZE", "to": "small"}));
    client
        .put_machine(
            "router",
            2,
            json!({"states": states, "initial": "new", "transitions": with_fallback}),
        )
        .await
        .unwrap();

    for (n, expected) in [(500, "huge"), (50, "big"), (5, "small")] {
        let id = format!("r1-{n}");
        client
            .create_instance("router", 1, Some(&id), Some(json!({"n": n})), None)
            .await
            .unwrap();
        let applied = client
            .apply_event(&id, "SIZE", None, None, None)
            .await
            .unwrap();
        assert_eq!(applied.to_state, expected, "n = {n}");
    }
    client
        .create_instance("router", 1, Some("r1-0"), Some(json!({"n": 0})), None)
        .await
        .unwrap();
    expect_code(
        client.apply_event("r1-0", "SIZE", None, None, None).await,
        "GUARD_FAILED",
    );
    assert_eq!(client.get_instance("r1-0").await.unwrap().state, "new");

    client
        .create_instance("router", 2, Some("r2-0"), Some(json!({"n": 0})), None)
        .await
        .unwrap();
    let applied = client
        .apply_event("r2-0", "SIZE", None, None, None)
        .await
        .unwrap();
    assert_eq!(applied.to_state, "small", "the unguarded fallback fires");
}

/// Context of the guard truth table in spec Appendix A.
fn truth_table_ctx() -> Value {
    json!({"n": 1, "f": 1.0, "t": true, "arr": [1], "emptyarr": [], "obj": {"a": 1},
           "emptyobj": {}, "items": [5], "nested": {"deep": {"x": 3}}, "snum": "10",
           "zero": 0, "a": 7, "big": 9007199254740992u64, "nul": null, "s": "hi"})
}

#[tokio::test]
async fn guard_expressions_evaluate_as_in_the_spec_truth_table() {
    let passing = [
        "ctx.n == 1",
        "ctx.f == 1",
        "ctx.n > .5",
        "ctx.n >= -1",
        "ctx.n==1",
        "ctx.missing == null",
        "ctx.missing != \"x\"",
        "ctx.nul == null",
        "ctx.n != null",
        "!ctx.n > 5",
        "!!ctx.n",
        "! ctx.zero",
        "ctx.arr",
        "ctx.obj",
        "ctx.nested.deep.x",
        "ctx.nested.deep.x == 3",
        "ctx.s == \"hi\"",
        "ctx.big == 9007199254740993",
        "ctx.n < 1.0000000000000002",
        "ctx.n > 0 && ctx.zero || ctx.t",
        "ctx.zero || ctx.n && ctx.t",
        "(ctx.zero) || (ctx.n)",
        "ctx.t == true",
        "ctx.a <= 7 && ctx.a >= 7 && ctx.a < 8",
    ];
    let failing = [
        "ctx.n > 5.",
        "ctx.emptyarr",
        "ctx.emptyobj",
        "ctx.items.0",
        "ctx.zero",
        "ctx.nul",
        "ctx.missing",
        "ctx.snum > 5",
        "ctx.snum == 10",
        "ctx.n == \"1\"",
        "ctx.t == 1",
        "ctx.t == false",
        "!(ctx.n == 1)",
        "ctx.n == 1 && (ctx.zero || ctx.nul)",
    ];
    let mut states = vec![json!("start")];
    let mut transitions = Vec::new();
    for (i, guard) in passing.iter().chain(failing.iter()).enumerate() {
        states.push(json!(format!("g{i}")));
        transitions.push(json!({"from": "start", "event": format!("E{i}"),
                                "to": format!("g{i}"), "guard": guard}));
    }
    let server = Server::start(&[]);
    let client = connect(&server).await;
    client
        .put_machine(
            "guards",
            1,
            json!({"states": states, "initial": "start", "transitions": transitions}),
        )
        .await
        .unwrap();

    let mut wrong = Vec::new();
    for (i, guard) in passing.iter().chain(failing.iter()).enumerate() {
        let id = format!("g-{i}");
        client
            .create_instance("guards", 1, Some(&id), Some(truth_table_ctx()), None)
            .await
            .unwrap();
        let should_pass = i < passing.len();
        match client
            .apply_event(&id, &format!("E{i}"), None, None, None)
            .await
        {
            Ok(applied) if should_pass => assert_eq!(applied.to_state, format!("g{i}")),
            Ok(_) => wrong.push(format!("`{guard}` passed but must fail")),
            Err(e) if error_code(&e) == "GUARD_FAILED" && !should_pass => {}
            Err(e) => wrong.push(format!("`{guard}`: {e}")),
        }
    }
    assert!(
        wrong.is_empty(),
        "guard evaluation differs:\n{}",
        wrong.join("\n")
    );
}

#[tokio::test]
async fn malformed_guards_are_rejected_at_put_machine() {
    let server = Server::start(&[]);
    let client = connect(&server).await;
    let bad_guards = [
        "",
        "   ",
        "ctx",
        "n == 1",
        "!",
        "ctx.a ||",
        "ctx.",
        "(ctx.a",
        "ctx.a == \"x",
        "ctx.a > abc",
        "ctx.a >= \"x\"",
        "ctx.a > ctx.b",
        "ctx.a garbage",
        "ctx.a = 1",
        "ctx.a & ctx.b",
        "ctx.n > 1e3",
        "ctx.a-b",
        "ctx.n == 1 ctx.zero",
        "ctx.t == trueish",
    ];
    let mut accepted = Vec::new();
    for guard in bad_guards {
        let definition = json!({"states": ["a", "b"], "initial": "a", "transitions": [
            {"from": "a", "event": "E", "to": "b", "guard": guard}]});
        match client.put_machine("strict", 1, definition).await {
            Ok(put) => accepted.push(format!("`{guard}` accepted: {put:?}")),
            Err(ClientError::ServerError {
                code, retryable, ..
            }) if code.to_string() == "BAD_REQUEST" && !retryable => {}
            Err(e) => accepted.push(format!("`{guard}`: expected BAD_REQUEST, got {e}")),
        }
    }
    assert!(
        accepted.is_empty(),
        "strict guards:\n{}",
        accepted.join("\n")
    );
}

#[tokio::test]
async fn optimistic_concurrency_conflicts() {
    let server = Server::start(&[]);
    let client = connect(&server).await;
    client
        .put_machine("order", 1, order_definition())
        .await
        .unwrap();
    client
        .create_instance("order", 1, Some("occ"), None, None)
        .await
        .unwrap();

    let message = expect_code(
        client
            .apply_event("occ", "PAY", None, Some("paid"), None)
            .await,
        "CONFLICT",
    );
    assert!(!message.is_empty());
    let got = client.get_instance("occ").await.unwrap();
    assert_eq!(got.state, "created", "a conflict changes nothing");

    let paid = client
        .apply_event("occ", "PAY", None, Some("created"), None)
        .await
        .unwrap();
    assert_eq!(paid.to_state, "paid");
    expect_code(
        client
            .apply_event("occ", "CANCEL", None, Some("created"), None)
            .await,
        "CONFLICT",
    );

    // expected_wal_offset is not in this client's API; use the raw client.
    let mut raw = server.raw();
    let error = raw.err_code(
        "APPLY_EVENT",
        json!({"instance_id": "occ", "event": "CANCEL", "expected_wal_offset": paid.wal_offset - 1}),
        "CONFLICT",
    );
    assert_eq!(error["retryable"], false);
    // State mismatch and offset mismatch together: still CONFLICT.
    raw.err_code(
        "APPLY_EVENT",
        json!({"instance_id": "occ", "event": "CANCEL", "expected_state": "created",
               "expected_wal_offset": paid.wal_offset - 1}),
        "CONFLICT",
    );
    let cancelled = raw.ok(
        "APPLY_EVENT",
        json!({"instance_id": "occ", "event": "CANCEL", "expected_state": "paid",
               "expected_wal_offset": paid.wal_offset}),
    );
    assert_eq!(cancelled["to_state"], "cancelled");
    let got = client.get_instance("occ").await.unwrap();
    assert_eq!(
        got.last_wal_offset,
        cancelled["wal_offset"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn idempotent_apply_replays_the_first_result_even_after_restart() {
    let mut server = Server::start(&[]);
    let client = connect(&server).await;
    client
        .put_machine("order", 1, order_definition())
        .await
        .unwrap();
    for id in ["i1", "i2"] {
        client
            .create_instance("order", 1, Some(id), Some(json!({"n": 0})), None)
            .await
            .unwrap();
    }

    let first = client
        .apply_event("i1", "PAY", Some(json!({"n": 1})), None, Some("k-pay"))
        .await
        .unwrap();
    assert!(first.applied);
    assert_eq!(first.to_state, "paid");

    // Same key, even with another event and payload: the first result,
    // marked not applied, and nothing written.
    let replay = client
        .apply_event("i1", "CANCEL", Some(json!({"n": 99})), None, Some("k-pay"))
        .await
        .unwrap();
    assert!(!replay.applied, "a replay reports applied: false");
    assert_eq!(replay.from_state, "created");
    assert_eq!(replay.to_state, "paid");
    assert_eq!(replay.wal_offset, first.wal_offset);
    assert_eq!(replay.ctx, first.ctx);
    let got = client.get_instance("i1").await.unwrap();
    assert_eq!(got.state, "paid");
    assert_eq!(
        got.last_wal_offset, first.wal_offset,
        "a replay writes nothing"
    );
    assert_eq!(got.ctx, json!({"n": 1}));

    // Keys are per instance.
    let other = client
        .apply_event("i2", "PAY", Some(json!({"n": 2})), None, Some("k-pay"))
        .await
        .unwrap();
    assert!(other.applied);
    assert_ne!(other.wal_offset, first.wal_offset);

    // A failed attempt does not consume its key.
    expect_code(
        client
            .apply_event("i2", "SHIP", None, None, Some("k-ship"))
            .await,
        "GUARD_FAILED",
    );
    client
        .apply_event("i2", "NOTE", Some(json!({"address": "x"})), None, None)
        .await
        .unwrap();
    let shipped = client
        .apply_event("i2", "SHIP", None, None, Some("k-ship"))
        .await
        .unwrap();
    assert!(shipped.applied);
    assert_eq!(shipped.to_state, "shipped");

    // Keys survive a restart.
    drop(client);
    server.restart();
    let client = connect(&server).await;
    let replay = client
        .apply_event("i1", "PAY", None, None, Some("k-pay"))
        .await
        .unwrap();
    assert!(!replay.applied, "key remembered across restart");
    assert_eq!(replay.wal_offset, first.wal_offset);
    assert_eq!(replay.to_state, "paid");
    assert_eq!(replay.ctx, first.ctx);
    let replay = client
        .apply_event("i2", "SHIP", None, None, Some("k-ship"))
        .await
        .unwrap();
    assert!(!replay.applied);
    assert_eq!(replay.wal_offset, shipped.wal_offset);
    let got = client.get_instance("i1").await.unwrap();
    assert_eq!(got.last_wal_offset, first.wal_offset);
    assert_eq!(got.state, "paid");

    // A deleted instance has nothing to replay.
    client.delete_instance("i1", None).await.unwrap();
    expect_code(
        client
            .apply_event("i1", "PAY", None, None, Some("k-pay"))
            .await,
        "INSTANCE_NOT_FOUND",
    );
}

#[tokio::test]
async fn idempotent_create_returns_the_first_result() {
    let mut server = Server::start(&[]);
    let client = connect(&server).await;
    client
        .put_machine("order", 1, order_definition())
        .await
        .unwrap();

    let first = client
        .create_instance("order", 1, Some("c1"), Some(json!({"a": 1})), Some("ck"))
        .await
        .unwrap();
    let retry = client
        .create_instance("order", 1, Some("c1"), Some(json!({"a": 1})), Some("ck"))
        .await
        .unwrap();
    assert_eq!(retry.instance_id, "c1");
    assert_eq!(retry.wal_offset, first.wal_offset);
    assert_eq!(retry.state, "created");

    // Without an explicit id the retry names the same generated instance.
    let generated = client
        .create_instance("order", 1, None, None, Some("gen-key"))
        .await
        .unwrap();
    let retry = client
        .create_instance("order", 1, None, None, Some("gen-key"))
        .await
        .unwrap();
    assert_eq!(retry.instance_id, generated.instance_id);
    assert_eq!(retry.wal_offset, generated.wal_offset);
    let listed = client.list_instances(None, None, None, None).await.unwrap();
    assert_eq!(listed.total, 2, "no second instance was created");

    // The raw result says it was not applied again.
    let mut raw = server.raw();
    let params = json!({"machine": "order", "version": 1, "instance_id": "c1",
                        "initial_ctx": {"a": 1}, "idempotency_key": "ck"});
    let replay = raw.ok("CREATE_INSTANCE", params.clone());
    assert_eq!(replay["applied"], false, "{replay}");
    assert_eq!(replay["wal_offset"], first.wal_offset, "{replay}");
    // Without the key it is an ordinary duplicate.
    raw.err_code(
        "CREATE_INSTANCE",
        json!({"machine": "order", "version": 1, "instance_id": "c1"}),
        "INSTANCE_EXISTS",
    );

    drop(raw);
    server.restart();
    let mut raw = server.raw();
    let replay = raw.ok("CREATE_INSTANCE", params);
    assert_eq!(replay["applied"], false, "{replay}");
    assert_eq!(replay["wal_offset"], first.wal_offset, "{replay}");
}

#[tokio::test]
async fn error_codes_are_the_0_3_codes() {
    let server = Server::start(&[]);
    let client = connect(&server).await;
    client
        .put_machine("order", 1, order_definition())
        .await
        .unwrap();
    client
        .create_instance("order", 1, Some("e1"), None, None)
        .await
        .unwrap();

    expect_code(client.get_instance("nope").await, "INSTANCE_NOT_FOUND");
    expect_code(
        client.delete_instance("nope", None).await,
        "INSTANCE_NOT_FOUND",
    );
    expect_code(
        client.apply_event("nope", "PAY", None, None, None).await,
        "INSTANCE_NOT_FOUND",
    );
    expect_code(client.get_machine("order", 2).await, "MACHINE_NOT_FOUND");
    expect_code(
        client.create_instance("order", 2, None, None, None).await,
        "MACHINE_NOT_FOUND",
    );
    expect_code(
        client
            .create_instance("order", 1, Some("e1"), None, None)
            .await,
        "INSTANCE_EXISTS",
    );
    expect_code(
        client.apply_event("e1", "SHIP", None, None, None).await,
        "INVALID_TRANSITION",
    );
    expect_code(
        client
            .apply_event("e1", "NO_SUCH_EVENT", None, None, None)
            .await,
        "INVALID_TRANSITION",
    );
    expect_code(
        client
            .put_machine(
                "order",
                1,
                json!({"states": ["z"], "initial": "z", "transitions": []}),
            )
            .await,
        "MACHINE_VERSION_EXISTS",
    );
    // After all those errors the connection still works.
    client.ping().await.unwrap();
    let info = client.info().await.unwrap();
    assert_eq!(info["shards"], 2, "{info}");
    assert_eq!(info["auth_required"], false, "{info}");
}

#[tokio::test]
async fn auth_is_enforced_when_tokens_are_configured() {
    let (_config_dir, config) = auth_config();
    let server = Server::start(&["--config", config.to_str().unwrap()]);

    // HELLO and PING are allowed before AUTH; everything else is not.
    let anonymous = connect(&server).await;
    anonymous.ping().await.unwrap();
    expect_code(anonymous.info().await, "UNAUTHORIZED");
    expect_code(
        anonymous.put_machine("m", 1, order_definition()).await,
        "UNAUTHORIZED",
    );
    expect_code(anonymous.list_machines().await, "UNAUTHORIZED");
    expect_code(anonymous.get_instance("x").await, "UNAUTHORIZED");
    expect_code(
        anonymous.list_instances(None, None, None, None).await,
        "UNAUTHORIZED",
    );

    // A wrong token fails the client's connect.
    match rstmdb_connect(server.addr(), Some("not-the-token")).await {
        Ok(_) => panic!("connect with a wrong token must fail"),
        Err(e) => assert_eq!(error_code(&e), "AUTH_FAILED", "{e}"),
    }

    // The right token works for everything.
    let client = rstmdb_connect(server.addr(), Some(AUTH_TOKEN))
        .await
        .unwrap_or_else(|e| panic!("connect with the right token: {e}"));
    let info = client.info().await.unwrap();
    assert_eq!(info["auth_required"], true, "{info}");
    client
        .put_machine("order", 1, order_definition())
        .await
        .unwrap();
    client
        .create_instance("order", 1, Some("a1"), None, None)
        .await
        .unwrap();
    assert_eq!(client.get_instance("a1").await.unwrap().state, "created");

    // Raw: AUTH without `method` means bearer; a later failing AUTH does not
    // revoke the session.
    let mut raw = server.raw();
    raw.err_code("GET_INSTANCE", json!({"instance_id": "a1"}), "UNAUTHORIZED");
    raw.ok("HELLO", json!({"protocol_version": 1}));
    raw.assert_alive();
    raw.err_code("AUTH", json!({"token": "wrong"}), "AUTH_FAILED");
    raw.err_code(
        "AUTH",
        json!({"method": "basic", "token": AUTH_TOKEN}),
        "AUTH_FAILED",
    );
    raw.err_code("INFO", Value::Null, "UNAUTHORIZED");
    let auth = raw.ok("AUTH", json!({"token": AUTH_TOKEN}));
    assert_eq!(auth, json!({"authenticated": true}));
    let got = raw.ok("GET_INSTANCE", json!({"instance_id": "a1"}));
    assert_eq!(got["state"], "created");
    raw.err_code(
        "AUTH",
        json!({"method": "bearer", "token": "wrong"}),
        "AUTH_FAILED",
    );
    raw.ok("GET_INSTANCE", json!({"instance_id": "a1"}));

    // Every other operation is refused before AUTH, whatever its params.
    let mut raw = server.raw();
    let guarded = [
        ("INFO", Value::Null),
        ("REPLICATION_STATUS", Value::Null),
        (
            "PUT_MACHINE",
            json!({"machine": "x", "version": 1, "definition": order_definition()}),
        ),
        ("GET_MACHINE", json!({"machine": "order", "version": 1})),
        ("LIST_MACHINES", Value::Null),
        ("CREATE_INSTANCE", json!({"machine": "order", "version": 1})),
        ("GET_INSTANCE", json!({"instance_id": "a1"})),
        ("LIST_INSTANCES", Value::Null),
        ("DELETE_INSTANCE", json!({"instance_id": "a1"})),
        ("APPLY_EVENT", json!({"instance_id": "a1", "event": "PAY"})),
        (
            "BATCH",
            json!({"ops": [{"op": "GET_INSTANCE", "params": {"instance_id": "a1"}}]}),
        ),
        ("SNAPSHOT_INSTANCE", json!({"instance_id": "a1"})),
        ("WAL_READ", json!({"from_offset": 0})),
        ("WAL_STATS", Value::Null),
        ("COMPACT", Value::Null),
        ("WATCH_INSTANCE", json!({"instance_id": "a1"})),
        ("WATCH_ALL", json!({})),
        ("UNWATCH", json!({"subscription_id": "sub-x"})),
        ("FLUSH_ALL", Value::Null),
    ];
    for (op, params) in guarded {
        raw.err_code(op, params, "UNAUTHORIZED");
    }
    // The writes above were refused, not applied.
    assert_eq!(client.get_instance("a1").await.unwrap().state, "created");

    // BYE needs no auth.
    let mut raw = server.raw();
    assert_eq!(raw.ok("BYE", Value::Null), json!({"goodbye": true}));
    raw.expect_closed();
}
