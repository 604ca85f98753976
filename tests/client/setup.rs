//! What the client tests share: a connected `rstmdb-client`, the check of
//! an expected error code, and the order machine.

use rstmdb_client::{Client, ClientError};
use serde_json::{json, Value};

use crate::support::{rstmdb_connect, Server};

pub async fn connect(server: &Server) -> Client {
    rstmdb_connect(server.addr(), None)
        .await
        .unwrap_or_else(|e| panic!("rstmdb-client cannot connect: {e}"))
}

/// A connected client, with the order machine (version 1) installed.
pub async fn connect_with_order(server: &Server) -> Client {
    let client = connect(server).await;
    client
        .put_machine("order", 1, order_definition())
        .await
        .unwrap();
    client
}

/// The error of a call that must fail with `code` (and `retryable: false`).
pub fn expect_code<T: std::fmt::Debug>(result: Result<T, ClientError>, code: &str) -> String {
    match result {
        Ok(value) => panic!("expected {code}, got success: {value:?}"),
        Err(ClientError::ServerError {
            code: got,
            message,
            retryable,
        }) => {
            assert_eq!(got.to_string(), code, "message: {message}");
            assert!(!retryable, "{code} must not be retryable ({message})");
            message
        }
        Err(other) => panic!("expected server error {code}, got {other}"),
    }
}

pub fn order_definition() -> Value {
    json!({
        "states": ["created", "paid", "shipped", "cancelled"],
        "initial": "created",
        "transitions": [
            {"from": "created", "event": "PAY", "to": "paid"},
            {"from": ["created", "paid"], "event": "CANCEL", "to": "cancelled"},
            {"from": "paid", "event": "SHIP", "to": "shipped", "guard": "ctx.address != null"},
            {"from": "paid", "event": "NOTE", "to": "paid"}
        ]
    })
}
