//! The happy path of every route: the answer is the RCP operation's result.

use serde_json::json;

use crate::client::{order_definition, order_instance, start};

#[test]
fn health_and_the_openapi_document_answer() {
    let (_server, api) = start(&[]);
    let health = api.get("/v1/health").expect(200);
    assert_eq!(health.json(), json!({"status": "ok"}));
    assert_eq!(health.header("content-type"), Some("application/json"));
    let doc = api.get("/openapi.json").expect(200).json();
    assert!(doc["paths"]["/v1/instances/{instance_id}/events"]["post"].is_object());
}

#[test]
fn machines_are_put_got_and_listed() {
    let (_server, api) = start(&[]);
    let put = api
        .put("/v1/machines/order/versions/1", &order_definition())
        .expect(201)
        .json();
    assert_eq!(put["created"], true);
    assert_eq!(put["machine"], "order");
    // The same definition again: nothing created, 200.
    let again = api
        .put("/v1/machines/order/versions/1", &order_definition())
        .expect(200)
        .json();
    assert_eq!(again["created"], false);
    assert_eq!(again["stored_checksum"], put["stored_checksum"]);
    let got = api.get("/v1/machines/order/versions/1").expect(200).json();
    assert_eq!(got["checksum"], put["stored_checksum"]);
    assert_eq!(got["definition"]["initial"], "created");
    let list = api.get("/v1/machines").expect(200).json();
    assert_eq!(
        list,
        json!({"items": [{"machine": "order", "versions": [1]}]})
    );
}

#[test]
fn instances_are_created_got_listed_and_deleted() {
    let (_server, api) = start(&[]);
    let created = order_instance(&api, "o-1", 5);
    assert_eq!(created["instance_id"], "o-1");
    assert_eq!(created["state"], "created");
    order_instance(&api, "o-2", 0);
    order_instance(&api, "o 3/x", 0);
    let got = api.get("/v1/instances/o-1").expect(200).json();
    assert_eq!(got["state"], "created");
    assert_eq!(got["ctx"], json!({"amount": 5}));
    assert_eq!(got["last_wal_offset"], created["wal_offset"]);
    // Percent-encoded ids name the instance.
    let odd = api.get("/v1/instances/o%203%2Fx").expect(200).json();
    assert_eq!(odd["machine"], "order");

    let page = api
        .get("/v1/instances?machine=order&limit=2&offset=0")
        .expect(200)
        .json();
    assert_eq!(page["total"], 3);
    assert_eq!(page["has_more"], true);
    let ids: Vec<&str> = page["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["o 3/x", "o-1"]);
    let rest = api
        .get("/v1/instances?machine=order&limit=2&offset=2")
        .expect(200)
        .json();
    assert_eq!(rest["instances"][0]["id"], "o-2");
    assert_eq!(rest["has_more"], false);
    let none = api.get("/v1/instances?state=paid").expect(200).json();
    assert_eq!(none["total"], 0);

    let deleted = api.delete("/v1/instances/o-2").expect(200).json();
    assert_eq!(deleted["deleted"], true);
    assert_eq!(deleted["instance_id"], "o-2");
    // Deleting is idempotent: the same answer again.
    assert_eq!(api.delete("/v1/instances/o-2").expect(200).json(), deleted);
    api.get("/v1/instances/o-2").expect(404);
    assert_eq!(api.get("/v1/instances").expect(200).json()["total"], 2);
}

#[test]
fn events_apply_with_expected_state_and_offset() {
    let (_server, api) = start(&[]);
    let created = order_instance(&api, "o-1", 5);
    let paid = api
        .post(
            "/v1/instances/o-1/events",
            &json!({"event": "PAY", "expected_state": "created",
                "expected_wal_offset": created["wal_offset"], "payload": {"note": "x"}}),
        )
        .expect(200)
        .json();
    assert_eq!(paid["applied"], true);
    assert_eq!(paid["from_state"], "created");
    assert_eq!(paid["to_state"], "paid");
    assert_eq!(paid["ctx"], json!({"amount": 5, "note": "x"}));
    let shipped = api
        .post(
            "/v1/instances/o-1/events",
            &json!({"event": "SHIP", "event_id": "e-7"}),
        )
        .expect(200)
        .json();
    assert_eq!(shipped["event_id"], "e-7");
    let got = api.get("/v1/instances/o-1").expect(200).json();
    assert_eq!(got["state"], "shipped");
    assert_eq!(got["last_wal_offset"], shipped["wal_offset"]);
}

#[test]
fn the_idempotency_key_header_is_the_rcp_idempotency_key() {
    let (_server, api) = start(&[]);
    order_instance(&api, "o-1", 5);
    let key = [("idempotency-key", "pay-o-1")];
    let body = json!({"event": "PAY"}).to_string();
    let first = api
        .request("POST", "/v1/instances/o-1/events", Some(&body), &key)
        .unwrap()
        .expect(200)
        .json();
    // A retry is answered with the first result and writes nothing.
    let retry = api
        .request("POST", "/v1/instances/o-1/events", Some(&body), &key)
        .unwrap()
        .expect(200)
        .json();
    assert_eq!(retry["wal_offset"], first["wal_offset"]);
    let got = api.get("/v1/instances/o-1").expect(200).json();
    assert_eq!(got["last_wal_offset"], first["wal_offset"]);

    // Create without an id: the id comes from the key, so a retry names
    // the same instance.
    let create = json!({"machine": "order", "version": 1}).to_string();
    let key = [("idempotency-key", "create-1")];
    let a = api
        .request("POST", "/v1/instances", Some(&create), &key)
        .unwrap()
        .expect(201)
        .json();
    let b = api
        .request("POST", "/v1/instances", Some(&create), &key)
        .unwrap()
        .expect(201)
        .json();
    assert_eq!(a["instance_id"], b["instance_id"]);
    assert_eq!(a["wal_offset"], b["wal_offset"]);
}

#[test]
fn batches_run_atomic_and_best_effort() {
    let (_server, api) = start(&[]);
    order_instance(&api, "o-1", 5);
    let atomic = api
        .post(
            "/v1/batch",
            &json!({"mode": "atomic", "ops": [
                {"op": "CREATE_INSTANCE", "params": {"machine": "order", "version": 1,
                    "instance_id": "b-1", "initial_ctx": {"amount": 1}}},
                {"op": "APPLY_EVENT", "params": {"instance_id": "b-1", "event": "PAY"}},
                {"op": "APPLY_EVENT", "params": {"instance_id": "o-1", "event": "PAY"}}
            ]}),
        )
        .expect(200)
        .json();
    assert_eq!(atomic["results"].as_array().unwrap().len(), 3);
    assert_eq!(
        api.get("/v1/instances/b-1").expect(200).json()["state"],
        "paid"
    );
    assert_eq!(
        api.get("/v1/instances/o-1").expect(200).json()["state"],
        "paid"
    );
    let best = api
        .post(
            "/v1/batch",
            &json!({"mode": "best_effort", "ops": [
                {"op": "APPLY_EVENT", "params": {"instance_id": "o-1", "event": "SHIP"}},
                {"op": "GET_INSTANCE", "params": {"instance_id": "missing"}}
            ]}),
        )
        .expect(200)
        .json();
    let results = best["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[1]["error"]["code"], "INSTANCE_NOT_FOUND", "{best}");
    assert_eq!(
        api.get("/v1/instances/o-1").expect(200).json()["state"],
        "shipped"
    );
}

#[test]
fn the_wal_is_read_in_pages_and_its_stats_and_info_answer() {
    let (_server, api) = start(&[]);
    order_instance(&api, "o-1", 5);
    order_instance(&api, "o-2", 5);
    let all = api.get("/v1/wal?from_offset=0").expect(200).json();
    let all = all["records"].as_array().unwrap().clone();
    assert_eq!(all[0]["entry"]["type"], "put_machine");
    // Pages of two follow next_offset through the same records.
    let mut paged = Vec::new();
    let mut from = 0;
    loop {
        let page = api
            .get(&format!("/v1/wal?from_offset={from}&limit=2"))
            .expect(200)
            .json();
        let records = page["records"].as_array().unwrap();
        assert!(records.len() <= 2);
        if records.is_empty() {
            break;
        }
        paged.extend(records.iter().cloned());
        from = page["next_offset"].as_u64().unwrap();
    }
    assert_eq!(paged, all);
    let stats = api.get("/v1/wal/stats").expect(200).json();
    assert!(
        stats["records"].as_u64().unwrap() >= all.len() as u64,
        "{stats}"
    );
    let info = api.get("/v1/info").expect(200).json();
    assert_eq!(info["server_name"], "corestate");
    assert_eq!(info["auth_required"], false);
}
