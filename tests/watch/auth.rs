//! With auth on, watching needs AUTH first; refused requests register
//! nothing.

use serde_json::json;

use crate::conn::{WatchConn, EVENT_TIMEOUT};
use crate::events::{apply, create, ids_on_all_shards, offset_of};
use crate::support::{auth_config, flip_definition, put_machine, Server, AUTH_TOKEN};

#[test]
fn watches_require_authentication_when_auth_is_on() {
    let (_dir, config) = auth_config();
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let mut admin = server.raw();
    admin.ok("AUTH", json!({"method": "bearer", "token": AUTH_TOKEN}));
    put_machine(&mut admin, "flip", flip_definition());
    let ids = ids_on_all_shards("auth", 1);
    for id in &ids {
        create(&mut admin, "flip", id);
    }

    let mut anon = WatchConn::connect(server.addr(), "unauthenticated");
    for (op, params) in [
        ("WATCH_ALL", json!({})),
        ("WATCH_INSTANCE", json!({"instance_id": ids[0]})),
        ("UNWATCH", json!({"subscription_id": "sub-x"})),
    ] {
        let e = anon.err_code(op, params, "UNAUTHORIZED");
        assert_eq!(e["message"], "authentication required", "{e}");
    }
    let e = anon.err_code(
        "AUTH",
        json!({"method": "bearer", "token": "wrong"}),
        "AUTH_FAILED",
    );
    assert!(
        e["message"].as_str().unwrap().contains("invalid token"),
        "{e}"
    );
    anon.err_code("WATCH_ALL", json!({}), "UNAUTHORIZED");

    // Nothing was registered by the refused requests.
    apply(&mut admin, "flip", &ids[0], "FLIP", None);
    anon.expect_quiet("refused watches deliver nothing");

    // After AUTH the same connection watches normally.
    anon.ok("AUTH", json!({"method": "bearer", "token": AUTH_TOKEN}));
    let sub = anon.ok("WATCH_ALL", json!({"include_ctx": false}));
    let a = apply(&mut admin, "flip", &ids[1], "FLIP", None);
    let e = anon.next_event(EVENT_TIMEOUT).expect("event after AUTH");
    assert_eq!(e["subscription_id"], sub["subscription_id"]);
    assert_eq!(offset_of(&e), a.offset);
    let r = anon.ok(
        "UNWATCH",
        json!({"subscription_id": sub["subscription_id"]}),
    );
    assert_eq!(r["removed"], true, "{r}");
}
