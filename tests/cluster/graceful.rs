//! A graceful stop of a cluster node: SIGTERM first hands the lead of its
//! group to another member, so the others have a leader the moment it is
//! gone — no election timeout, no retryable refusals for their clients.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::Cluster;

/// How long a node may take to stop after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

#[test]
fn sigterm_hands_the_lead_over_before_the_node_stops() {
    let mut cluster = Cluster::start(3);
    let first = cluster.leader();
    cluster.flip_instances(first, &[]);
    cluster.ok_on(
        first,
        "CREATE_INSTANCE",
        json!({"machine": "flip", "version": 1, "instance_id": "g-0"}),
    );
    let survivor = *cluster.nodes.keys().find(|&&n| n != first).unwrap();

    let stopping = cluster.nodes.get_mut(&first).unwrap();
    let signalled = Instant::now();
    stopping.signal(libc::SIGTERM);
    let status = stopping.wait_exit(STOP_TIMEOUT);
    let stopped_in = signalled.elapsed();
    assert!(status.success(), "SIGTERM: {status:?}");
    let log = stopping.stderr();
    let handed = log
        .lines()
        .find(|l| l.contains("handed its group's lead to node"))
        .unwrap_or_else(|| panic!("no hand-over in the stopped node's log:\n{log}"));
    eprintln!("graceful stop in {stopped_in:?}: {handed}");
    let heir: u64 = handed
        .rsplit("to node ")
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the new leader's id");
    assert_ne!(heir, first);

    // The others have their leader already: the first request through a
    // survivor is served, not refused for want of one.
    let flip = json!({"instance_id": "g-0", "event": "FLIP", "idempotency_key": "after-stop"});
    let answer = cluster.raw(survivor).call("APPLY_EVENT", flip);
    assert_eq!(answer["status"], "ok", "right after the stop: {answer}");
    assert_eq!(cluster.leader(), heir);
}
