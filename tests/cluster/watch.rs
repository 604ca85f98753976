//! Watches on a cluster: every node streams the group's committed
//! transitions (a follower publishes what it applies), with the offsets the
//! leader gave them; a WATCH_ALL with `from_offset` replays the log on any
//! node, and resumes on another node after the leader's loss with no gap
//! and no duplicate. WAL_READ answers the same log on every node. With
//! several shards per node, an idle group does not hold back a WATCH_ALL
//! on a node that follows it.

use serde_json::{json, Value};

use crate::harness::Cluster;
use crate::support::{ids_on_shard, RawClient};

/// Transitions written per instance (FLIP, FLIP).
const FLIPS_PER_INSTANCE: usize = 2;

/// (offset, instance, event) of the next `count` events on `conn`.
pub(crate) fn events(conn: &mut RawClient, count: usize) -> Vec<(u64, String, String)> {
    let mut out = Vec::new();
    while out.len() < count {
        let frame: Value = conn.read_frame().expect("the stream ended early").json();
        if frame["type"] != "event" {
            continue;
        }
        out.push((
            frame["wal_offset"].as_u64().expect("an offset"),
            frame["instance_id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            frame["event"].as_str().unwrap_or_default().to_string(),
        ));
    }
    out
}

pub(crate) fn watch_all(cluster: &Cluster, node: u64, params: Value) -> RawClient {
    let mut conn = cluster.raw(node);
    let answer = conn.ok("WATCH_ALL", params);
    assert!(answer["subscription_id"].is_string(), "{answer}");
    conn
}

/// Create `ids` and apply both events to each, through `node`; the
/// transitions' offsets as acknowledged, in order.
fn write(cluster: &mut Cluster, node: u64, ids: &[String]) -> Vec<(u64, String, String)> {
    let mut acked = Vec::new();
    for id in ids {
        cluster.ok_on(
            node,
            "CREATE_INSTANCE",
            json!({"machine": "flip", "version": 1, "instance_id": id,
                   "idempotency_key": format!("create-{id}")}),
        );
        for flip in 0..FLIPS_PER_INSTANCE {
            let r = cluster.ok_on(
                node,
                "APPLY_EVENT",
                json!({"instance_id": id, "event": "FLIP",
                       "idempotency_key": format!("flip-{flip}-{id}")}),
            );
            acked.push((
                r["wal_offset"].as_u64().expect("an offset"),
                id.clone(),
                "FLIP".to_string(),
            ));
        }
    }
    acked
}

#[test]
fn every_node_streams_the_committed_log_and_resumes_across_failover() {
    let mut cluster = Cluster::start(3);
    let first = cluster.leader();
    let nodes: Vec<u64> = cluster.nodes.keys().copied().collect();
    cluster.flip_instances(first, &[]);
    // A live subscription on every node, then writes through a follower.
    let mut live: Vec<(u64, RawClient)> = nodes
        .iter()
        .map(|&n| (n, watch_all(&cluster, n, json!({"include_ctx": false}))))
        .collect();
    let follower = *nodes.iter().find(|&&n| n != first).unwrap();
    let ids: Vec<String> = (0..4).map(|i| format!("w-{i}")).collect();
    let acked = write(&mut cluster, follower, &ids);
    for (node, conn) in &mut live {
        assert_eq!(
            events(conn, acked.len()),
            acked,
            "the live stream of node {node}"
        );
    }
    // The log by offset: the same on every node, from any offset.
    for &node in &nodes {
        assert_eq!(cluster.transitions(node), acked, "node {node}");
        let mut replay = watch_all(&cluster, node, json!({"from_offset": acked[3].0}));
        assert_eq!(events(&mut replay, 5), acked[3..], "replay on node {node}");
    }

    // A watcher on the leader has seen half; the leader dies; it resumes
    // on another node from the next offset.
    let mut watcher = watch_all(&cluster, first, json!({"from_offset": 0}));
    let seen = events(&mut watcher, 4);
    assert_eq!(seen, acked[..4]);
    cluster.nodes.get_mut(&first).unwrap().sigkill();
    let more: Vec<String> = (4..6).map(|i| format!("w-{i}")).collect();
    let acked_after = write(&mut cluster, follower, &more);
    assert!(
        acked_after[0].0 > acked.last().unwrap().0,
        "offsets keep growing across the leader change: {acked_after:?} after {acked:?}"
    );
    let mut resumed = watch_all(
        &cluster,
        follower,
        json!({"from_offset": seen.last().unwrap().0 + 1}),
    );
    let expected: Vec<_> = acked[4..].iter().chain(&acked_after).cloned().collect();
    assert_eq!(events(&mut resumed, expected.len()), expected);
}

#[test]
fn an_idle_group_does_not_hold_back_watch_all_on_a_follower() {
    let mut cluster = Cluster::start_sharded(3, 2);
    let idle_leader = cluster.leader_of_shard(1);
    let node = *cluster.nodes.keys().find(|&&n| n != idle_leader).unwrap();
    cluster.flip_instances(node, &[]);
    let mut live = watch_all(&cluster, node, json!({"include_ctx": false}));
    // Writes to shard 0 only: shard 1's group stays idle, and this node
    // follows it; each event must still come (the read times out if not).
    let ids = ids_on_shard("idle", 0, 3);
    let acked = write(&mut cluster, node, &ids);
    assert_eq!(events(&mut live, acked.len()), acked);
}

/// The same on the idle group's leader: a member's watermark moves only
/// with committed entries (a leader's clock is no promise once it loses the
/// lead), so the leader logs watermark entries for its own node's merge.
#[test]
fn an_idle_group_does_not_hold_back_watch_all_on_its_leader() {
    let mut cluster = Cluster::start_sharded(3, 2);
    let node = cluster.leader_of_shard(1);
    cluster.flip_instances(node, &[]);
    let mut live = watch_all(&cluster, node, json!({"include_ctx": false}));
    let ids = ids_on_shard("idle-led", 0, 3);
    let acked = write(&mut cluster, node, &ids);
    assert_eq!(events(&mut live, acked.len()), acked);
}
