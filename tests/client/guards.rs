//! Guard expressions: they see the context before the event, pick the first
//! passing alternative, evaluate as the spec's truth table says, and
//! malformed ones are refused at PUT_MACHINE.

use rstmdb_client::ClientError;
use serde_json::{json, Value};

use crate::setup::{connect, expect_code};
use crate::support::{error_code, Server};

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

/// Context of the guard truth table in docs/PROTOCOL.md Appendix A.
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
