//! With tokens configured, the client must authenticate first.

use serde_json::{json, Value};

use crate::setup::{connect, expect_code, order_definition};
use crate::support::{auth_config, error_code, rstmdb_connect, Server, AUTH_TOKEN};

#[tokio::test]
async fn auth_is_enforced_when_tokens_are_configured() {
    let (_config_dir, config) = auth_config();
    let server = Server::start(&["--config", config.to_str().unwrap()]);

    // HELLO and PING are allowed before AUTH; everything else is not.
    let anonymous = connect(&server).await;
    anonymous.ping().await.unwrap();
    expect_code(anonymous.info().await, "UNAUTHORIZED");
    expect_code(
        anonymous.put_machine("m", 1, order_definition()).await,
        "UNAUTHORIZED",
    );
    expect_code(anonymous.list_machines().await, "UNAUTHORIZED");
    expect_code(anonymous.get_instance("x").await, "UNAUTHORIZED");
    expect_code(
        anonymous.list_instances(None, None, None, None).await,
        "UNAUTHORIZED",
    );

    // A wrong token fails the client's connect.
    match rstmdb_connect(server.addr(), Some("not-the-token")).await {
        Ok(_) => panic!("connect with a wrong token must fail"),
        Err(e) => assert_eq!(error_code(&e), "AUTH_FAILED", "{e}"),
    }

    // The right token works for everything.
    let client = rstmdb_connect(server.addr(), Some(AUTH_TOKEN))
        .await
        .unwrap_or_else(|e| panic!("connect with the right token: {e}"));
    let info = client.info().await.unwrap();
    assert_eq!(info["auth_required"], true, "{info}");
    client
        .put_machine("order", 1, order_definition())
        .await
        .unwrap();
    client
        .create_instance("order", 1, Some("a1"), None, None)
        .await
        .unwrap();
    assert_eq!(client.get_instance("a1").await.unwrap().state, "created");

    // Raw: AUTH without `method` means bearer; a later failing AUTH does not
    // revoke the session.
    let mut raw = server.raw();
    raw.err_code("GET_INSTANCE", json!({"instance_id": "a1"}), "UNAUTHORIZED");
    raw.ok("HELLO", json!({"protocol_version": 1}));
    raw.assert_alive();
    raw.err_code("AUTH", json!({"token": "wrong"}), "AUTH_FAILED");
    raw.err_code(
        "AUTH",
        json!({"method": "basic", "token": AUTH_TOKEN}),
        "AUTH_FAILED",
    );
    raw.err_code("INFO", Value::Null, "UNAUTHORIZED");
    let auth = raw.ok("AUTH", json!({"token": AUTH_TOKEN}));
    assert_eq!(auth, json!({"authenticated": true}));
    let got = raw.ok("GET_INSTANCE", json!({"instance_id": "a1"}));
    assert_eq!(got["state"], "created");
    raw.err_code(
        "AUTH",
        json!({"method": "bearer", "token": "wrong"}),
        "AUTH_FAILED",
    );
    raw.ok("GET_INSTANCE", json!({"instance_id": "a1"}));

    // Every other operation is refused before AUTH, whatever its params.
    let mut raw = server.raw();
    let guarded = [
        ("INFO", Value::Null),
        ("REPLICATION_STATUS", Value::Null),
        (
            "PUT_MACHINE",
            json!({"machine": "x", "version": 1, "definition": order_definition()}),
        ),
        ("GET_MACHINE", json!({"machine": "order", "version": 1})),
        ("LIST_MACHINES", Value::Null),
        ("CREATE_INSTANCE", json!({"machine": "order", "version": 1})),
        ("GET_INSTANCE", json!({"instance_id": "a1"})),
        ("LIST_INSTANCES", Value::Null),
        ("DELETE_INSTANCE", json!({"instance_id": "a1"})),
        ("APPLY_EVENT", json!({"instance_id": "a1", "event": "PAY"})),
        (
            "BATCH",
            json!({"ops": [{"op": "GET_INSTANCE", "params": {"instance_id": "a1"}}]}),
        ),
        ("SNAPSHOT_INSTANCE", json!({"instance_id": "a1"})),
        ("WAL_READ", json!({"from_offset": 0})),
        ("WAL_STATS", Value::Null),
        ("COMPACT", Value::Null),
        ("WATCH_INSTANCE", json!({"instance_id": "a1"})),
        ("WATCH_ALL", json!({})),
        ("UNWATCH", json!({"subscription_id": "sub-x"})),
        ("FLUSH_ALL", Value::Null),
    ];
    for (op, params) in guarded {
        raw.err_code(op, params, "UNAUTHORIZED");
    }
    // The writes above were refused, not applied.
    assert_eq!(client.get_instance("a1").await.unwrap().state, "created");

    // BYE needs no auth.
    let mut raw = server.raw();
    assert_eq!(raw.ok("BYE", Value::Null), json!({"goodbye": true}));
    raw.expect_closed();
}
