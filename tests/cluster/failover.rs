//! Any node serves any request (a follower forwards to the leader), and
//! every acknowledged write survives the loss of the leader — SIGKILLed
//! twice, the second time right after the first comes back.

use std::time::Instant;

use serde_json::json;

use crate::harness::Cluster;
use crate::support::order_definition;

fn instance(i: usize) -> String {
    format!("order-{i}")
}

/// The state of `id` as node `node` reports it.
fn state_via(cluster: &mut Cluster, node: u64, id: &str) -> String {
    let got = cluster.ok_on(node, "GET_INSTANCE", json!({"instance_id": id}));
    got["state"].as_str().expect("a state").to_string()
}

#[test]
fn any_node_serves_and_acknowledged_writes_survive_the_leaders_loss() {
    let mut cluster = Cluster::start(3);
    let first = cluster.leader();
    let nodes: Vec<u64> = cluster.nodes.keys().copied().collect();
    let follower = *nodes.iter().find(|&&n| n != first).unwrap();
    // A machine put through a follower reaches every shard's leader.
    let put = cluster.ok_on(
        follower,
        "PUT_MACHINE",
        json!({"machine": "order", "version": 1, "definition": order_definition()}),
    );
    assert_eq!(put["created"], true, "{put}");
    // Writes through every node, reads through every other.
    for i in 0..9 {
        let node = nodes[i % nodes.len()];
        let params = json!({"machine": "order", "version": 1, "instance_id": instance(i),
                            "idempotency_key": format!("create-{i}")});
        cluster.ok_on(node, "CREATE_INSTANCE", params);
        if i % 2 == 0 {
            let params = json!({"instance_id": instance(i), "event": "PAY",
                                "idempotency_key": format!("pay-{i}")});
            cluster.ok_on(nodes[(i + 1) % nodes.len()], "APPLY_EVENT", params);
        }
    }
    for &node in &nodes {
        for i in 0..9 {
            let expected = if i % 2 == 0 { "paid" } else { "created" };
            assert_eq!(
                state_via(&mut cluster, node, &instance(i)),
                expected,
                "{i} via {node}"
            );
        }
        let listed = cluster.ok_on(node, "LIST_INSTANCES", json!({"machine": "order"}));
        assert_eq!(listed["total"], 9, "LIST via node {node}: {listed}");
        let machine = cluster.ok_on(
            node,
            "GET_MACHINE",
            json!({"machine": "order", "version": 1}),
        );
        assert_eq!(machine["definition"]["initial"], "created", "{machine}");
    }

    // REPLICATION_STATUS: the leader sees both followers; followers name it.
    let status = cluster.ok_on(first, "REPLICATION_STATUS", json!({}));
    assert_eq!(status["role"], "leader", "{status}");
    assert_eq!(status["node_id"], first, "{status}");
    assert_eq!(status["connected_replicas"], 2, "{status}");
    let status = cluster.ok_on(follower, "REPLICATION_STATUS", json!({}));
    assert_eq!(status["role"], "follower", "{status}");
    assert_eq!(status["shards"][0]["leader"], first, "{status}");

    // The leader dies; the others serve everything acknowledged.
    cluster.nodes.get_mut(&first).unwrap().sigkill();
    let killed = Instant::now();
    assert_eq!(state_via(&mut cluster, follower, &instance(0)), "paid");
    eprintln!(
        "failover: a read was served {:?} after SIGKILL",
        killed.elapsed()
    );
    let second = cluster.leader();
    assert_ne!(second, first);
    for i in (1..9).step_by(2) {
        let params = json!({"instance_id": instance(i), "event": "PAY",
                            "idempotency_key": format!("pay-{i}")});
        cluster.ok_anywhere("APPLY_EVENT", params);
    }
    // A machine put through the first leader is known to the second, and
    // the same definition put again is the existing version.
    let (_, put) = cluster.ok_anywhere(
        "PUT_MACHINE",
        json!({"machine": "order", "version": 1, "definition": order_definition()}),
    );
    assert_eq!(put["created"], false, "{put}");

    // The first leader comes back; the second dies at once: the third node
    // (or the first, once caught up) serves all of it, through any node.
    cluster.nodes.get_mut(&first).unwrap().restart();
    cluster.nodes.get_mut(&second).unwrap().sigkill();
    let live: Vec<u64> = nodes.iter().copied().filter(|&n| n != second).collect();
    for &node in &live {
        for i in 0..9 {
            assert_eq!(
                state_via(&mut cluster, node, &instance(i)),
                "paid",
                "{i} via {node}"
            );
        }
    }
    // A retried create with its key names the same instance, never a copy.
    let (_, again) = cluster.ok_anywhere(
        "CREATE_INSTANCE",
        json!({"machine": "order", "version": 1, "instance_id": instance(3),
               "idempotency_key": "create-3"}),
    );
    assert_eq!(again["instance_id"], instance(3), "{again}");
}

#[test]
fn with_no_quorum_a_node_answers_retryably_and_recovers() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader();
    cluster.ok_anywhere(
        "PUT_MACHINE",
        json!({"machine": "order", "version": 1, "definition": order_definition()}),
    );
    let others = cluster.others(leader);
    for &n in &others {
        cluster.nodes.get_mut(&n).unwrap().sigkill();
    }
    // Alone, the leader cannot commit: a retryable refusal, never a hang.
    let started = Instant::now();
    let error = cluster.raw(leader).err(
        "CREATE_INSTANCE",
        json!({"machine": "order", "version": 1, "instance_id": "alone",
               "idempotency_key": "alone"}),
    );
    assert_eq!(error["retryable"], true, "{error}");
    assert!(started.elapsed().as_secs() < 10, "{:?}", started.elapsed());
    for &n in &others {
        cluster.nodes.get_mut(&n).unwrap().restart();
    }
    let (_, created) = cluster.ok_anywhere(
        "CREATE_INSTANCE",
        json!({"machine": "order", "version": 1, "instance_id": "alone",
               "idempotency_key": "alone"}),
    );
    assert_eq!(created["instance_id"], "alone", "{created}");
}
