//! Partitions through the fault proxies on the peer links: a leader cut
//! off from the others loses its group (a new leader serves the majority
//! side within the failover goal), the cut-off node refuses retryably —
//! never a wrong answer — and, healed, catches up on what it missed.

use std::thread;
use std::time::Instant;

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
