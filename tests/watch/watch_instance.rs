//! WATCH_INSTANCE answers the instance's current state and delivers only
//! that instance's events.

use serde_json::json;

use crate::conn::WatchConn;
use crate::events::{
    apply, create, expected_event, ids_on_all_shards, key_order, offset_of, order_definition,
};
use crate::support::{put_machine, Server};

#[test]
fn watch_instance_sees_only_its_instance() {
    let server = Server::start(&[]);
    let mut writer = server.raw();
    put_machine(&mut writer, "order", order_definition());
    let ids = ids_on_all_shards("inst", 2);
    for id in &ids {
        create(&mut writer, "order", id);
    }
    let paid = apply(
        &mut writer,
        "order",
        &ids[0],
        "PAY",
        Some(json!({"amount": 3})),
    );

    let mut conn = WatchConn::connect(server.addr(), "instance watcher");
    let r = conn.ok("WATCH_INSTANCE", json!({"instance_id": ids[0]}));
    assert_eq!(
        key_order(r.to_string().as_bytes()),
        vec![
            "current_state",
            "current_wal_offset",
            "instance_id",
            "subscription_id"
        ],
        "{r}"
    );
    assert_eq!(r["current_state"], "paid", "{r}");
    assert_eq!(r["current_wal_offset"], paid.offset, "{r}");
    assert_eq!(r["instance_id"], ids[0].as_str(), "{r}");
    let sub0 = r["subscription_id"].as_str().unwrap().to_string();
    // A second one, on the other shard, without ctx.
    let r = conn.ok(
        "WATCH_INSTANCE",
        json!({"instance_id": ids[1], "include_ctx": false}),
    );
    assert_eq!(r["current_state"], "created", "{r}");
    let sub1 = r["subscription_id"].as_str().unwrap().to_string();

    // Traffic on all four instances; only ids[0] and ids[1] are watched.
    let mut want = Vec::new();
    for (id, event) in [
        (&ids[2], "PAY"),
        (&ids[0], "SHIP"),
        (&ids[3], "CANCEL"),
        (&ids[1], "PAY"),
        (&ids[2], "SHIP"),
        (&ids[1], "NOTE"),
        (&ids[0], "NOTE"),
    ] {
        let a = apply(&mut writer, "order", id, event, None);
        if *id == ids[0] {
            want.push(expected_event(&sub0, 1, &a, true));
        } else if *id == ids[1] {
            want.push(expected_event(&sub1, 1, &a, false));
        }
    }
    want.sort_by_key(offset_of);
    let got = conn.expect_events(want.len(), "two instance subscriptions");
    assert_eq!(got, want);

    // Unknown and deleted instances cannot be watched.
    conn.err_code(
        "WATCH_INSTANCE",
        json!({"instance_id": "inst-missing"}),
        "INSTANCE_NOT_FOUND",
    );
    writer.ok("DELETE_INSTANCE", json!({"instance_id": ids[3]}));
    conn.err_code(
        "WATCH_INSTANCE",
        json!({"instance_id": ids[3]}),
        "INSTANCE_NOT_FOUND",
    );
}
