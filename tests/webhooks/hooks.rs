//! What the webhook tests share: a server with the API and metrics, a flip
//! machine, applying transitions, creating webhooks, reading their status,
//! checking signatures.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::client::{self, Api};
use crate::receiver::Seen;
use crate::support::{flip_definition, fresh_port, http_get, ids_on_shard, Server, SHARDS};

pub const SECRET: &str = "s3cret-for-tests";

/// A server with the HTTP API and the metrics endpoint.
pub struct Node {
    pub server: Server,
    pub api: Api,
    pub metrics: SocketAddr,
}

pub fn start() -> Node {
    let metrics_port = fresh_port();
    let metrics: SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    let bind = metrics.to_string();
    let (server, api) = client::start(&["--metrics-bind", &bind]);
    Node {
        server,
        api,
        metrics,
    }
}

impl Node {
    /// The flip machine and `per_shard` instances on every shard; their ids.
    pub fn flips(&self, prefix: &str, per_shard: usize) -> Vec<String> {
        let put = self
            .api
            .put("/v1/machines/flip/versions/1", &flip_definition());
        assert!(put.status == 200 || put.status == 201, "{}", put.text);
        let mut ids = Vec::new();
        for shard in 0..SHARDS {
            for id in ids_on_shard(prefix, shard, per_shard) {
                self.api
                    .post(
                        "/v1/instances",
                        &json!({"machine": "flip", "version": 1, "instance_id": id}),
                    )
                    .expect(201);
                ids.push(id);
            }
        }
        ids
    }

    /// Apply `event` to `id`; the transition's offset.
    pub fn apply(&self, id: &str, event: &str) -> u64 {
        let answer = self
            .api
            .post(
                &format!("/v1/instances/{id}/events"),
                &json!({"event": event}),
            )
            .expect(200)
            .json();
        answer["wal_offset"].as_u64().expect("wal_offset")
    }

    /// Flip the instances round-robin `n` times; the offsets, ascending.
    pub fn flip_many(&self, ids: &[String], n: usize) -> Vec<u64> {
        let mut offsets: Vec<u64> = (0..n)
            .map(|i| self.apply(&ids[i % ids.len()], "FLIP"))
            .collect();
        offsets.sort_unstable();
        offsets
    }

    /// Create a webhook; its id.
    pub fn webhook(&self, url: &str, filters: Value) -> String {
        let mut body = json!({"url": url, "secret": SECRET});
        if let Value::Object(f) = filters {
            body.as_object_mut().unwrap().extend(f);
        }
        let created = self.api.post("/v1/webhooks", &body).expect(201).json();
        assert!(
            created.get("secret").is_none(),
            "the secret is never returned"
        );
        created["id"].as_str().expect("id").to_string()
    }

    pub fn status(&self, id: &str) -> Value {
        self.api
            .get(&format!("/v1/webhooks/{id}"))
            .expect(200)
            .json()
    }

    /// Wait until the webhook's status satisfies `done`.
    #[track_caller]
    pub fn wait_status(&self, id: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status(id);
            if done(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "webhook status never got there: {s}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The value of the metric line `series` (name with labels), if any.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, _, body) = http_get(self.metrics, "/metrics").expect("scrape");
        body.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
    }
}

/// The signature a delivery must carry.
pub fn expected_signature(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// Every header of a delivery is right for its body.
#[track_caller]
pub fn assert_well_formed(seen: &Seen, webhook: &str) {
    assert_eq!(seen.signature, expected_signature(&seen.body));
    assert_eq!(seen.delivery, seen.offset().to_string());
    assert_eq!(seen.webhook, webhook);
    assert_eq!(seen.content_type, "application/json");
    let ts: u64 = seen.timestamp.parse().expect("timestamp is Unix ms");
    assert!(ts > 1_600_000_000_000, "{ts}");
    assert_eq!(seen.json()["webhook_id"], webhook);
}

/// Strictly increasing.
pub fn is_increasing(offsets: &[u64]) -> bool {
    offsets.windows(2).all(|w| w[0] < w[1])
}
