//! APPLY_EVENT moves the state and merges the payload into ctx.

use serde_json::json;

use crate::setup::{connect_with_order, expect_code};
use crate::support::Server;

#[tokio::test]
async fn apply_event_moves_state_and_merges_payload_into_ctx() {
    let server = Server::start(&[]);
    let client = connect_with_order(&server).await;
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
