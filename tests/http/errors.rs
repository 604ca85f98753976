//! RCP errors become HTTP statuses through one table, with the RCP code,
//! message and retryable flag in the body; bad HTTP input gets the right
//! status and never hurts the server.

use serde_json::json;

use crate::client::{order_instance, start, Answer};

#[track_caller]
fn assert_error(answer: Answer, status: u16, code: &str) -> Answer {
    let answer = answer.expect(status);
    assert_eq!(answer.code(), code, "{}", answer.text);
    let error = &answer.json()["error"];
    assert!(error["message"].is_string());
    assert_eq!(error["retryable"], false);
    answer
}

#[test]
fn rcp_errors_map_to_http_statuses() {
    let (server, api) = start(&[]);
    order_instance(&api, "o-1", 0);
    // 404
    let missing = assert_error(api.get("/v1/instances/nope"), 404, "INSTANCE_NOT_FOUND");
    assert_eq!(
        missing.json()["error"]["message"],
        "core error: instance not found: nope"
    );
    assert_error(
        api.get("/v1/machines/order/versions/9"),
        404,
        "MACHINE_NOT_FOUND",
    );
    assert_error(
        api.post("/v1/instances", &json!({"machine": "nope", "version": 1})),
        404,
        "MACHINE_NOT_FOUND",
    );
    assert_error(
        api.post("/v1/instances/nope/events", &json!({"event": "PAY"})),
        404,
        "INSTANCE_NOT_FOUND",
    );
    assert_error(api.delete("/v1/instances/nope"), 404, "INSTANCE_NOT_FOUND");
    // 409
    assert_error(
        api.post(
            "/v1/instances",
            &json!({"machine": "order", "version": 1, "instance_id": "o-1"}),
        ),
        409,
        "INSTANCE_EXISTS",
    );
    assert_error(
        api.put(
            "/v1/machines/order/versions/1",
            &json!({"states": ["a"], "initial": "a", "transitions": []}),
        ),
        409,
        "MACHINE_VERSION_EXISTS",
    );
    assert_error(
        api.post(
            "/v1/instances/o-1/events",
            &json!({"event": "PAY", "expected_state": "paid"}),
        ),
        409,
        "CONFLICT",
    );
    assert_error(
        api.post(
            "/v1/instances/o-1/events",
            &json!({"event": "PAY", "expected_wal_offset": 1}),
        ),
        409,
        "CONFLICT",
    );
    // 422
    assert_error(
        api.post("/v1/instances/o-1/events", &json!({"event": "SHIP"})),
        422,
        "INVALID_TRANSITION",
    );
    assert_error(
        api.post("/v1/instances/o-1/events", &json!({"event": "PAY"})),
        422,
        "GUARD_FAILED",
    );
    // 400: the operation's own parameter checks, with RCP's messages.
    let no_event = assert_error(
        api.post("/v1/instances/o-1/events", &json!({"payload": 1})),
        400,
        "BAD_REQUEST",
    );
    assert_eq!(
        no_event.json()["error"]["message"],
        "invalid request: missing field `event`"
    );
    assert_error(
        api.put(
            "/v1/machines/order/versions/2",
            &json!({"states": ["a"], "initial": "b", "transitions": []}),
        ),
        400,
        "BAD_REQUEST",
    );
    let atomic = assert_error(
        api.post(
            "/v1/batch",
            &json!({"mode": "atomic", "ops": [
                {"op": "APPLY_EVENT", "params": {"instance_id": "o-1", "event": "SHIP"}}]}),
        ),
        400,
        "BAD_REQUEST",
    );
    assert_eq!(
        atomic.json()["error"]["details"]["failed_code"],
        "INVALID_TRANSITION"
    );
    assert_error(api.get("/v1/wal"), 400, "BAD_REQUEST");
    // Nothing of that changed the instance.
    assert_eq!(
        api.get("/v1/instances/o-1").expect(200).json()["state"],
        "created"
    );
    server.raw().assert_alive();
}

#[test]
fn bad_http_input_gets_the_right_status() {
    let (server, api) = start(&[]);
    order_instance(&api, "o-1", 0);
    let send = |method: &str, path: &str, body: Option<&str>| {
        api.request(method, path, body, &[])
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    };
    // Malformed JSON, not an object, wrong types.
    let malformed = assert_error(
        send("POST", "/v1/instances", Some("{bad")),
        400,
        "BAD_REQUEST",
    );
    assert!(
        malformed.text.contains("malformed JSON"),
        "{}",
        malformed.text
    );
    assert_error(
        send("POST", "/v1/instances/o-1/events", Some("[1,2]")),
        400,
        "BAD_REQUEST",
    );
    assert_error(
        send("POST", "/v1/instances/o-1/events", Some("\"PAY\"")),
        400,
        "BAD_REQUEST",
    );
    let typed = assert_error(
        send(
            "POST",
            "/v1/instances",
            Some(r#"{"machine":"order","version":"1"}"#),
        ),
        400,
        "BAD_REQUEST",
    );
    assert!(typed.text.contains("invalid type"), "{}", typed.text);
    assert_error(
        send("GET", "/v1/machines/order/versions/x", None),
        400,
        "BAD_REQUEST",
    );
    assert_error(
        send("GET", "/v1/instances?limit=-1", None),
        400,
        "BAD_REQUEST",
    );
    assert_error(
        send("GET", "/v1/instances?machines=order", None),
        400,
        "BAD_REQUEST",
    );
    assert_error(send("GET", "/v1/instances/%zz", None), 400, "BAD_REQUEST");
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    assert_error(
        send(
            "POST",
            "/v1/instances/o-1/events",
            Some(&format!(r#"{{"event":"PAY","payload":{deep}}}"#)),
        ),
        400,
        "BAD_REQUEST",
    );
    // Unknown routes and methods.
    assert_error(send("GET", "/v1/nothing", None), 404, "NOT_FOUND");
    assert_error(send("GET", "/v1", None), 404, "NOT_FOUND");
    let wrong = assert_error(
        send("PATCH", "/v1/instances/o-1", Some("{}")),
        405,
        "BAD_REQUEST",
    );
    assert_eq!(wrong.header("allow"), Some("GET, DELETE"));
    let wrong = assert_error(send("POST", "/v1/machines", Some("{}")), 405, "BAD_REQUEST");
    assert_eq!(wrong.header("allow"), Some("GET"));
    // The headers and body disagree on the idempotency key.
    let disagree = api
        .request(
            "POST",
            "/v1/instances/o-1/events",
            Some(r#"{"event":"PAY","idempotency_key":"a"}"#),
            &[("idempotency-key", "b")],
        )
        .unwrap();
    assert_error(disagree, 400, "BAD_REQUEST");
    // The server is fine.
    api.get("/v1/health").expect(200);
    server.raw().assert_alive();
}
