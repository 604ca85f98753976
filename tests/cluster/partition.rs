//! Partitions through the fault proxies on the peer links: a leader cut
//! off from the others loses its group (a new leader serves the majority
//! side within the failover goal), the cut-off node refuses retryably —
//! never a wrong answer — and, healed, catches up on what it missed. A
//! follower cut off and healed leaves the leader in place.

use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::fault_proxy::Mode;
use crate::harness::{Cluster, CLUSTER_SETTLE_TIMEOUT, LEADER_POLL};

#[test]
fn a_cut_off_leader_is_replaced_and_catches_up_when_healed() {
    let mut cluster = Cluster::start_proxied(3);
    let first = cluster.leader();
    cluster.flip_instances(first, &["p-0"]);
    let others = cluster.others(first);

    cluster.isolate(first, Mode::Blackhole);
    let cut = Instant::now();
    // The majority side elects a leader of its own and serves writes.
    let flip = json!({"instance_id": "p-0", "event": "FLIP", "idempotency_key": "flip-1"});
    let applied = cluster.ok_on(others[0], "APPLY_EVENT", flip);
    assert_eq!(applied["to_state"], "b", "{applied}");
    eprintln!(
        "partition: the majority side served a write {:?} after the cut",
        cut.elapsed()
    );
    // The cut-off node answers, but only with retryable refusals: it
    // cannot confirm a read, and any write of its would not commit.
    let answer = cluster
        .raw(first)
        .call("GET_INSTANCE", json!({"instance_id": "p-0"}));
    assert_eq!(
        answer["status"], "error",
        "a cut-off node answered a read: {answer}"
    );
    assert_eq!(answer["error"]["retryable"], true, "{answer}");
    // A write that fails on its old state is a read too: no CONFLICT
    // naming the state the majority has left behind.
    let stale = json!({"instance_id": "p-0", "event": "FLIP", "expected_state": "b"});
    let answer = cluster.raw(first).call("APPLY_EVENT", stale);
    assert_eq!(
        answer["error"]["retryable"], true,
        "a cut-off node answered a failing write from its old state: {answer}"
    );

    cluster.heal();
    // Healed, it learns the write it missed and serves it.
    let started = Instant::now();
    loop {
        let got = cluster
            .raw(first)
            .call("GET_INSTANCE", json!({"instance_id": "p-0"}));
        if got["status"] == "ok" {
            assert_eq!(got["result"]["state"], "b", "{got}");
            break;
        }
        assert!(
            started.elapsed() < CLUSTER_SETTLE_TIMEOUT,
            "the healed node never served the write it missed: {got}"
        );
        thread::sleep(LEADER_POLL);
    }
    // Its own log gets the write too (WAL_READ reads what this node
    // applied; the GET above may have been forwarded to the leader).
    loop {
        let transitions = cluster.transitions(first);
        if transitions.len() == 1 {
            break;
        }
        assert!(transitions.is_empty(), "{transitions:?}");
        assert!(
            started.elapsed() < CLUSTER_SETTLE_TIMEOUT,
            "the healed node never applied the write it missed"
        );
        thread::sleep(LEADER_POLL);
    }
}

/// How long a follower stays cut off: many election timeouts (150–300 ms
/// in these clusters), each of which, without Pre-Vote, made it start an
/// election in a term of its own.
const FOLLOWER_CUT_OFF: Duration = Duration::from_secs(3);

/// A follower cut off from the others only asks them whether they would
/// vote for it (Pre-Vote): nobody answers, and it stays in the leader's
/// term. Before Pre-Vote was on, it raised its term at every election
/// timeout; healed, its answers to the leader carried that term, and the
/// leader stepped down — an election, and writes refused meanwhile, each
/// time a follower came back (from a partition, or from a restart the
/// leader's heartbeats were slow to reach).
#[test]
fn a_follower_cut_off_and_healed_leaves_the_leader_and_its_term_alone() {
    // Leader balancing off: it would move the lead on purpose.
    let mut cluster = Cluster::start_full(3, true, "    balance_leaders: false\n", 1);
    let leader = cluster.leader();
    cluster.flip_instances(leader, &["v-0"]);
    let term = cluster.term_on(leader);
    let follower = cluster.others(leader)[0];

    cluster.isolate(follower, Mode::Blackhole);
    thread::sleep(FOLLOWER_CUT_OFF);
    let flip = json!({"instance_id": "v-0", "event": "FLIP", "idempotency_key": "flip-v"});
    let applied = cluster.ok_on(leader, "APPLY_EVENT", flip);
    let offset = applied["wal_offset"].as_u64().expect("an offset");
    cluster.heal();

    // The healed follower catches up on the write it missed.
    cluster.wait_applied(follower, "v-0", offset);
    // Well past the time its answers take to reach the leader, the same
    // leader leads in the same term on every node.
    thread::sleep(FOLLOWER_CUT_OFF);
    let nodes: Vec<u64> = cluster.nodes.keys().copied().collect();
    for node in nodes {
        let status = cluster.ok_on(node, "REPLICATION_STATUS", json!({}));
        let group = &status["shards"][0];
        assert_eq!(group["term"], term, "node {node}: {status}");
        assert_eq!(group["leader"], leader, "node {node}: {status}");
    }
}
