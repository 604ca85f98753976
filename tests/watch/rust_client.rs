//! Subscriptions through `rstmdb-client` 0.3.0's API: watch_all,
//! watch_instance, the broadcast event stream, unwatch.

use std::collections::BTreeMap;

use serde_json::json;

use crate::conn::{EVENT_TIMEOUT, QUIET_PERIOD};
use crate::events::{ids_on_all_shards, order_definition};
use crate::support::{rstmdb_connect, Server};

/// The next event the client's read loop broadcast, within `EVENT_TIMEOUT`.
/// (Generic: the client's `StreamEvent` type lives in `rstmdb-protocol`,
/// which the tests do not depend on directly.)
async fn next_stream_event<T: Clone>(rx: &mut tokio::sync::broadcast::Receiver<T>) -> Option<T> {
    match tokio::time::timeout(EVENT_TIMEOUT, rx.recv()).await {
        Ok(Ok(e)) => Some(e),
        Ok(Err(e)) => panic!("client event stream: {e}"),
        Err(_) => None,
    }
}

#[tokio::test]
async fn rust_client_subscriptions_receive_events_and_unwatch() {
    let server = Server::start(&[]);
    let client = rstmdb_connect(server.addr(), None)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    client
        .put_machine("order", 1, order_definition())
        .await
        .unwrap();
    let ids = ids_on_all_shards("client", 1);
    let mut created = Vec::new();
    for id in &ids {
        created.push(
            client
                .create_instance("order", 1, Some(id), Some(json!({"n": 0})), None)
                .await
                .unwrap(),
        );
    }

    let mut rx = client.connection().subscribe_stream_events();
    let all = client
        .watch_all(None, None, None, None, true)
        .await
        .unwrap();
    assert!(all.subscription_id.starts_with("sub-"), "{all:?}");
    let one = client.watch_instance(&ids[1], false).await.unwrap();
    assert_eq!(one.instance_id, ids[1]);
    assert_eq!(one.current_state, "created");
    assert_eq!(one.current_wal_offset, created[1].wal_offset);
    let paid_only = client
        .watch_all(
            Some(vec!["order".into()]),
            None,
            Some(vec!["paid".into()]),
            Some(vec!["PAY".into()]),
            false,
        )
        .await
        .unwrap();

    let a = client
        .apply_event(&ids[0], "PAY", Some(json!({"amount": 5})), None, None)
        .await
        .unwrap();
    let b = client
        .apply_event(&ids[1], "CANCEL", None, Some("created"), None)
        .await
        .unwrap();

    // all: a, b; one: b; paid_only: a — 4 messages, each subscription in
    // offset order.
    let mut got = BTreeMap::new();
    for _ in 0..4 {
        let e = next_stream_event(&mut rx).await.unwrap_or_else(|| {
            panic!(
                "missing client event; got {got:?}\n{}",
                server.stderr_tail()
            )
        });
        got.entry(e.subscription_id.clone())
            .or_insert_with(Vec::new)
            .push(e);
    }
    let all_events = &got[&all.subscription_id];
    let mut want = vec![
        (a.wal_offset, ids[0].clone()),
        (b.wal_offset, ids[1].clone()),
    ];
    want.sort();
    assert_eq!(
        all_events
            .iter()
            .map(|e| (e.wal_offset, e.instance_id.clone()))
            .collect::<Vec<_>>(),
        want
    );
    for e in all_events {
        assert_eq!(e.msg_type, "event");
        assert_eq!(e.machine, "order");
        assert_eq!(e.version, 1);
        if e.instance_id == ids[0] {
            assert_eq!(
                (e.from_state.as_str(), e.to_state.as_str(), e.event.as_str()),
                ("created", "paid", "PAY")
            );
            assert_eq!(e.payload, Some(json!({"amount": 5})));
            assert_eq!(e.ctx, Some(json!({"n": 0, "amount": 5})));
        } else {
            assert_eq!(
                (e.from_state.as_str(), e.to_state.as_str(), e.event.as_str()),
                ("created", "cancelled", "CANCEL")
            );
            assert_eq!(e.payload, None, "payload null");
            assert_eq!(e.ctx, Some(json!({"n": 0})));
        }
    }
    let one_events = &got[&one.subscription_id];
    assert_eq!(one_events.len(), 1, "{one_events:?}");
    assert_eq!(one_events[0].instance_id, ids[1]);
    assert_eq!(one_events[0].wal_offset, b.wal_offset);
    assert_eq!(one_events[0].ctx, None, "include_ctx false");
    let paid_events = &got[&paid_only.subscription_id];
    assert_eq!(paid_events.len(), 1, "{paid_events:?}");
    assert_eq!(paid_events[0].wal_offset, a.wal_offset);

    let removed = client.unwatch(&all.subscription_id).await.unwrap();
    assert!(removed.removed);
    assert_eq!(removed.subscription_id, all.subscription_id);
    assert!(!client.unwatch(&all.subscription_id).await.unwrap().removed);
    client.unwatch(&paid_only.subscription_id).await.unwrap();

    // Only the instance subscription is left.
    let c = client
        .apply_event(&ids[0], "SHIP", None, None, None)
        .await
        .unwrap();
    let d = client
        .apply_event(&ids[1], "NOTE", None, None, None)
        .await
        .unwrap();
    assert!(c.applied && d.applied);
    let e = next_stream_event(&mut rx).await.expect("instance event");
    assert_eq!(e.subscription_id, one.subscription_id);
    assert_eq!(e.wal_offset, d.wal_offset);
    assert!(
        tokio::time::timeout(QUIET_PERIOD, rx.recv()).await.is_err(),
        "no event after UNWATCH"
    );
    // The client (and its read loop) are still healthy.
    client.ping().await.unwrap();
}
