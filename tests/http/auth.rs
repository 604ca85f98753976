//! With tokens configured, every route but health and the OpenAPI document
//! needs `Authorization: Bearer <token>`, checked against the same token
//! hashes as RCP's AUTH.

use serde_json::json;

use crate::client::{order_definition, start, Answer};
use crate::support::{auth_config, AUTH_TOKEN};

/// Every route that needs a token, with a body where it reads one.
const GUARDED: &[(&str, &str, &str)] = &[
    ("GET", "/v1/info", ""),
    ("GET", "/v1/machines", ""),
    ("PUT", "/v1/machines/m/versions/1", "{}"),
    ("GET", "/v1/machines/m/versions/1", ""),
    ("POST", "/v1/instances", "{}"),
    ("GET", "/v1/instances", ""),
    ("GET", "/v1/instances/i", ""),
    ("DELETE", "/v1/instances/i", ""),
    ("POST", "/v1/instances/i/events", "{}"),
    ("POST", "/v1/batch", "{}"),
    ("GET", "/v1/wal?from_offset=0", ""),
    ("GET", "/v1/wal/stats", ""),
];

#[track_caller]
fn assert_unauthorized(answer: Answer, code: &str) {
    let answer = answer.expect(401);
    assert_eq!(answer.code(), code, "{}", answer.text);
    assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
}

#[test]
fn every_route_but_health_and_openapi_needs_a_bearer_token() {
    let (_dir, config) = auth_config();
    let (_server, api) = start(&["--config", config.to_str().unwrap()]);
    let wrong = api.with_token("not-the-secret");
    let right = api.with_token(AUTH_TOKEN);
    for (method, path, body) in GUARDED {
        let body = (!body.is_empty()).then_some(*body);
        assert_unauthorized(
            api.request(method, path, body, &[]).unwrap(),
            "UNAUTHORIZED",
        );
        let refused = wrong.request(method, path, body, &[]).unwrap();
        // Refused before its body was read: the connection closes, and the
        // answer says so (a pooling client must not send the next request
        // into it).
        let closes = refused.header("connection") == Some("close");
        assert_eq!(closes, body.is_some(), "{method} {path}: Connection header");
        assert_unauthorized(refused, "AUTH_FAILED");
        let answer = right.request(method, path, body, &[]).unwrap();
        assert_ne!(answer.status, 401, "{method} {path}: {}", answer.text);
    }
    // Other schemes and an empty token fail too.
    for header in ["Basic c2VjcmV0", "Bearer", "Bearer ", "secret"] {
        assert_unauthorized(
            api.request("GET", "/v1/info", None, &[("authorization", header)])
                .unwrap(),
            "AUTH_FAILED",
        );
    }
    // The scheme is case-insensitive.
    api.request(
        "GET",
        "/v1/info",
        None,
        &[("authorization", &format!("bearer {AUTH_TOKEN}"))],
    )
    .unwrap()
    .expect(200);
    // Open routes.
    api.get("/v1/health").expect(200);
    api.get("/openapi.json").expect(200);
    // The token works for real work, and INFO says authentication is on.
    right
        .put("/v1/machines/order/versions/1", &order_definition())
        .expect(201);
    assert_eq!(
        right.get("/v1/info").expect(200).json()["auth_required"],
        true
    );
    right
        .post(
            "/v1/instances",
            &json!({"machine": "order", "version": 1, "instance_id": "a"}),
        )
        .expect(201);
}

#[test]
fn without_configured_tokens_no_header_is_needed() {
    let (_server, api) = start(&[]);
    api.get("/v1/info").expect(200);
    // A token is ignored when none is required.
    api.with_token("anything").get("/v1/info").expect(200);
}
