//! CLUSTER_RESOLVE_BATCH: an operator settles a cross-shard batch part left
//! in doubt. Here the part is orphaned for real (its coordinator's node is
//! SIGKILLed between the phases) and the cluster is told to wait an hour
//! before it aborts such a part itself, so only the operator can free it.
//! The operator can abort it — on any node, the decider first — but not
//! commit it: no one saw every part's vote. Which batches are in doubt is
//! in REPLICATION_STATUS (`batches_in_doubt`).

use std::time::Instant;

use serde_json::{json, Value};

use crate::batch::{orphan_one, state_on, Orphan};
use crate::harness::{Cluster, CLUSTER_SETTLE_TIMEOUT, LEADER_POLL};
use crate::support::Server;

/// Settings: a part in doubt waits the longest the config allows before
/// its decider aborts it; slow elections keep the frozen leader's lead.
const SETTINGS: &str = "    in_doubt_resolve_after_ms: 3600000\n    election_timeout_ms: 1000\n";

/// The parts of batches in doubt node `node` lists for shard `shard`.
fn listed_in_doubt(cluster: &Cluster, node: u64, shard: usize) -> Vec<Value> {
    let status = cluster.raw(node).ok("REPLICATION_STATUS", json!({}));
    let shard = &status["shards"][shard];
    let listed = shard["batches_in_doubt"]
        .as_array()
        .unwrap_or_else(|| panic!("no batches_in_doubt: {status}"))
        .clone();
    assert_eq!(
        shard["batch_parts_in_doubt"].as_u64(),
        Some(listed.len() as u64),
        "{status}"
    );
    listed
}

/// Waits until node `node` lists a part in doubt on shard 0; its entry.
fn wait_listed(cluster: &Cluster, node: u64) -> Value {
    let started = Instant::now();
    loop {
        if let Some(part) = listed_in_doubt(cluster, node, 0).into_iter().next() {
            return part;
        }
        assert!(
            started.elapsed() < CLUSTER_SETTLE_TIMEOUT,
            "node {node} never listed the orphaned part"
        );
        std::thread::sleep(LEADER_POLL);
    }
}

fn ruling(txid: &Value, outcome: &str) -> Value {
    json!({"txid": txid, "outcome": outcome})
}

#[test]
fn an_operator_aborts_a_batch_left_in_doubt_but_cannot_commit_it() {
    let mut cluster = Cluster::start_full(3, false, SETTINGS, 2);
    let first = cluster.leader();
    cluster.flip_instances(first, &[]);
    let Orphan {
        coordinator, a, b, ..
    } = orphan_one(&mut cluster, "ruled");
    let (a, b) = (&a, &b);
    // The decider's own part (shard 0) is prepared and nothing decided
    // it; it is listed on the live nodes.
    let live = *cluster.nodes.keys().find(|&&n| n != coordinator).unwrap();
    let part = wait_listed(&cluster, live);
    assert_eq!(part["decider"], 0, "{part}");
    let txid = part["txid"].clone();
    assert!(
        txid.as_str().is_some_and(|t| t.parse::<u64>().is_ok()),
        "{part}"
    );

    // A commit is refused: the part stays in doubt, nothing is applied.
    // (Until shard 0's group has a leader again — it was on the killed
    // node — its decider cannot answer, and the ruling says so.)
    let started = Instant::now();
    let refused = loop {
        let answer = cluster
            .raw(live)
            .call("CLUSTER_RESOLVE_BATCH", ruling(&txid, "commit"));
        assert_eq!(answer["error"]["code"], "CONFLICT", "{answer}");
        if answer["error"]["details"]["parts"][0]["decider_said"] != "no answer" {
            break answer;
        }
        assert!(started.elapsed() < CLUSTER_SETTLE_TIMEOUT, "{answer}");
        std::thread::sleep(LEADER_POLL);
    };
    let parts = &refused["error"]["details"]["parts"];
    assert_eq!(parts[0]["shard"], 0, "{refused}");
    assert_eq!(parts[0]["decider_said"], "undecided", "{refused}");
    assert!(
        parts[0]["still_in_doubt"]
            .as_str()
            .is_some_and(|why| why.contains("not committed")),
        "{refused}"
    );
    assert_eq!(listed_in_doubt(&cluster, live, 0).len(), 1);

    // The whole cluster again; the abort through any node settles every
    // part (the one on shard 1, if its frozen leader prepared it after
    // all, follows the decider's abort).
    cluster.nodes.get_mut(&coordinator).unwrap().restart();
    let via = cluster.leader_of_shard(1);
    let settled = cluster.ok_on(via, "CLUSTER_RESOLVE_BATCH", ruling(&txid, "abort"));
    assert_eq!(settled["txid"], txid, "{settled}");
    let parts = settled["parts"].as_array().expect("parts");
    assert!(!parts.is_empty(), "{settled}");
    for p in parts {
        assert_eq!(p["decided"], "abort", "{settled}");
    }
    let decider_part = parts.iter().find(|p| p["shard"] == 0).expect("shard 0");
    assert_eq!(decider_part["by"], "operator", "{settled}");

    // Whole or absent: absent, on every node; its instances are free.
    let nodes: Vec<u64> = cluster.nodes.keys().copied().collect();
    for &node in &nodes {
        assert_eq!(state_on(&mut cluster, node, a), None, "{a} on {node}");
        assert_eq!(state_on(&mut cluster, node, b), None, "{b} on {node}");
    }
    for id in [a, b] {
        cluster.ok_anywhere(
            "CREATE_INSTANCE",
            json!({"machine": "flip", "version": 1, "instance_id": id}),
        );
    }
    let started = Instant::now();
    while nodes
        .iter()
        .any(|&n| (0..2).any(|s| !listed_in_doubt(&cluster, n, s).is_empty()))
    {
        assert!(started.elapsed() < CLUSTER_SETTLE_TIMEOUT, "still listed");
        std::thread::sleep(LEADER_POLL);
    }
    // Ruling again finds nothing in doubt: safe to repeat.
    let again = cluster.ok_on(via, "CLUSTER_RESOLVE_BATCH", ruling(&txid, "commit"));
    assert_eq!(again["parts"], json!([]), "{again}");
    cluster.all_converge();
}

#[test]
fn a_ruling_with_bad_params_or_on_a_standalone_node_is_refused() {
    let server = Server::start(&[]);
    let mut conn = server.raw();
    for bad in [
        json!({"txid": "12", "outcome": "maybe"}),
        json!({"txid": "x12", "outcome": "abort"}),
        json!({"txid": -1, "outcome": "abort"}),
        json!({"txid": true, "outcome": "abort"}),
        json!({"outcome": "abort"}),
        json!({"txid": 12}),
        json!(null),
    ] {
        let answer = conn.call("CLUSTER_RESOLVE_BATCH", bad.clone());
        assert_eq!(answer["error"]["code"], "BAD_REQUEST", "{bad}: {answer}");
    }
    let answer = conn.call(
        "CLUSTER_RESOLVE_BATCH",
        json!({"txid": "12", "outcome": "abort"}),
    );
    assert_eq!(answer["error"]["code"], "BAD_REQUEST", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not a cluster member")),
        "{answer}"
    );
    // The connection serves on.
    conn.ok("PING", json!({}));
}
