//! Atomic batches on a cluster: a batch whose ops are on one shard is one
//! entry of that shard's group — all or nothing on every node, through a
//! follower (forwarded to the leader) and through the leader's SIGKILL.
//! A batch across shards is refused with a clear error (not built yet).

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{Cluster, NOT_LEADER_CODE};
use crate::support::{ids_on_shard, request};

/// Kill rounds: each kills the leader with a batch just sent.
const KILL_ROUNDS: usize = 3;

fn op(name: &str, params: Value) -> Value {
    json!({"op": name, "params": params})
}

fn create_and_flip(id: &str) -> Vec<Value> {
    vec![
        op(
            "CREATE_INSTANCE",
            json!({"machine": "flip", "version": 1, "instance_id": id}),
        ),
        op("APPLY_EVENT", json!({"instance_id": id, "event": "FLIP"})),
    ]
}

/// `id`'s state as node `node` reports it (`None`: no such instance).
fn state_on(cluster: &mut Cluster, node: u64, id: &str) -> Option<String> {
    let started = std::time::Instant::now();
    loop {
        let r = cluster
            .raw(node)
            .call("GET_INSTANCE", json!({"instance_id": id}));
        if r["status"] == "ok" {
            return r["result"]["state"].as_str().map(str::to_string);
        }
        if r["error"]["code"] == "INSTANCE_NOT_FOUND" {
            return None;
        }
        assert!(
            r["error"]["code"] == NOT_LEADER_CODE
                && started.elapsed() < crate::harness::CLUSTER_SETTLE_TIMEOUT,
            "GET {id} on node {node}: {r}"
        );
        std::thread::sleep(crate::harness::LEADER_POLL);
    }
}

#[test]
fn single_shard_atomic_batches_are_all_or_nothing_on_every_node() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader();
    cluster.flip_instances(leader, &[]);
    let follower = *cluster.nodes.keys().find(|&&n| n != leader).unwrap();
    let nodes: Vec<u64> = cluster.nodes.keys().copied().collect();

    // Through a follower: forwarded to the leader as one part.
    let mut ops = create_and_flip("b-0");
    ops.push(op("GET_INSTANCE", json!({"instance_id": "b-0"})));
    let r = cluster.ok_on(follower, "BATCH", json!({"mode": "atomic", "ops": ops}));
    let results = r["results"].as_array().expect("results");
    assert_eq!(results.len(), 3, "{r}");
    assert_eq!(results[1]["result"]["to_state"], "b", "{r}");
    assert_eq!(results[2]["result"]["state"], "b", "{r}");
    // A failing batch leaves nothing, anywhere.
    let mut failing = create_and_flip("b-1");
    failing.push(op(
        "APPLY_EVENT",
        json!({"instance_id": "b-1", "event": "NOPE"}),
    ));
    let e = cluster
        .raw(follower)
        .call("BATCH", json!({"mode": "atomic", "ops": failing}));
    assert_eq!(e["error"]["code"], "BAD_REQUEST", "{e}");
    assert_eq!(e["error"]["details"]["failed_op_index"], 2, "{e}");
    assert_eq!(e["error"]["details"]["applied"], false, "{e}");
    for &node in &nodes {
        assert_eq!(state_on(&mut cluster, node, "b-0").as_deref(), Some("b"));
        assert_eq!(state_on(&mut cluster, node, "b-1"), None, "node {node}");
    }

    // The leader killed with a batch in flight: the batch is whole or
    // absent on the survivors, never half.
    for round in 0..KILL_ROUNDS {
        let leader = cluster.leader();
        let id = format!("k-{round}");
        let mut conn = cluster.raw(leader);
        let params = json!({"mode": "atomic", "ops": create_and_flip(&id)});
        conn.send_json(&request("kill-batch", "BATCH", params));
        std::thread::sleep(Duration::from_millis(2));
        cluster.nodes.get_mut(&leader).unwrap().restart();
        let next = cluster.leader();
        let state = state_on(&mut cluster, next, &id);
        assert!(
            state.is_none() || state.as_deref() == Some("b"),
            "round {round}: half a batch survived: {id} is {state:?}"
        );
    }
}

#[test]
fn atomic_batches_across_shards_are_refused_on_a_cluster() {
    let mut cluster = Cluster::start_sharded(3, 2);
    let leader = cluster.leader();
    cluster.flip_instances(leader, &[]);
    let a = &ids_on_shard("x", 0, 1)[0];
    let b = &ids_on_shard("x", 1, 1)[0];
    let ops: Vec<Value> = create_and_flip(a)
        .into_iter()
        .chain(create_and_flip(b))
        .collect();
    let e = cluster
        .raw(leader)
        .call("BATCH", json!({"mode": "atomic", "ops": ops}));
    assert_eq!(e["error"]["code"], "BAD_REQUEST", "{e}");
    let message = e["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("across shards"), "{e}");
    for id in [a, b] {
        assert_eq!(state_on(&mut cluster, leader, id), None, "{id}");
    }
}
