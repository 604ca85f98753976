//! Membership at run time: a node started with `join: true` is added by
//! CLUSTER_ADD_NODE sent to any node (a follower forwards it to the
//! leader), catches up on what was written before, and serves; a node is
//! removed by CLUSTER_REMOVE_NODE — the leader itself here — and the
//! others go on without it. Two shards per node: each change runs in both
//! groups (their leaders may be on different nodes). Bad requests and a
//! standalone node get BAD_REQUEST.

use serde_json::{json, Value};

use crate::harness::Cluster;
use crate::support::Server;

/// Shards per node in the joining test.
const SHARDS: usize = 2;

/// The voters every shard's group reports in `answer` (they must agree).
fn voters(answer: &Value) -> Vec<u64> {
    let of = |shard: usize| -> Vec<u64> {
        answer["shards"][shard]["voters"]
            .as_array()
            .unwrap_or_else(|| panic!("voters of shard {shard} in {answer}"))
            .iter()
            .map(|v| v.as_u64().expect("a node id"))
            .collect()
    };
    let first = of(0);
    for shard in 1..SHARDS {
        assert_eq!(of(shard), first, "shard {shard} in {answer}");
    }
    first
}

fn flip(cluster: &mut Cluster, node: u64, key: &str) -> Value {
    cluster.ok_on(
        node,
        "APPLY_EVENT",
        json!({"instance_id": "m-0", "event": "FLIP", "idempotency_key": key}),
    )
}

#[test]
fn a_node_joins_and_a_node_leaves_while_the_cluster_serves() {
    let mut cluster = Cluster::start_sharded(3, SHARDS);
    let leader = cluster.leader();
    cluster.flip_instances(leader, &["m-0"]);
    flip(&mut cluster, leader, "before-join");

    let port = cluster.start_joiner(4);
    // Not a member yet: it knows no leader and serves nothing.
    let early = cluster
        .raw(4)
        .call("GET_INSTANCE", json!({"instance_id": "m-0"}));
    assert_eq!(early["status"], "error", "{early}");
    assert_eq!(early["error"]["retryable"], true, "{early}");

    let follower = *cluster
        .nodes
        .keys()
        .find(|&&n| n != leader && n != 4)
        .unwrap();
    let added = cluster.ok_on(
        follower,
        "CLUSTER_ADD_NODE",
        json!({"node_id": 4, "peer": format!("127.0.0.1:{port}")}),
    );
    assert_eq!(voters(&added), vec![1, 2, 3, 4], "{added}");
    assert_eq!(added["node_id"], 4, "{added}");
    // Caught up: what was written before it joined, through its own log.
    let got = cluster.ok_on(4, "GET_INSTANCE", json!({"instance_id": "m-0"}));
    assert_eq!(got["state"], "b", "{got}");
    assert_eq!(cluster.transitions(4), cluster.transitions(leader));
    flip(&mut cluster, 4, "through-the-new-node");
    // Adding it again changes nothing.
    let again = cluster.ok_on(
        leader,
        "CLUSTER_ADD_NODE",
        json!({"node_id": 4, "peer": format!("127.0.0.1:{port}")}),
    );
    assert_eq!(voters(&again), vec![1, 2, 3, 4], "{again}");

    // The leader removes itself; the rest elect a leader among them.
    let removed = cluster.ok_on(leader, "CLUSTER_REMOVE_NODE", json!({"node_id": leader}));
    let rest: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|&n| n != leader).collect();
    assert_eq!(voters(&removed), rest, "{removed}");
    cluster.nodes.get_mut(&leader).unwrap().sigkill();
    cluster.nodes.remove(&leader);
    let next = cluster.leader();
    assert_ne!(next, leader);
    // Removing it again changes nothing.
    let again = cluster.ok_on(next, "CLUSTER_REMOVE_NODE", json!({"node_id": leader}));
    assert_eq!(voters(&again), rest, "{again}");
    let status = cluster.ok_on(next, "REPLICATION_STATUS", json!({}));
    assert_eq!(voters(&status), rest, "the groups without the removed node");
    // Three voters left: one more may go down and writes still commit.
    let down = *rest.iter().find(|&&n| n != next).unwrap();
    cluster.nodes.get_mut(&down).unwrap().sigkill();
    let flipped = flip(&mut cluster, next, "after-removal");
    assert_eq!(flipped["to_state"], "b", "{flipped}");
}

#[test]
fn membership_requests_are_checked() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader();
    let mut raw = cluster.raw(leader);
    for (op, params) in [
        (
            "CLUSTER_ADD_NODE",
            json!({"node_id": 0, "peer": "127.0.0.1:1"}),
        ),
        ("CLUSTER_ADD_NODE", json!({"node_id": 5, "peer": "no port"})),
        ("CLUSTER_ADD_NODE", json!({"node_id": "5"})),
        ("CLUSTER_REMOVE_NODE", json!({})),
        ("CLUSTER_REMOVE_NODE", json!([1])),
    ] {
        let answer = raw.call(op, params.clone());
        assert_eq!(
            answer["error"]["code"], "BAD_REQUEST",
            "{op} {params}: {answer}"
        );
    }
    // A node whose peer listener never answers cannot be added: the
    // change is refused in time, and the group keeps its voters.
    let nobody = crate::support::fresh_port();
    let answer = raw.call(
        "CLUSTER_ADD_NODE",
        json!({"node_id": 5, "peer": format!("127.0.0.1:{nobody}"), "catch_up_timeout_ms": 1500}),
    );
    assert_eq!(answer["error"]["code"], "BAD_REQUEST", "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("did not catch up"), "{answer}");
    let status = cluster.ok_on(leader, "REPLICATION_STATUS", json!({}));
    assert_eq!(status["shards"][0]["voters"], json!([1, 2, 3]), "{status}");

    let standalone = Server::start(&[]);
    let answer = standalone
        .raw()
        .call("CLUSTER_REMOVE_NODE", json!({"node_id": 2}));
    assert_eq!(answer["error"]["code"], "BAD_REQUEST", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not a cluster member"),
        "{answer}"
    );
}
