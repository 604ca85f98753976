//! HTTP and RCP are two doors to the same shards: a write through one is
//! seen through the other at once, with the same offsets.

use serde_json::json;

use crate::client::{order_definition, start};

#[test]
fn a_write_over_http_is_seen_over_rcp_and_back() {
    let (server, api) = start(&[]);
    let mut rcp = server.raw();
    // A machine put over HTTP, an instance created over RCP.
    api.put("/v1/machines/order/versions/1", &order_definition())
        .expect(201);
    let created = rcp.ok(
        "CREATE_INSTANCE",
        json!({"machine": "order", "version": 1, "instance_id": "o-1",
            "initial_ctx": {"amount": 3}}),
    );
    let over_http = api.get("/v1/instances/o-1").expect(200).json();
    assert_eq!(over_http["last_wal_offset"], created["wal_offset"]);
    // Applied over HTTP, read over RCP.
    let paid = api
        .post("/v1/instances/o-1/events", &json!({"event": "PAY"}))
        .expect(200)
        .json();
    let over_rcp = rcp.ok("GET_INSTANCE", json!({"instance_id": "o-1"}));
    assert_eq!(over_rcp["state"], "paid");
    assert_eq!(over_rcp["last_wal_offset"], paid["wal_offset"]);
    // Applied over RCP, read over HTTP: the whole object is the same.
    rcp.ok(
        "APPLY_EVENT",
        json!({"instance_id": "o-1", "event": "SHIP"}),
    );
    let over_rcp = rcp.ok("GET_INSTANCE", json!({"instance_id": "o-1"}));
    assert_eq!(api.get("/v1/instances/o-1").expect(200).json(), over_rcp);
    // Lists and machines agree too.
    assert_eq!(
        api.get("/v1/instances").expect(200).json(),
        rcp.ok("LIST_INSTANCES", json!({}))
    );
    assert_eq!(
        api.get("/v1/machines").expect(200).json(),
        rcp.ok("LIST_MACHINES", json!({}))
    );
    // An idempotency key set over HTTP is honoured over RCP.
    let body = json!({"machine": "order", "version": 1, "instance_id": "o-2"}).to_string();
    let first = api
        .request(
            "POST",
            "/v1/instances",
            Some(&body),
            &[("idempotency-key", "k-2")],
        )
        .unwrap()
        .expect(201)
        .json();
    let retried = rcp.ok(
        "CREATE_INSTANCE",
        json!({"machine": "order", "version": 1, "instance_id": "o-2", "idempotency_key": "k-2"}),
    );
    assert_eq!(retried["wal_offset"], first["wal_offset"]);
}

#[test]
fn the_official_rust_client_sees_http_writes() {
    let (server, api) = start(&[]);
    api.put("/v1/machines/order/versions/1", &order_definition())
        .expect(201);
    api.post(
        "/v1/instances",
        &json!({"machine": "order", "version": 1, "instance_id": "o-1",
            "initial_ctx": {"amount": 1}}),
    )
    .expect(201);
    api.post("/v1/instances/o-1/events", &json!({"event": "PAY"}))
        .expect(200);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = crate::support::rstmdb_connect(server.addr(), None)
            .await
            .expect("connect");
        let got = client.get_instance("o-1").await.expect("get");
        assert_eq!(got.state, "paid");
    });
}
