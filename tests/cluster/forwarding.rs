//! A follower forwards what needs the leader: a turn's operations travel
//! together, as one call, and keep their order. Pipelined flips of one
//! instance through a follower come back alternating (the order held),
//! and the follower's REPLICATION_STATUS shows fewer forwarded calls than
//! operations (they were batched).

use serde_json::json;

use crate::harness::Cluster;
use crate::support::raw_client::pipeline;

/// Flips pipelined on one connection: more than a peer connection's
/// calls in flight (`PEER_REQUESTS_IN_FLIGHT_MAX`, 64).
const FLIPS: usize = 300;

#[test]
fn pipelined_writes_through_a_follower_are_batched_and_keep_their_order() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader();
    cluster.flip_instances(leader, &["p-0"]);
    let follower = *cluster.nodes.keys().find(|&&n| n != leader).unwrap();

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
