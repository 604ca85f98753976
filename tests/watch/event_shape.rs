//! An event message has the spec's keys in the spec's order, carries
//! `payload` always and `ctx` when asked; only applied transitions send one.

use serde_json::{json, Value};

use crate::conn::{WatchConn, EVENT_TIMEOUT};
use crate::events::{
    apply, create, expected_event, ids_on_all_shards, key_order, order_definition,
};
use crate::support::{put_machine, Server};

/// Keys of an event message, in the order docs/PROTOCOL.md §2.4 fixes.
const EVENT_KEYS: [&str; 11] = [
    "type",
    "subscription_id",
    "instance_id",
    "machine",
    "version",
    "wal_offset",
    "from_state",
    "to_state",
    "event",
    "payload",
    "ctx",
];

#[test]
fn event_messages_have_the_spec_shape_and_payload_is_always_present() {
    let server = Server::start(&[]);
    let mut writer = server.raw();
    put_machine(&mut writer, "order", order_definition());
    let ids = ids_on_all_shards("shape", 1);
    for id in &ids {
        create(&mut writer, "order", id);
    }

    let mut with_ctx = WatchConn::connect(server.addr(), "with_ctx");
    let sub = with_ctx.ok("WATCH_ALL", json!({}));
    assert_eq!(
        key_order(sub.to_string().as_bytes()).len(),
        2,
        "WATCH_ALL result is {{subscription_id, wal_offset}}: {sub}"
    );
    let sub_id = sub["subscription_id"]
        .as_str()
        .expect("subscription_id")
        .to_string();
    assert!(sub_id.starts_with("sub-") && sub_id.len() == 40, "{sub_id}");
    assert!(sub["wal_offset"].is_u64(), "{sub}");
    let mut without_ctx = WatchConn::connect(server.addr(), "without_ctx");
    let sub2 = without_ctx.ok("WATCH_ALL", json!({"include_ctx": false}));
    let sub2_id = sub2["subscription_id"].as_str().unwrap().to_string();
    assert_ne!(sub_id, sub2_id, "subscription ids are unique");

    // Payload sent on shard 0's instance, none on shard 1's.
    let a = apply(
        &mut writer,
        "order",
        &ids[0],
        "PAY",
        Some(json!({"amount": 10, "who": "ann"})),
    );
    let b = apply(&mut writer, "order", &ids[1], "PAY", None);
    assert_eq!(a.ctx, json!({"amount": 10, "who": "ann"}));

    let mut expected = vec![a.clone(), b.clone()];
    expected.sort_by_key(|x| x.offset);
    for (conn, sub, include_ctx) in [
        (&mut with_ctx, &sub_id, true),
        (&mut without_ctx, &sub2_id, false),
    ] {
        for want in &expected {
            let frame = conn
                .next_event_frame(EVENT_TIMEOUT)
                .unwrap_or_else(|| panic!("no event for {want:?}\n{}", server.stderr_tail()));
            let keys = key_order(&frame.payload);
            let want_keys: Vec<&str> = if include_ctx {
                EVENT_KEYS.to_vec()
            } else {
                EVENT_KEYS[..10].to_vec()
            };
            assert_eq!(
                keys,
                want_keys,
                "{:?}",
                String::from_utf8_lossy(&frame.payload)
            );
            assert_eq!(frame.json(), expected_event(sub, 1, want, include_ctx));
        }
        conn.expect_quiet("after two applies");
    }
    let b_event_payload = &expected_event(&sub_id, 1, &b, true)["payload"];
    assert!(b_event_payload.is_null(), "payload null when none was sent");

    // CREATE and DELETE produce no events; an idempotent replay produces
    // none either; a failed apply produces none.
    create(&mut writer, "order", "shape-extra");
    writer.ok("DELETE_INSTANCE", json!({"instance_id": "shape-extra"}));
    let keyed = json!({"instance_id": ids[0], "event": "SHIP", "idempotency_key": "k-ship"});
    let first = writer.ok("APPLY_EVENT", keyed.clone());
    assert_eq!(first["applied"], true, "{first}");
    let replay = writer.ok("APPLY_EVENT", keyed);
    assert_eq!(replay["applied"], false, "an idempotent replay: {replay}");
    writer.err_code(
        "APPLY_EVENT",
        json!({"instance_id": ids[1], "event": "REOPEN"}),
        "INVALID_TRANSITION",
    );
    for conn in [&mut with_ctx, &mut without_ctx] {
        let e = conn.next_event(EVENT_TIMEOUT).expect("the SHIP event");
        assert_eq!(e["event"], "SHIP", "{e}");
        assert_eq!(e["wal_offset"], first["wal_offset"], "{e}");
        assert!(e["payload"].is_null(), "{e}");
        conn.expect_quiet("create, delete, a replay and a failed apply send nothing");
    }
    // The connections still answer requests normally.
    with_ctx.ok("PING", Value::Null);
}
