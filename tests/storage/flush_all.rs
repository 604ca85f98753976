//! FLUSH_ALL is refused unless enabled, and a restart does not undo it.

use serde_json::{json, Value};

use crate::counter::{put_counter, start_with_config};
use crate::support::Server;

#[test]
fn flush_all_is_refused_unless_enabled_and_survives_a_restart() {
    let server = Server::start(&[]);
    let mut c = server.raw();
    let e = c.err_code("FLUSH_ALL", Value::Null, "BAD_REQUEST");
    assert_eq!(
        e["message"],
        "invalid request: FLUSH_ALL is disabled. Set storage.allow_flush_all=true in config to enable."
    );
    drop(server);

    let (_work, _data, mut server) = start_with_config("storage:\n  allow_flush_all: true\n");
    let mut c = server.raw();
    put_counter(&mut c);
    for i in 0..10 {
        c.ok(
            "CREATE_INSTANCE",
            json!({"machine": "ctr", "version": 1, "instance_id": format!("f{i}")}),
        );
    }
    let r = c.ok("FLUSH_ALL", Value::Null);
    assert_eq!(
        r,
        json!({"flushed": true, "instances_removed": 10, "machines_removed": 1})
    );
    assert_eq!(c.ok("LIST_INSTANCES", Value::Null)["total"], 0);
    c.err_code(
        "CREATE_INSTANCE",
        json!({"machine": "ctr", "version": 1}),
        "MACHINE_NOT_FOUND",
    );
    server.sigkill();
    server.restart();
    let mut c = server.raw();
    assert_eq!(c.ok("LIST_INSTANCES", Value::Null)["total"], 0);
    assert_eq!(c.ok("LIST_MACHINES", Value::Null)["items"], json!([]));
    // The server is fully usable after a flush.
    put_counter(&mut c);
    c.ok(
        "CREATE_INSTANCE",
        json!({"machine": "ctr", "version": 1, "instance_id": "again"}),
    );
}
