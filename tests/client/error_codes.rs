//! Every error reaches the client as one of the 0.3 error codes.

use serde_json::json;

use crate::setup::{connect_with_order, expect_code};
use crate::support::Server;

#[tokio::test]
async fn error_codes_are_the_0_3_codes() {
    let server = Server::start(&[]);
    let client = connect_with_order(&server).await;
    client
        .create_instance("order", 1, Some("e1"), None, None)
        .await
        .unwrap();

    expect_code(client.get_instance("nope").await, "INSTANCE_NOT_FOUND");
    expect_code(
        client.delete_instance("nope", None).await,
        "INSTANCE_NOT_FOUND",
    );
    expect_code(
        client.apply_event("nope", "PAY", None, None, None).await,
        "INSTANCE_NOT_FOUND",
    );
    expect_code(client.get_machine("order", 2).await, "MACHINE_NOT_FOUND");
    expect_code(
        client.create_instance("order", 2, None, None, None).await,
        "MACHINE_NOT_FOUND",
    );
    expect_code(
        client
            .create_instance("order", 1, Some("e1"), None, None)
            .await,
        "INSTANCE_EXISTS",
    );
    expect_code(
        client.apply_event("e1", "SHIP", None, None, None).await,
        "INVALID_TRANSITION",
    );
    expect_code(
        client
            .apply_event("e1", "NO_SUCH_EVENT", None, None, None)
            .await,
        "INVALID_TRANSITION",
    );
    expect_code(
        client
            .put_machine(
                "order",
                1,
                json!({"states": ["z"], "initial": "z", "transitions": []}),
            )
            .await,
        "MACHINE_VERSION_EXISTS",
    );
    // After all those errors the connection still works.
    client.ping().await.unwrap();
    let info = client.info().await.unwrap();
    assert_eq!(info["shards"], 2, "{info}");
    assert_eq!(info["auth_required"], false, "{info}");
}
