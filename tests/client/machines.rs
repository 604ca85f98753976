//! Machines are put, got and listed; invalid definitions are bad requests.

use serde_json::json;

use crate::setup::{connect, expect_code, order_definition};
use crate::support::Server;

#[tokio::test]
async fn machines_are_put_got_and_listed() {
    let server = Server::start(&[]);
    let client = connect(&server).await;

    // Appendix A: unknown keys dropped, `from` normalised, CRC-32C checksum.
    let sent = json!({"transitions": [{"to": "paid", "event": "PAY", "from": "created",
                                       "description": "x"}],
                      "initial": "created", "states": ["created", "paid"],
                      "meta": null, "extra": 1});
    let put = client.put_machine("order", 1, sent.clone()).await.unwrap();
    assert!(put.created);
    assert_eq!(put.machine, "order");
    assert_eq!(put.version, 1);
    assert_eq!(put.stored_checksum, "26adbd14");

    let again = client.put_machine("order", 1, sent).await.unwrap();
    assert!(!again.created, "identical re-put is idempotent");
    assert_eq!(again.stored_checksum, "26adbd14");

    let got = client.get_machine("order", 1).await.unwrap();
    assert_eq!(got.checksum, "26adbd14");
    assert_eq!(
        got.definition,
        json!({"states": ["created", "paid"], "initial": "created",
               "transitions": [{"from": ["created"], "event": "PAY", "to": "paid"}]})
    );

    expect_code(
        client.put_machine("order", 1, order_definition()).await,
        "MACHINE_VERSION_EXISTS",
    );
    client
        .put_machine("order", 7, order_definition())
        .await
        .unwrap();
    client
        .put_machine("order", 0, order_definition())
        .await
        .unwrap();
    let invoice = json!({"states": ["a"], "initial": "a", "transitions": []});
    let put = client.put_machine("invoice", 3, invoice).await.unwrap();
    assert_eq!(put.stored_checksum, "6b16bc3e");

    expect_code(client.get_machine("order", 2).await, "MACHINE_NOT_FOUND");
    expect_code(client.get_machine("nope", 1).await, "MACHINE_NOT_FOUND");

    let list = client.list_machines().await.unwrap();
    assert_eq!(
        list["items"],
        json!([{"machine": "invoice", "versions": [3]},
               {"machine": "order", "versions": [0, 1, 7]}]),
        "{list}"
    );
}

#[tokio::test]
async fn invalid_definitions_are_bad_requests_and_not_retryable() {
    let server = Server::start(&[]);
    let client = connect(&server).await;
    let cases = [
        json!({"states": ["a"], "initial": "b", "transitions": []}),
        json!({"states": ["a"], "initial": "a",
               "transitions": [{"from": "a", "event": "E", "to": "zz"}]}),
        json!({"states": ["a"], "initial": "a",
               "transitions": [{"from": "zz", "event": "E", "to": "a"}]}),
        json!({"initial": "a", "transitions": []}),
        json!({"states": "a", "initial": "a", "transitions": []}),
        json!("not an object"),
    ];
    for definition in cases {
        expect_code(
            client.put_machine("bad", 1, definition.clone()).await,
            "BAD_REQUEST",
        );
    }
    // Nothing was registered by the failures.
    let list = client.list_machines().await.unwrap();
    assert_eq!(list["items"], json!([]), "{list}");
}
