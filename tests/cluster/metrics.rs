//! What a node of a cluster reports about its groups: the metrics endpoint's
//! `corestate_group_*` series (role, leader, term, elections, log indexes,
//! each follower's lag on the leader, the time a turn takes to commit,
//! forwarding), and the WAL counters of WAL_STATS and the metrics — which
//! are the group log's, the member's real WAL, on leader and followers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{Cluster, CLUSTER_SETTLE_TIMEOUT};
use crate::support::{http_get, parse_exposition};

/// Writes before the first look.
const FLIPS: usize = 12;

fn scrape(cluster: &Cluster, node: u64) -> HashMap<String, f64> {
    let (status, _, body) = http_get(cluster.metrics[&node], "/metrics").expect("scrape");
    assert_eq!(status, "HTTP/1.1 200 OK", "node {node}");
    parse_exposition(&body)
}

fn sample(samples: &HashMap<String, f64>, key: &str) -> f64 {
    *samples
        .get(key)
        .unwrap_or_else(|| panic!("no sample {key}"))
}

/// The samples say whether this node leads shard 0's group, and who does.
fn assert_roles(samples: &HashMap<String, f64>, leads: bool, leader: u64) {
    let is_leader = sample(samples, r#"corestate_group_is_leader{shard="0"}"#);
    assert_eq!(is_leader, f64::from(u8::from(leads)));
    let named = sample(samples, r#"corestate_group_leader{shard="0"}"#);
    assert_eq!(named, leader as f64);
}

/// Scrape `node` until `ready` holds of its samples (a follower applies
/// what the leader committed a moment later).
fn scrape_until(
    cluster: &Cluster,
    node: u64,
    ready: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let started = Instant::now();
    loop {
        let samples = scrape(cluster, node);
        if ready(&samples) || started.elapsed() > CLUSTER_SETTLE_TIMEOUT {
            return samples;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn every_node_reports_its_group_and_its_group_logs_io() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader();
    let followers = cluster.others(leader);
    cluster.flip_instances(leader, &["m-0"]);
    for i in 0..FLIPS {
        let flip = json!({"instance_id": "m-0", "event": "FLIP",
                          "idempotency_key": format!("flip-{i}")});
        cluster.ok_on(followers[i % 2], "APPLY_EVENT", flip);
    }

    let on_leader = scrape(&cluster, leader);
    let commit = sample(&on_leader, r#"corestate_group_commit_index{shard="0"}"#);
    assert_roles(&on_leader, true, leader);
    assert!(sample(&on_leader, r#"corestate_group_term{shard="0"}"#) >= 1.0);
    assert!(sample(&on_leader, r#"corestate_group_elections_total{shard="0"}"#) >= 1.0);
    assert!(
        commit >= FLIPS as f64,
        "{FLIPS} writes, commit index {commit}"
    );
    for f in &followers {
        let lag = format!(r#"corestate_group_follower_lag_entries{{shard="0",follower="{f}"}}"#);
        assert!(on_leader.contains_key(&lag), "no {lag}");
    }
    // Every write was a turn of the leader's, committed on a majority.
    let turns = r#"corestate_group_turn_commit_latency_seconds_count{shard="0"}"#;
    assert!(sample(&on_leader, turns) >= FLIPS as f64);
    let sum = r#"corestate_group_turn_commit_latency_seconds_sum{shard="0"}"#;
    assert!(sample(&on_leader, sum) > 0.0);

    for &f in &followers {
        let seen = scrape_until(&cluster, f, |s| {
            s.get(r#"corestate_group_applied_index{shard="0"}"#)
                .is_some_and(|&a| a >= commit)
        });
        assert_roles(&seen, false, leader);
        assert!(sample(&seen, r#"corestate_group_applied_index{shard="0"}"#) >= commit);
        // Half the writes came through each follower.
        let forwarded = sample(&seen, r#"corestate_group_forwarded_ops_total{shard="0"}"#);
        assert!(forwarded >= (FLIPS / 2) as f64, "node {f}: {forwarded}");
    }

    // The WAL every member reports is its group log: synced under the
    // default policy, on segment files that hold the records.
    let nodes: Vec<u64> = cluster.nodes.keys().copied().collect();
    for node in nodes {
        let seen = scrape(&cluster, node);
        assert!(
            sample(&seen, "rstmdb_wal_fsyncs_total") >= 1.0,
            "node {node}"
        );
        assert!(sample(&seen, "rstmdb_wal_segments") >= 1.0, "node {node}");
        assert!(sample(&seen, "rstmdb_wal_size_bytes") > 0.0, "node {node}");
        let appended = r#"corestate_shard_wal_records_appended_total{shard="0"}"#;
        assert!(sample(&seen, appended) >= FLIPS as f64, "node {node}");
        let stats = cluster.ok_on(node, "WAL_STATS", json!({}));
        assert!(stats["io_stats"]["fsyncs"].as_u64() >= Some(1), "{stats}");
        assert!(stats["segment_count"].as_u64() >= Some(1), "{stats}");
        assert!(stats["records"].as_u64() >= Some(FLIPS as u64), "{stats}");
        // Its reads by offset are reads of that log, and it can be read
        // from its oldest offset on.
        let oldest = stats["oldest_offset"].as_u64().expect("an oldest offset");
        let reads = stats["io_stats"]["reads"].as_u64().unwrap();
        let page = cluster.ok_on(
            node,
            "WAL_READ",
            json!({"from_offset": oldest, "limit": 1000}),
        );
        let records = page["records"].as_array().unwrap();
        assert_eq!(records[0]["offset"].as_u64(), Some(oldest), "{page}");
        assert!(records.len() > FLIPS, "{page}");
        let after = cluster.ok_on(node, "WAL_STATS", json!({}));
        assert!(after["io_stats"]["reads"].as_u64() > Some(reads), "{after}");
        assert!(
            after["io_stats"]["bytes_read"].as_u64() > stats["io_stats"]["bytes_read"].as_u64(),
            "{after}"
        );
    }

    // The leader goes: a survivor leads, and counts the election.
    let before = sample(
        &scrape(&cluster, followers[0]),
        r#"corestate_group_elections_total{shard="0"}"#,
    );
    cluster.nodes.get_mut(&leader).unwrap().sigkill();
    cluster.nodes.remove(&leader);
    let next = cluster.leader();
    let after = scrape(&cluster, next);
    assert_eq!(
        sample(&after, r#"corestate_group_is_leader{shard="0"}"#),
        1.0
    );
    assert!(sample(&after, r#"corestate_group_elections_total{shard="0"}"#) > before);
}
