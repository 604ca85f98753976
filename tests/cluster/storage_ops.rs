//! Storage operations on a cluster. COMPACT on a node: each of its group
//! members builds a snapshot of what it applied (a follower's as well as
//! the leader's), the log behind it is purged in the background, and a
//! member restarted after it comes back from the snapshot with every
//! write. FLUSH_ALL through any node: a Flush record in the group's log,
//! so every member forgets everything — a new leader too. SNAPSHOT_INSTANCE
//! on any node, of the instance as that node applied it; on the leader
//! right behind a write on the same connection (the snapshot then waits
//! for the write's turn to commit). A member that was down while the log
//! it missed was purged behind a snapshot catches up by installing the
//! leader's snapshot.

use std::thread;
use std::time::Duration;

use serde_json::json;

use crate::harness::{flips_one_at_a_time, Cluster};
use crate::support::request;

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
    cluster.converges(follower, leader);
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

#[test]
fn snapshot_instance_on_any_node_holds_what_that_node_applied() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader();
    cluster.flip_instances(leader, &["s-0"]);
    let flip = json!({"instance_id": "s-0", "event": "FLIP", "idempotency_key": "one"});
    let flipped = cluster.ok_on(leader, "APPLY_EVENT", flip);
    let offset = flipped["wal_offset"].as_u64().expect("an offset");
    let follower = *cluster.nodes.keys().find(|&&n| n != leader).unwrap();
    cluster.converges(follower, leader);
    for node in [follower, leader] {
        let snap = cluster.ok_on(node, "SNAPSHOT_INSTANCE", json!({"instance_id": "s-0"}));
        assert_eq!(snap["wal_offset"], offset, "node {node}: {snap}");
        assert!(snap["snapshot_id"].is_string(), "{snap}");
    }
    // A write and a snapshot sent back to back: both answered, the
    // snapshot of the state after the write.
    let mut conn = cluster.raw(leader);
    let flip = json!({"instance_id": "s-0", "event": "FLIP", "idempotency_key": "two"});
    conn.send_json(&request("w", "APPLY_EVENT", flip));
    conn.send_json(&request(
        "s",
        "SNAPSHOT_INSTANCE",
        json!({"instance_id": "s-0"}),
    ));
    let mut answers = std::collections::BTreeMap::new();
    while answers.len() < 2 {
        let frame: serde_json::Value = conn.read_frame().expect("an answer").json();
        answers.insert(frame["id"].as_str().unwrap_or_default().to_string(), frame);
    }
    let written = answers["w"]["result"]["wal_offset"]
        .as_u64()
        .expect("written");
    assert_eq!(answers["s"]["result"]["wal_offset"], written, "{answers:?}");
}

/// Flips while a follower is down: more than a snapshot interval (100,
/// the least `snapshot_every_entries` may be) plus the log a member keeps
/// behind its snapshot (`log_kept_behind_snapshot_entries`, set to 100).
const FLIPS_WHILE_DOWN: usize = 400;
/// How long the follower then stays down.
const WAIT_WHILE_DOWN: Duration = Duration::from_secs(3);

#[test]
fn a_member_back_after_the_log_it_missed_was_purged_installs_the_leaders_snapshot() {
    let mut cluster = Cluster::start_with(
        3,
        false,
        "    snapshot_every_entries: 100\n    log_kept_behind_snapshot_entries: 100\n",
    );
    let leader = cluster.leader();
    cluster.flip_instances(leader, &["i-0"]);
    let follower = *cluster.nodes.keys().find(|&&n| n != leader).unwrap();
    cluster.nodes.get_mut(&follower).unwrap().sigkill();
    let mut conn = cluster.raw(leader);
    let offsets = flips_one_at_a_time(&mut conn, "i-0", FLIPS_WHILE_DOWN);
    // While the follower stays down, the leader's transfer waits for its
    // link: openraft (which names each try in its log) would otherwise
    // read the snapshot again and try anew about once a second.
    let tries = || {
        cluster.nodes[&leader]
            .stderr()
            .matches("snapshot sending")
            .count()
    };
    let before = tries();
    thread::sleep(WAIT_WHILE_DOWN);
    let during = tries() - before;
    assert!(
        during <= 1,
        "{during} snapshot transfers begun in {WAIT_WHILE_DOWN:?}"
    );
    cluster.nodes.get_mut(&follower).unwrap().restart();
    // What the follower itself applied reaches the last flip.
    cluster.wait_applied(follower, "i-0", *offsets.last().unwrap());
    // openraft names the install in its log.
    let log = cluster.nodes[&follower].stderr();
    assert!(
        log.contains("install_full_snapshot"),
        "the follower caught up without a snapshot"
    );
}

/// Instances created, one entry each, before the flips: each with a
/// context of `PAD_BYTES`, so that the state's snapshot is far larger than
/// the log of the flips that follow.
const PADDED_BEFORE_FLIPS: usize = 800;
/// Flips (one entry each): three times the entries between snapshots.
const FLIPS_PAST_ENTRY_COUNT: usize = 300;
/// Padded instances created after the flips: a log larger than the state.
const PADDED_AFTER_FLIPS: usize = 1_200;
const PAD_BYTES: usize = 1_000;

/// Create `n` instances `{prefix}-{i}` of `flip`, each with a context of
/// `PAD_BYTES`, one at a time (each its own entry). Each create carries an
/// idempotency key, so one caught in a leader change (the groups' leader
/// balancing) is simply sent again.
fn create_padded(cluster: &Cluster, via: u64, prefix: &str, n: usize) {
    let pad = "p".repeat(PAD_BYTES);
    let mut conn = cluster.raw(via);
    for i in 0..n {
        let id = format!("{prefix}-{i}");
        let create = json!({"machine": "flip", "version": 1, "instance_id": id,
                            "idempotency_key": id, "initial_ctx": {"pad": pad}});
        let started = std::time::Instant::now();
        loop {
            let r = conn.call("CREATE_INSTANCE", create.clone());
            if r["error"]["retryable"] == true
                && started.elapsed() < crate::harness::CLUSTER_SETTLE_TIMEOUT
            {
                std::thread::sleep(crate::harness::LEADER_POLL);
                continue;
            }
            assert_eq!(r["status"], "ok", "create {id}: {r}");
            break;
        }
    }
}

/// The commit index of shard 0's group as node `node` knows it.
fn commit_index(cluster: &Cluster, node: u64) -> u64 {
    let status = cluster.raw(node).ok("REPLICATION_STATUS", json!({}));
    status["shards"][0]["commit_index"]
        .as_u64()
        .expect("a commit index")
}

/// The log indexes of the group snapshots node `node` took.
fn snapshots_taken(cluster: &Cluster, node: u64) -> Vec<u64> {
    cluster.nodes[&node]
        .stderr()
        .lines()
        .filter_map(|line| {
            let rest = line.split("group snapshot at index ").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// A member snapshots after `snapshot_every_entries` entries only once the
/// log since its last snapshot is as large as that snapshot
/// (`snapshot_log_growth_percent`, 100 by default): a large state is not
/// written again for every few entries of small writes, and it is once
/// the log has grown as large as the state.
#[test]
fn a_large_state_is_snapshotted_again_only_once_the_log_since_matches_it() {
    let mut cluster = Cluster::start_with(3, false, "    snapshot_every_entries: 100\n");
    let leader = cluster.leader();
    cluster.flip_instances(leader, &["s-0"]);
    create_padded(&cluster, leader, "before", PADDED_BEFORE_FLIPS);
    let flips_from = commit_index(&cluster, leader);
    let mut conn = cluster.raw(leader);
    flips_one_at_a_time(&mut conn, "s-0", FLIPS_PAST_ENTRY_COUNT);
    let flips_to = commit_index(&cluster, leader);
    cluster.all_converge();
    let nodes: Vec<u64> = cluster.nodes.keys().copied().collect();
    for &node in &nodes {
        let taken = snapshots_taken(&cluster, node);
        assert!(!taken.is_empty(), "node {node} took no snapshot");
        // One snapshot due from the creates may land among the flips;
        // counted in entries alone, there would be three.
        let among_flips = taken
            .iter()
            .filter(|&&i| i > flips_from && i <= flips_to)
            .count();
        assert!(
            among_flips <= 1,
            "node {node}: snapshots at {taken:?}, flips at {flips_from}..={flips_to}"
        );
    }
    create_padded(&cluster, leader, "after", PADDED_AFTER_FLIPS);
    for &node in &nodes {
        let started = std::time::Instant::now();
        while !snapshots_taken(&cluster, node)
            .iter()
            .any(|&i| i > flips_to)
        {
            assert!(
                started.elapsed() < crate::harness::CLUSTER_SETTLE_TIMEOUT,
                "node {node} never snapshotted the grown log: {:?}",
                snapshots_taken(&cluster, node)
            );
            std::thread::sleep(crate::harness::LEADER_POLL);
        }
    }
}
