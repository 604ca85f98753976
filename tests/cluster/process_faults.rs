//! Process faults besides SIGKILL: a leader frozen with SIGSTOP (a long GC
//! pause, a stalled VM) is replaced and, resumed, follows and catches up; a
//! follower killed in the middle of writing its log (a torn tail) recovers
//! the intact prefix, rejoins and ends with the leader's log.

use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{Cluster, CLUSTER_SETTLE_TIMEOUT, LEADER_POLL};
use crate::support::data_end;

/// Bytes of the torn record appended after the log's last record: a
/// record's magic and a header cut short, as a write interrupted by a crash
/// leaves it.
const TORN_RECORD: &[u8] = b"CSWL\x01\x02TORN-TAIL-PARTIAL";

fn flip(cluster: &mut Cluster, node: u64, id: &str, key: &str) -> Value {
    cluster.ok_on(
        node,
        "APPLY_EVENT",
        json!({"instance_id": id, "event": "FLIP", "idempotency_key": key}),
    )
}

fn setup(cluster: &mut Cluster) -> u64 {
    let leader = cluster.leader();
    cluster.flip_instances(leader, &["f-0", "f-1"]);
    flip(cluster, leader, "f-0", "before");
    leader
}

#[test]
fn a_frozen_leader_is_replaced_and_follows_when_resumed() {
    let mut cluster = Cluster::start(3);
    let first = setup(&mut cluster);
    let other = *cluster.nodes.keys().find(|&&n| n != first).unwrap();
    cluster.nodes[&first].signal(libc::SIGSTOP);
    let stopped = Instant::now();
    // The others elect a leader and take writes; the frozen one cannot
    // answer (a client of its would wait: its process is stopped).
    flip(&mut cluster, other, "f-1", "while-frozen");
    eprintln!(
        "SIGSTOP: the others served a write {:?} later",
        stopped.elapsed()
    );
    let started = Instant::now();
    let leader = loop {
        let status = cluster.ok_on(other, "REPLICATION_STATUS", json!({}));
        match status["shards"][0]["leader"].as_u64() {
            Some(l) if l != first => break l,
            _ => {}
        }
        assert!(started.elapsed() < CLUSTER_SETTLE_TIMEOUT, "{status}");
        thread::sleep(LEADER_POLL);
    };
    cluster.nodes[&first].signal(libc::SIGCONT);
    // Resumed, it learns of the new term, follows, and catches up.
    cluster.converges(first, leader);
    let status = cluster.ok_on(first, "REPLICATION_STATUS", json!({}));
    assert_eq!(status["shards"][0]["leader"], leader, "{status}");
    assert_eq!(status["shards"][0]["role"], "follower", "{status}");
    flip(&mut cluster, first, "f-1", "after-resume");
    cluster.converges(first, leader);
}

/// The last segment of `data`'s shard 0 Raft log.
fn last_log_segment(data: &Path) -> PathBuf {
    let dir = data.join("shard-000").join("raft").join("log");
    let mut segments: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segments.sort();
    segments.pop().expect("a log segment")
}

#[test]
fn a_follower_with_a_torn_log_tail_recovers_and_catches_up() {
    let mut cluster = Cluster::start(3);
    let leader = setup(&mut cluster);
    let follower = *cluster.nodes.keys().find(|&&n| n != leader).unwrap();
    cluster.converges(follower, leader);
    let server = cluster.nodes.get_mut(&follower).unwrap();
    server.sigkill();
    // A torn write after the last record it logged.
    let segment = last_log_segment(server.data_dir());
    let end = data_end(&fs::read(&segment).expect("read segment")) as u64;
    let mut file = OpenOptions::new()
        .write(true)
        .open(&segment)
        .expect("open segment");
    file.seek(SeekFrom::Start(end)).expect("seek");
    file.write_all(TORN_RECORD).expect("tear the tail");
    drop(file);
    // Writes it misses while down.
    flip(&mut cluster, leader, "f-1", "while-down");
    flip(&mut cluster, leader, "f-0", "while-down-2");
    let server = cluster.nodes.get_mut(&follower).unwrap();
    server.restart();
    cluster.converges(follower, leader);
    let stderr = cluster.nodes[&follower].stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("torn write at the end of its Raft log"),
        "the restart did not find the torn tail:\n{stderr}"
    );
}

/// How long a node may take to stop after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A node that restarts alone (no quorum, no leader to reach) still
/// starts, with the machines its log holds, and answers retryably until
/// the others are back; then it serves what was written before.
#[test]
fn a_node_restarted_without_a_quorum_starts_and_waits_for_one() {
    let mut cluster = Cluster::start(3);
    let leader = setup(&mut cluster);
    let nodes: Vec<u64> = cluster.nodes.keys().copied().collect();
    for id in &nodes {
        cluster.converges(*id, leader);
    }
    // Stopped gracefully (each saves how far its log is committed, so the
    // lone restart replays its machines before any leader is known).
    for id in &nodes {
        let node = cluster.nodes.get_mut(id).unwrap();
        node.signal(libc::SIGTERM);
        node.wait_exit(STOP_TIMEOUT);
    }
    let alone = nodes[0];
    cluster.nodes.get_mut(&alone).unwrap().restart();
    let answer = cluster
        .raw(alone)
        .call("GET_INSTANCE", json!({"instance_id": "f-0"}));
    assert_eq!(answer["status"], "error", "no quorum, yet: {answer}");
    assert_eq!(answer["error"]["retryable"], true, "{answer}");
    for id in &nodes[1..] {
        cluster.nodes.get_mut(id).unwrap().restart();
    }
    let got = cluster.ok_on(alone, "GET_INSTANCE", json!({"instance_id": "f-0"}));
    assert_eq!(got["state"], "b", "{got}");
}
