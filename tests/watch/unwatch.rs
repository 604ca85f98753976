//! UNWATCH stops exactly the subscription it names, on its own connection.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::conn::WatchConn;
use crate::events::{apply, create, ids_on_all_shards, key_order, offset_of};
use crate::support::{flip_definition, put_machine, Server};

#[test]
fn unwatch_stops_delivery_and_reports_what_it_removed() {
    let server = Server::start(&[]);
    let mut writer = server.raw();
    put_machine(&mut writer, "flip", flip_definition());
    let ids = ids_on_all_shards("unwatch", 1);
    for id in &ids {
        create(&mut writer, "flip", id);
    }

    let mut conn = WatchConn::connect(server.addr(), "watcher");
    let gone = conn.ok("WATCH_ALL", json!({"include_ctx": false}))["subscription_id"]
        .as_str()
        .unwrap()
        .to_string();
    let stays = conn.ok("WATCH_ALL", json!({"include_ctx": false}))["subscription_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut other = WatchConn::connect(server.addr(), "other");
    let others = other.ok("WATCH_ALL", json!({"include_ctx": false}))["subscription_id"]
        .as_str()
        .unwrap()
        .to_string();

    let first = apply(&mut writer, "flip", &ids[0], "FLIP", None);
    let got = conn.expect_events(2, "both subscriptions see the first event");
    let subs: BTreeSet<&str> = got
        .iter()
        .map(|e| e["subscription_id"].as_str().unwrap())
        .collect();
    assert_eq!(subs, BTreeSet::from([gone.as_str(), stays.as_str()]));
    assert!(got.iter().all(|e| offset_of(e) == first.offset));

    let r = conn.ok("UNWATCH", json!({"subscription_id": gone}));
    assert_eq!(r, json!({"removed": true, "subscription_id": gone}));
    assert_eq!(
        key_order(r.to_string().as_bytes()),
        vec!["removed", "subscription_id"]
    );
    // Removing it again, an unknown id, or another connection's id: ok,
    // removed false — and the other connection's subscription survives.
    let again = conn.ok("UNWATCH", json!({"subscription_id": gone}));
    assert_eq!(again, json!({"removed": false, "subscription_id": gone}));
    let unknown = conn.ok("UNWATCH", json!({"subscription_id": "sub-nope"}));
    assert_eq!(unknown["removed"], false, "{unknown}");
    let foreign = conn.ok("UNWATCH", json!({"subscription_id": others}));
    assert_eq!(foreign["removed"], false, "{foreign}");

    // Events after the UNWATCH reach only the remaining subscriptions.
    let mut later = Vec::new();
    for id in &ids {
        later.push(apply(&mut writer, "flip", id, "FLIP", None).offset);
    }
    later.sort_unstable();
    let got = conn.expect_events(later.len(), "only the remaining subscription");
    for e in &got {
        assert_eq!(e["subscription_id"], stays.as_str(), "{e}");
    }
    assert_eq!(got.iter().map(offset_of).collect::<Vec<_>>(), later);
    let got = other.expect_events(1 + later.len(), "the other connection");
    assert!(got.iter().all(|e| e["subscription_id"] == others.as_str()));

    // UNWATCH of the last subscription: the connection goes quiet but stays usable.
    conn.ok("UNWATCH", json!({"subscription_id": stays}));
    apply(&mut writer, "flip", &ids[1], "FLIP", None);
    conn.expect_quiet("no subscriptions left");
    conn.ok("PING", Value::Null);
    other.expect_events(1, "still subscribed");
}
