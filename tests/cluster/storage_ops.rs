//! Storage operations on a cluster. COMPACT on a node: each of its group
//! members builds a snapshot of what it applied (a follower's as well as
//! the leader's), the log behind it is purged in the background, and a
//! member restarted after it comes back from the snapshot with every
//! write. FLUSH_ALL through any node: a Flush record in the group's log,
//! so every member forgets everything — a new leader too.

use serde_json::json;

use crate::harness::{Cluster, CLUSTER_SETTLE_TIMEOUT, LEADER_POLL};

/// Writes before the snapshots.
const FLIPS: usize = 20;

#[test]
fn compact_snapshots_each_member_and_a_restart_comes_back_from_it() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader();
    cluster.flip_instances(leader, &["c-0"]);
    for i in 0..FLIPS {
        let flip = json!({"instance_id": "c-0", "event": "FLIP",
                          "idempotency_key": format!("flip-{i}")});
        cluster.ok_on(leader, "APPLY_EVENT", flip);
    }
    let follower = *cluster.nodes.keys().find(|&&n| n != leader).unwrap();
    // The follower may still be applying the last writes: a read through
    // it is forwarded to the leader, so wait on its own log instead.
    let expected = cluster.transitions(leader);
    let started = std::time::Instant::now();
    while cluster.transitions(follower) != expected {
        assert!(
            started.elapsed() < CLUSTER_SETTLE_TIMEOUT,
            "node {follower} lags"
        );
        std::thread::sleep(LEADER_POLL);
    }
    for node in [follower, leader] {
        let first = cluster.ok_on(node, "COMPACT", json!({}));
        assert_eq!(first["snapshots_created"], 1, "node {node}: {first}");
        let again = cluster.ok_on(node, "COMPACT", json!({}));
        assert_eq!(again["snapshots_created"], 0, "node {node}: {again}");
    }
    let server = cluster.nodes.get_mut(&follower).unwrap();
    server.restart();
    let got = cluster.ok_on(follower, "GET_INSTANCE", json!({"instance_id": "c-0"}));
    assert_eq!(got["state"], "a", "{FLIPS} flips: {got}");
    let flip = json!({"instance_id": "c-0", "event": "FLIP", "idempotency_key": "after"});
    let r = cluster.ok_on(follower, "APPLY_EVENT", flip);
    assert_eq!(r["to_state"], "b", "{r}");
}

#[test]
fn flush_all_through_a_follower_empties_every_member() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader();
    cluster.flip_instances(leader, &["f-0", "f-1"]);
    let follower = *cluster.nodes.keys().find(|&&n| n != leader).unwrap();
    let flushed = cluster.ok_on(follower, "FLUSH_ALL", json!({}));
    assert_eq!(flushed["instances_removed"], 2, "{flushed}");
    // The old leader goes; a member that replayed the Flush leads.
    cluster.nodes.get_mut(&leader).unwrap().sigkill();
    cluster.nodes.remove(&leader);
    let next = cluster.leader();
    let got = cluster
        .raw(next)
        .call("GET_INSTANCE", json!({"instance_id": "f-0"}));
    assert_eq!(got["error"]["code"], "INSTANCE_NOT_FOUND", "{got}");
    let machines = cluster.ok_on(next, "LIST_MACHINES", json!({}));
    assert_eq!(machines["items"], json!([]), "{machines}");
}
