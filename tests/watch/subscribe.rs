//! WATCH_ALL / WATCH_INSTANCE / UNWATCH parameters are checked, and a new
//! subscription without `from_offset` starts after everything acknowledged.

use serde_json::{json, Value};

use crate::conn::{WatchConn, EVENT_TIMEOUT};
use crate::events::{apply, create, ids_on_all_shards, offset_of};
use crate::support::{flip_definition, put_machine, Server, SHARDS};

#[test]
fn watch_parameters_are_checked() {
    let server = Server::start(&[]);
    let mut c = WatchConn::connect(server.addr(), "params");
    c.err_code("WATCH_ALL", json!({"include_ctx": null}), "BAD_REQUEST");
    c.err_code("WATCH_ALL", json!({"machines": null}), "BAD_REQUEST");
    c.err_code("WATCH_ALL", json!({"machines": "order"}), "BAD_REQUEST");
    c.err_code("WATCH_INSTANCE", json!({}), "BAD_REQUEST");
    c.err_code(
        "WATCH_INSTANCE",
        json!({"instance_id": "nope"}),
        "INSTANCE_NOT_FOUND",
    );
    c.err_code("UNWATCH", json!({}), "BAD_REQUEST");
    // params absent / null / {} are all a plain WATCH_ALL.
    for params in [Value::Null, json!({})] {
        let r = c.ok("WATCH_ALL", params);
        assert!(r["subscription_id"].is_string(), "{r}");
    }
}

/// Without `from_offset` a subscription gets only what happens after it: an
/// event acknowledged before the WATCH_ALL was sent is history, and the
/// answered `wal_offset` (the next write position, docs/PROTOCOL.md §10.2) is past it.
#[test]
fn watch_all_without_from_offset_gets_nothing_acknowledged_before_it() {
    const ROUNDS: usize = 20;
    let server = Server::start(&[]);
    let mut writer = server.raw();
    put_machine(&mut writer, "flip", flip_definition());
    let ids = ids_on_all_shards("before", 1);
    for id in &ids {
        create(&mut writer, "flip", id);
    }
    let mut failures = Vec::new();
    for round in 0..ROUNDS {
        // An acknowledged apply, alternating shards ...
        let before = apply(&mut writer, "flip", &ids[round % SHARDS], "FLIP", None);
        // ... then a new subscription, then a marker apply on the other shard.
        let mut conn = WatchConn::connect(server.addr(), &format!("round {round}"));
        let r = conn.ok("WATCH_ALL", json!({"include_ctx": false}));
        let marker = apply(
            &mut writer,
            "flip",
            &ids[(round + 1) % SHARDS],
            "FLIP",
            None,
        );
        let first = conn.next_event(EVENT_TIMEOUT).expect("the marker event");
        let start = r["wal_offset"].as_u64().unwrap_or(0);
        if offset_of(&first) != marker.offset || start <= before.offset {
            failures.push(format!(
                "round {round}: apply acknowledged at {} before WATCH_ALL (answered wal_offset \
                 {start}); first event delivered: {} (marker {})",
                before.offset,
                offset_of(&first),
                marker.offset
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {ROUNDS} new WATCH_ALL subscriptions received an event acknowledged before they \
         were requested (or answered a wal_offset not past it):\n{}\nserver stderr:\n{}",
        failures.len(),
        failures.join("\n"),
        server.stderr_tail()
    );
}
