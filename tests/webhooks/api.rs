//! The webhook routes: validation, 404 for unknown ids, the secret never
//! returned, bearer auth, the webhook limit, and subscriptions that survive
//! SIGKILL (acknowledged only once durable).

use serde_json::{json, Value};

use crate::client::start as start_api;
use crate::hooks::{start, SECRET};
use crate::support::{auth_config, AUTH_TOKEN};

/// The server's `WEBHOOKS_MAX`.
const WEBHOOKS_MAX: usize = 64;

#[test]
fn bad_webhooks_are_refused_with_400_and_unknown_ids_with_404() {
    let node = start();
    let api = &node.api;
    let long = format!("http://127.0.0.1/{}", "a".repeat(2048));
    for body in [
        json!({"url": "https://127.0.0.1:9/x", "secret": SECRET}),
        json!({"url": "ftp://127.0.0.1/x", "secret": SECRET}),
        json!({"url": "not a url", "secret": SECRET}),
        json!({"url": "http://:9/x", "secret": SECRET}),
        json!({"url": long, "secret": SECRET}),
        json!({"url": "http://127.0.0.1:9/x"}),
        json!({"url": "http://127.0.0.1:9/x", "secret": ""}),
        json!({"url": "http://127.0.0.1:9/x", "secret": 7}),
        json!({"secret": SECRET}),
        json!({"url": "http://127.0.0.1:9/x", "secret": SECRET, "machines": ["x"]}),
        json!([1, 2]),
    ] {
        let answer = api.post("/v1/webhooks", &body).expect(400);
        assert_eq!(answer.code(), "BAD_REQUEST", "{body}");
    }
    api.request("POST", "/v1/webhooks", Some("{nope"), &[])
        .unwrap()
        .expect(400);
    for (method, path) in [
        ("GET", "/v1/webhooks/wh-nope"),
        ("DELETE", "/v1/webhooks/wh-nope"),
        ("POST", "/v1/webhooks/wh-nope/resume"),
    ] {
        let answer = api.request(method, path, None, &[]).unwrap().expect(404);
        assert_eq!(answer.code(), "NOT_FOUND");
    }
    api.request("GET", "/v1/webhooks?x=1", None, &[])
        .unwrap()
        .expect(400);
    assert_eq!(
        api.get("/v1/webhooks").expect(200).json(),
        json!({"webhooks": []})
    );
}

#[test]
fn a_webhook_is_listed_without_its_secret_survives_sigkill_and_is_deleted_durably() {
    let mut node = start();
    let created = node
        .api
        .post(
            "/v1/webhooks",
            &json!({"url": "http://127.0.0.1:9/in", "secret": SECRET,
                "machine": "order", "to_state": "paid"}),
        )
        .expect(201);
    assert!(!created.text.contains(SECRET), "{}", created.text);
    let created = created.json();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(
        created["filters"],
        json!({"machine": "order", "to_state": "paid"})
    );
    assert_eq!(created["status"], "active");
    let other = node.webhook("http://127.0.0.1:9/other", json!({"event": "SHIP"}));
    // SIGKILL right after the answer: both are there after the restart.
    node.server.restart();
    crate::client::wait_listening(node.api.addr);
    let list = node.api.get("/v1/webhooks").expect(200);
    assert!(!list.text.contains(SECRET), "{}", list.text);
    let ids: Vec<Value> = list.json()["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].clone())
        .collect();
    assert_eq!(ids.len(), 2, "{}", list.text);
    assert!(ids.contains(&json!(id)) && ids.contains(&json!(other)));
    assert_eq!(node.status(&id)["filters"], created["filters"]);
    assert_eq!(node.status(&id)["url"], "http://127.0.0.1:9/in");
    // Deleted, and still gone after another SIGKILL.
    assert_eq!(
        node.api
            .delete(&format!("/v1/webhooks/{id}"))
            .expect(200)
            .json(),
        json!({"id": id, "deleted": true})
    );
    node.api.get(&format!("/v1/webhooks/{id}")).expect(404);
    node.server.restart();
    crate::client::wait_listening(node.api.addr);
    node.api.get(&format!("/v1/webhooks/{id}")).expect(404);
    node.api.get(&format!("/v1/webhooks/{other}")).expect(200);
}

#[test]
fn the_number_of_webhooks_is_limited() {
    let node = start();
    for i in 0..WEBHOOKS_MAX {
        node.webhook(&format!("http://127.0.0.1:9/{i}"), json!({}));
    }
    let answer = node
        .api
        .post(
            "/v1/webhooks",
            &json!({"url": "http://127.0.0.1:9/one-more", "secret": SECRET}),
        )
        .expect(409);
    assert!(answer.text.contains("too many webhooks"), "{}", answer.text);
}

#[test]
fn webhook_routes_need_a_bearer_token() {
    let (_dir, config) = auth_config();
    let (_server, api) = start_api(&["--config", config.to_str().unwrap()]);
    let body = json!({"url": "http://127.0.0.1:9/x", "secret": SECRET}).to_string();
    for (method, path, body) in [
        ("POST", "/v1/webhooks", Some(body.as_str())),
        ("GET", "/v1/webhooks", None),
        ("GET", "/v1/webhooks/wh-1", None),
        ("DELETE", "/v1/webhooks/wh-1", None),
        ("POST", "/v1/webhooks/wh-1/resume", None),
    ] {
        let answer = api.request(method, path, body, &[]).unwrap().expect(401);
        assert_eq!(answer.code(), "UNAUTHORIZED");
        let answer = api
            .with_token("wrong")
            .request(method, path, body, &[])
            .unwrap()
            .expect(401);
        assert_eq!(answer.code(), "AUTH_FAILED");
    }
    let right = api.with_token(AUTH_TOKEN);
    let created = right
        .request("POST", "/v1/webhooks", Some(&body), &[])
        .unwrap()
        .expect(201)
        .json();
    let id = created["id"].as_str().unwrap();
    right.get(&format!("/v1/webhooks/{id}")).expect(200);
}
