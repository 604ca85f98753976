//! The deepest values a client may send over RCP survive the log and a
//! restart: a request nests at most 127 levels (`REQUEST_JSON_DEPTH_MAX`),
//! so a context nests at most 125 and a payload's member 124, and their
//! log records (one level around them) stay within the 127 levels
//! serde_json reads back. (Over HTTP a body once let a value nest deeper
//! and the server could not restart: tests/http/deep_values.rs.)

use serde_json::{json, Value};

use crate::support::fixtures::nested_object;
use crate::support::wire::request;
use crate::support::{RawClient, Server};

/// Levels a request puts around a context: its envelope and `params`.
const LEVELS_AROUND_A_CONTEXT: usize = 2;
const REQUEST_DEPTH_MAX: usize = 127;

/// The answer to `op` as text (it may nest deeper than serde_json reads),
/// which must be a success.
fn ok_text(raw: &mut RawClient, op: &str, params: Value) -> String {
    raw.send_json(&request("x", op, params));
    let frame = raw.read_frame().expect("an answer");
    let text = String::from_utf8_lossy(&frame.payload).into_owned();
    assert!(
        text.contains("\"status\":\"ok\""),
        "{op}: {}",
        &text[..text.len().min(300)]
    );
    text
}

#[test]
fn the_deepest_context_and_payload_survive_a_restart() {
    let mut server = Server::start(&[]);
    let mut raw = server.raw();
    crate::counter::put_counter(&mut raw);
    let ctx_max = REQUEST_DEPTH_MAX - LEVELS_AROUND_A_CONTEXT;
    let create = json!({"machine": "ctr", "version": 1, "instance_id": "deep",
                        "initial_ctx": nested_object(ctx_max)});
    ok_text(&mut raw, "CREATE_INSTANCE", create);
    // Merged into the context: its member as deep as the context allows.
    let payload = json!({"p": nested_object(ctx_max - 1)});
    let apply = json!({"instance_id": "deep", "event": "TICK", "payload": payload});
    ok_text(&mut raw, "APPLY_EVENT", apply);
    let get = json!({"instance_id": "deep"});
    let before = ok_text(&mut raw, "GET_INSTANCE", get.clone());
    drop(raw);
    server.restart();
    let after = ok_text(&mut server.raw(), "GET_INSTANCE", get);
    assert_eq!(before, after);
}
