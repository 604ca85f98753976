//! The HTTP API takes values as deep as RCP does, and no deeper: its body
//! is the operation's params (RCP nests them inside the envelope), or for
//! PUT_MACHINE the definition itself (inside `params` too). A definition
//! one or two levels deeper than RCP allows was once taken, and its log
//! record came to more levels than serde_json reads back: the server then
//! refused to start ("unreadable WAL entry").

use serde_json::{json, Value};

use crate::client::{order_definition, start, wait_listening, Answer};
use crate::support::fixtures::nested_object;

/// The nesting an RCP request may have (`REQUEST_JSON_DEPTH_MAX`).
const REQUEST_DEPTH_MAX: usize = 127;

fn head(answer: &Answer) -> &str {
    &answer.text[..answer.text.len().min(300)]
}

/// A definition whose `meta` nests `depth` levels.
fn definition_with_meta(depth: usize) -> Value {
    let mut definition = order_definition();
    definition["meta"] = nested_object(depth);
    definition
}

#[test]
fn values_as_deep_as_rcp_allows_are_taken_and_survive_a_restart() {
    let (mut server, api) = start(&[]);
    // Inside an RCP request, `meta` sits at level 4, a context at level 3.
    let meta_max = REQUEST_DEPTH_MAX - 3;
    let ctx_max = REQUEST_DEPTH_MAX - 2;

    let put = api.put(
        "/v1/machines/deep/versions/1",
        &definition_with_meta(meta_max + 1),
    );
    assert_eq!(put.status, 400, "{}", head(&put));
    let put = api.put(
        "/v1/machines/deep/versions/1",
        &definition_with_meta(meta_max),
    );
    assert!(put.status < 300, "{}", head(&put));

    let create = |id: &str, depth: usize| {
        let body = json!({"machine": "deep", "version": 1, "instance_id": id,
                          "initial_ctx": nested_object(depth)});
        api.post("/v1/instances", &body)
    };
    let refused = create("too-deep", ctx_max + 1);
    assert_eq!(refused.status, 400, "{}", head(&refused));
    let created = create("i-1", ctx_max);
    assert!(created.status < 300, "{}", head(&created));

    let machine_before = api.get("/v1/machines/deep/versions/1").expect(200);
    let instance_before = api.get("/v1/instances/i-1").expect(200);
    server.restart();
    wait_listening(api.addr);
    let machine_after = api.get("/v1/machines/deep/versions/1");
    assert_eq!(machine_after.status, 200, "{}", head(&machine_after));
    assert_eq!(machine_after.text, machine_before.text);
    let instance_after = api.get("/v1/instances/i-1");
    assert_eq!(instance_after.text, instance_before.text);
}
