//! A follower forwards what needs the leader: a turn's operations travel
//! together, as one call, and keep their order. Pipelined flips of one
//! instance through a follower come back alternating (the order held),
//! and the follower's REPLICATION_STATUS shows fewer forwarded calls than
//! operations (they were batched). The deepest context and payload a
//! client may send travel through a follower too.

use std::time::Instant;

use serde_json::{json, Value};

use crate::harness::{Cluster, CLUSTER_SETTLE_TIMEOUT, LEADER_POLL};
use crate::support::fixtures::flip_definition;
use crate::support::fixtures::nested_object;
use crate::support::raw_client::pipeline;
use crate::support::wire::request;

/// Flips pipelined on one connection: more than a peer connection's
/// calls in flight (`PEER_REQUESTS_IN_FLIGHT_MAX`, 64).
const FLIPS: usize = 300;

#[test]
fn pipelined_writes_through_a_follower_are_batched_and_keep_their_order() {
    let (mut cluster, _, follower) = Cluster::with_flips("", &["p-0"]);

    let mut raw = cluster.raw(follower);
    raw.ok("HELLO", json!({"protocol_version": 1}));
    let flip = json!({"instance_id": "p-0", "event": "FLIP"});
    pipeline(&mut raw.stream, "flip-", FLIPS, "APPLY_EVENT", &flip);
    for i in 0..FLIPS {
        let response = raw.read_response();
        assert_eq!(response["id"], format!("flip-{i}"), "{response}");
        assert_eq!(response["status"], "ok", "flip {i}: {response}");
        let expected = if i % 2 == 0 { "b" } else { "a" };
        assert_eq!(
            response["result"]["to_state"], expected,
            "flip {i}: {response}"
        );
    }

    let status = cluster.ok_on(follower, "REPLICATION_STATUS", json!({}));
    let group = &status["shards"][0];
    let ops = group["forwarded_ops"].as_u64().expect("forwarded_ops");
    let batches = group["forwarded_batches"]
        .as_u64()
        .expect("forwarded_batches");
    eprintln!("{ops} forwarded operations in {batches} calls");
    assert!(ops >= FLIPS as u64, "{status}");
    assert!(
        batches * 2 <= ops,
        "{ops} operations went in {batches} calls: not batched ({status})"
    );
}

/// Levels a request's `params` may nest below them: a request nests at most
/// 127 levels (`REQUEST_JSON_DEPTH_MAX`), the envelope and `params` take two.
const PARAM_VALUE_DEPTH_MAX: usize = 125;

fn nested_array(depth: usize) -> Value {
    (1..depth).fold(json!([]), |inner, _| json!([inner]))
}

/// The forwarded operations node `via` counts (REPLICATION_STATUS).
pub fn forwarded_ops(cluster: &mut Cluster, via: u64) -> u64 {
    let status = cluster.ok_on(via, "REPLICATION_STATUS", json!({}));
    status["shards"][0]["forwarded_ops"].as_u64().unwrap_or(0)
}

/// `make(attempt)` sent through node `via` until one is answered ok after
/// `via` forwarded it (its count of forwarded operations grew: it did not
/// lead); the answer as text (it may nest deeper than serde_json reads).
/// Refusals while the lead moves, and answers `via` gave as the leader,
/// are tried again; anything else until `CLUSTER_SETTLE_TIMEOUT` fails the
/// test.
pub fn text_forwarded(
    cluster: &mut Cluster,
    via: u64,
    op: &str,
    make: impl Fn(usize) -> Value,
) -> String {
    let started = Instant::now();
    for attempt in 0.. {
        let before = forwarded_ops(cluster, via);
        let mut raw = cluster.raw(via);
        raw.send_json(&request(&format!("t{attempt}"), op, make(attempt)));
        let frame = raw.read_frame().expect("an answer");
        let text = String::from_utf8_lossy(&frame.payload).into_owned();
        if text.contains("\"status\":\"ok\"") && forwarded_ops(cluster, via) > before {
            return text;
        }
        assert!(
            started.elapsed() < CLUSTER_SETTLE_TIMEOUT,
            "{op} through node {via} was never answered after forwarding: {}",
            &text[..text.len().min(300)]
        );
        std::thread::sleep(LEADER_POLL);
    }
    unreachable!("the attempts never end")
}

/// As `text_forwarded`, for an answer serde_json reads: its `result`.
pub fn ok_forwarded(
    cluster: &mut Cluster,
    via: u64,
    op: &str,
    make: impl Fn(usize) -> Value,
) -> Value {
    let text = text_forwarded(cluster, via, op, make);
    let answer: Value = serde_json::from_str(&text).expect("a JSON answer");
    answer["result"].clone()
}

/// A context and a payload as deep as a client may send, through a
/// follower: forwarded to the leader and replicated to every node. (When
/// forwarded operations travelled inside a JSON array, these added four
/// levels on the way, past the leader's JSON parser's limit: the leader
/// refused the whole call, and the client was told "outcome unknown" at
/// every retry.)
#[test]
fn the_deepest_context_and_payload_a_client_may_send_travel_through_a_follower() {
    let (mut cluster, _, follower) = Cluster::with_flips("", &["shallow"]);

    let ctx = nested_object(PARAM_VALUE_DEPTH_MAX);
    let created = ok_forwarded(
        &mut cluster,
        follower,
        "CREATE_INSTANCE",
        |attempt| json!({"machine": "flip", "version": 1, "instance_id": format!("deep-{attempt}"), "initial_ctx": ctx}),
    );
    // An array payload is not merged into the context (which stays `{}`),
    // so the answer stays shallow enough for the test's JSON parser.
    let payload = nested_array(PARAM_VALUE_DEPTH_MAX);
    let applied = ok_forwarded(
        &mut cluster,
        follower,
        "APPLY_EVENT",
        |_| json!({"instance_id": "shallow", "event": "FLIP", "payload": payload}),
    );
    assert!(applied["to_state"].is_string(), "{applied}");

    // Every node applied the create (its own state's offset for it).
    let id = created["instance_id"]
        .as_str()
        .expect("instance_id")
        .to_owned();
    let offset = created["wal_offset"].as_u64().expect("wal_offset");
    for node in cluster.nodes.keys().copied().collect::<Vec<_>>() {
        cluster.wait_applied(node, &id, offset);
    }
    // The context read back through the follower is the one sent. The
    // answer nests deeper than serde_json parses, so it is read as text.
    let mut raw = cluster.raw(follower);
    raw.send_json(&request("get", "GET_INSTANCE", json!({"instance_id": id})));
    let frame = raw.read_frame().expect("an answer");
    let text = String::from_utf8_lossy(&frame.payload);
    assert!(
        text.contains("\"status\":\"ok\"") && text.contains(&ctx.to_string()),
        "{}",
        &text[..text.len().min(300)]
    );
}

/// A machine whose `meta` is as deep as a client may send it (the
/// definition inside `params` inside the request), installed through a
/// follower and read through it: a node that does not lead shard 0 learns
/// the machines from its leader, all of them in one answer, so one such
/// machine once made GET_MACHINE and LIST_MACHINES fail there ("outcome
/// unknown", at every retry) for every machine.
#[test]
fn a_machine_with_the_deepest_meta_is_read_through_a_follower() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader();
    let follower = *cluster.nodes.keys().find(|&&n| n != leader).unwrap();
    let meta = nested_object(PARAM_VALUE_DEPTH_MAX - 1);
    let mut definition = flip_definition();
    definition["meta"] = meta.clone();
    let put = json!({"machine": "deep", "version": 1, "definition": definition});
    ok_forwarded(&mut cluster, follower, "PUT_MACHINE", |_| put.clone());

    // Answers nest deeper than serde_json parses: read as text.
    let meta_text = meta.to_string();
    let params = json!({"machine": "deep", "version": 1});
    let got = text_forwarded(&mut cluster, follower, "GET_MACHINE", |_| params.clone());
    assert!(got.contains(&meta_text), "{got}");
    let listed = text_forwarded(&mut cluster, follower, "LIST_MACHINES", |_| json!({}));
    assert!(listed.contains("\"deep\""), "{listed}");
}
