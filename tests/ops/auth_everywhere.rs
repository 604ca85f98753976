//! Authentication on every operation (docs/PROTOCOL.md §3.3–3.4, stricter on WATCH_*):
//! with tokens configured, each of the 25 operations except HELLO, AUTH,
//! PING and BYE is refused with UNAUTHORIZED until AUTH succeeds; a wrong
//! token is AUTH_FAILED and changes nothing; after AUTH every operation is
//! served. Tokens may come from the config file, a secrets file (named in
//! the file or by RSTMDB_AUTH_SECRETS_FILE) or RSTMDB_AUTH_TOKEN_HASH.

use std::net::SocketAddr;

use serde_json::{json, Value};

use crate::support::{
    error_code, rstmdb_connect, Proc, RawClient, Server, AUTH_TOKEN, AUTH_TOKEN_SHA256,
};

/// Every operation name of the protocol (PROTOCOL.md §2.1).
const ALL_OPS: [&str; 25] = [
    "HELLO",
    "AUTH",
    "PING",
    "BYE",
    "INFO",
    "REPLICATION_STATUS",
    "PUT_MACHINE",
    "GET_MACHINE",
    "LIST_MACHINES",
    "CREATE_INSTANCE",
    "GET_INSTANCE",
    "LIST_INSTANCES",
    "DELETE_INSTANCE",
    "APPLY_EVENT",
    "BATCH",
    "SNAPSHOT_INSTANCE",
    "WAL_READ",
    "WAL_STATS",
    "COMPACT",
    "WATCH_INSTANCE",
    "WATCH_ALL",
    "UNWATCH",
    "FLUSH_ALL",
    "REPLICATE",
    "REPLICATE_ACK",
];

/// Served before AUTH.
const EXEMPT: [&str; 4] = ["HELLO", "AUTH", "PING", "BYE"];

/// Plausible parameters, so that after AUTH each operation gets past
/// parameter checks where it can.
fn params(op: &str) -> Value {
    let machine = json!({
        "states": ["a", "b"],
        "initial": "a",
        "transitions": [{"from": "a", "event": "GO", "to": "b"}]
    });
    match op {
        "HELLO" => json!({"protocol_version": 1}),
        "AUTH" => json!({"method": "bearer", "token": AUTH_TOKEN}),
        "PUT_MACHINE" => json!({"machine": "gate", "version": 1, "definition": machine}),
        "GET_MACHINE" => json!({"machine": "gate", "version": 1}),
        "CREATE_INSTANCE" => json!({"machine": "gate", "version": 1, "instance_id": "g-1"}),
        "GET_INSTANCE" | "SNAPSHOT_INSTANCE" | "WATCH_INSTANCE" => json!({"instance_id": "g-1"}),
        "DELETE_INSTANCE" => json!({"instance_id": "g-2"}),
        "APPLY_EVENT" => json!({"instance_id": "g-1", "event": "GO"}),
        "BATCH" => json!({"mode": "best_effort", "ops": [
            {"op": "CREATE_INSTANCE", "params": {"machine": "gate", "version": 1, "instance_id": "g-3"}}
        ]}),
        "WAL_READ" => json!({"from_offset": 0, "limit": 10}),
        "WATCH_ALL" => json!({}),
        "UNWATCH" => json!({"subscription_id": "sub-none"}),
        "COMPACT" => json!({"force_snapshot": false}),
        _ => json!({}),
    }
}

fn is_unauthorized(response: &Value) -> bool {
    response["status"] == "error" && response["error"]["code"] == "UNAUTHORIZED"
}

/// The full sweep on one connection: gated before AUTH, AUTH_FAILED for a
/// wrong token, served after the right one.
fn every_op_is_gated_until_auth(addr: SocketAddr) {
    let mut c = RawClient::connect(addr);
    for op in ALL_OPS.iter().filter(|op| !EXEMPT.contains(op)) {
        let response = c.call(op, params(op));
        assert!(
            is_unauthorized(&response),
            "{op} before AUTH must be UNAUTHORIZED: {response}"
        );
        assert_eq!(
            response["error"]["message"], "authentication required",
            "{response}"
        );
        assert_eq!(response["error"]["retryable"], false, "{response}");
    }
    c.ok("HELLO", params("HELLO"));
    c.assert_alive();

    let wrong = c.err_code(
        "AUTH",
        json!({"method": "bearer", "token": "not-the-token"}),
        "AUTH_FAILED",
    );
    assert_eq!(wrong["message"], "authentication failed: invalid token");
    c.err_code(
        "AUTH",
        json!({"method": "basic", "token": AUTH_TOKEN}),
        "AUTH_FAILED",
    );
    c.err_code("INFO", Value::Null, "UNAUTHORIZED");
    c.err_code("WATCH_ALL", json!({}), "UNAUTHORIZED");

    assert_eq!(c.ok("AUTH", params("AUTH")), json!({"authenticated": true}));
    for op in ALL_OPS.iter().filter(|op| !EXEMPT.contains(op)) {
        let response = c.call(op, params(op));
        assert!(!is_unauthorized(&response), "{op} after AUTH: {response}");
    }
    // A later failing AUTH does not revoke the session.
    c.err_code(
        "AUTH",
        json!({"method": "bearer", "token": "nope"}),
        "AUTH_FAILED",
    );
    c.ok("LIST_MACHINES", json!({}));
    assert_eq!(c.ok("BYE", Value::Null), json!({"goodbye": true}));
    c.expect_closed();

    // BYE needs no AUTH either.
    let mut bye = RawClient::connect(addr);
    assert_eq!(bye.ok("BYE", Value::Null), json!({"goodbye": true}));
}

/// The short check for each token source.
fn token_is_accepted(addr: SocketAddr) {
    let mut c = RawClient::connect(addr);
    c.err_code("WAL_STATS", json!({}), "UNAUTHORIZED");
    c.err_code(
        "AUTH",
        json!({"method": "bearer", "token": "wrong"}),
        "AUTH_FAILED",
    );
    c.ok("AUTH", params("AUTH"));
    c.ok("WAL_STATS", json!({}));
}

#[test]
fn every_operation_needs_auth_with_hashes_from_the_config_file() {
    let (_dir, config) = crate::support::auth_config();
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    every_op_is_gated_until_auth(server.addr());
    // Failed AUTHs are logged as refusals, with the peer.
    let log = server.stderr();
    assert!(
        log.contains("auth_failed")
            && log.contains("authentication failed: invalid token")
            && log.contains("127.0.0.1:"),
        "{log}"
    );
}

#[test]
fn tokens_from_a_secrets_file_named_in_the_config() {
    let dir = tempfile::TempDir::new().unwrap();
    let secrets = dir.path().join("tokens");
    std::fs::write(
        &secrets,
        format!("# corestate tokens\n\n{AUTH_TOKEN_SHA256}\n"),
    )
    .unwrap();
    let config = crate::support::write_config(
        dir.path(),
        &format!(
            "auth:\n  required: true\n  secrets_file: \"{}\"\n",
            secrets.display()
        ),
    );
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    token_is_accepted(server.addr());
}

#[test]
fn tokens_from_a_secrets_file_named_by_the_environment() {
    let dir = tempfile::TempDir::new().unwrap();
    let secrets = dir.path().join("tokens");
    std::fs::write(&secrets, format!("{AUTH_TOKEN_SHA256}\n")).unwrap();
    let server = Proc::start(
        &[],
        &[
            ("RSTMDB_AUTH_REQUIRED", "true"),
            ("RSTMDB_AUTH_SECRETS_FILE", secrets.to_str().unwrap()),
        ],
    );
    token_is_accepted(server.addr);
}

#[test]
fn a_token_hash_from_the_environment() {
    let server = Proc::start(
        &[],
        &[
            ("RSTMDB_AUTH_REQUIRED", "1"),
            ("RSTMDB_AUTH_TOKEN_HASH", AUTH_TOKEN_SHA256),
        ],
    );
    every_op_is_gated_until_auth(server.addr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_sees_unauthorized_and_auth_failed() {
    let (_dir, config) = crate::support::auth_config();
    let server = Server::start(&["--config", config.to_str().unwrap()]);

    let anonymous = rstmdb_connect(server.addr(), None).await.expect("connect");
    let err = anonymous
        .watch_all(None, None, None, None, false)
        .await
        .expect_err("gated");
    assert_eq!(error_code(&err), "UNAUTHORIZED");
    let err = anonymous.wal_stats().await.expect_err("gated");
    assert_eq!(error_code(&err), "UNAUTHORIZED");
    anonymous.ping().await.expect("PING is exempt");

    let wrong = rstmdb_connect(server.addr(), Some("wrong")).await;
    match wrong {
        Err(e) => assert_eq!(error_code(&e), "AUTH_FAILED"),
        Ok(_) => panic!("a wrong token must fail the connect"),
    }

    let authed = rstmdb_connect(server.addr(), Some(AUTH_TOKEN))
        .await
        .expect("connect");
    authed.wal_stats().await.expect("after AUTH");
    authed
        .watch_all(None, None, None, None, false)
        .await
        .expect("WATCH_ALL after AUTH");
}
