//! `expected_state` and `expected_wal_offset` conflicts.

use serde_json::json;

use crate::setup::{connect_with_order, expect_code};
use crate::support::Server;

#[tokio::test]
async fn optimistic_concurrency_conflicts() {
    let server = Server::start(&[]);
    let client = connect_with_order(&server).await;
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
