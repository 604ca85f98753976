//! SNAPSHOT_INSTANCE answers the 0.3 shape.

use serde_json::json;

use crate::counter::put_counter;
use crate::support::Server;

#[test]
fn snapshot_instance_answers_the_0_3_shape() {
    let server = Server::start(&[]);
    let mut c = server.raw();
    put_counter(&mut c);
    let created = c.ok(
        "CREATE_INSTANCE",
        json!({"machine": "ctr", "version": 1, "instance_id": "x", "initial_ctx": {"a": 1}}),
    );
    let r = c.ok("SNAPSHOT_INSTANCE", json!({"instance_id": "x"}));
    assert_eq!(r["instance_id"], "x");
    assert!(r["snapshot_id"].as_str().unwrap().starts_with("snap-"));
    assert_eq!(r["wal_offset"], created["wal_offset"]);
    assert!(r["size_bytes"].as_u64().unwrap() > 0);
    let checksum = r["checksum"].as_str().unwrap();
    assert!(checksum.len() == 8 && checksum.chars().all(|ch| ch.is_ascii_hexdigit()));
    c.err_code(
        "SNAPSHOT_INSTANCE",
        json!({"instance_id": "nope"}),
        "INSTANCE_NOT_FOUND",
    );
    c.err_code(
        "SNAPSHOT_INSTANCE",
        json!({"instance_id": 5}),
        "BAD_REQUEST",
    );
}
