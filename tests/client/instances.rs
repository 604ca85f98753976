//! Instances are created, got, listed (paged and filtered) and deleted.

use std::collections::BTreeSet;

use serde_json::json;

use crate::setup::{connect_with_order, expect_code};
use crate::support::Server;

#[tokio::test]
async fn instances_are_created_got_listed_and_deleted() {
    let server = Server::start(&[]);
    let client = connect_with_order(&server).await;
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
