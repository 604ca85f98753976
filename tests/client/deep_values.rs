//! The deepest context corestate stores, the Rust client reads back. An
//! answer nests a context exactly as deep as the request that stored it,
//! and the client parses with serde_json (127 levels at most), so a request
//! may nest 127 levels and no more — rstmdb's own limit. At 128, a context
//! stored at the limit came back in an answer the client could not parse.

use serde_json::json;

use crate::setup::{connect_with_order, expect_code};
use crate::support::fixtures::nested_object;
use crate::support::Server;

/// Levels a CREATE_INSTANCE request puts around its context: the envelope
/// and `params`.
const LEVELS_AROUND_A_CONTEXT: usize = 2;
/// What serde_json (rstmdb's server and the Rust client) parses.
const SERDE_JSON_DEPTH_MAX: usize = 127;

#[tokio::test]
async fn the_deepest_context_stored_is_read_back_and_a_deeper_one_refused() {
    let server = Server::start(&[]);
    let client = connect_with_order(&server).await;
    let ctx_max = SERDE_JSON_DEPTH_MAX - LEVELS_AROUND_A_CONTEXT;

    let too_deep = client
        .create_instance(
            "order",
            1,
            Some("too-deep"),
            Some(nested_object(ctx_max + 1)),
            None,
        )
        .await;
    let message = expect_code(too_deep, "BAD_REQUEST");
    assert!(message.contains("nesting"), "{message}");

    let deepest = nested_object(ctx_max);
    client
        .create_instance("order", 1, Some("deep"), Some(deepest.clone()), None)
        .await
        .expect("the deepest context is stored");
    let got = client.get_instance("deep").await.expect("and read back");
    assert_eq!(got.ctx, deepest);

    // A payload's member merges into the context one level below it.
    let payload = json!({"note": nested_object(ctx_max - 1)});
    client
        .apply_event("deep", "PAY", Some(payload.clone()), None, None)
        .await
        .expect("the deepest payload is applied");
    let got = client.get_instance("deep").await.expect("read back again");
    assert_eq!(got.ctx["note"], payload["note"]);
}
