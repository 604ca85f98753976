//! Watches on a cluster: every node streams the group's committed
//! transitions (a follower publishes what it applies), with the offsets the
//! leader gave them; a WATCH_ALL with `from_offset` replays the log on any
//! node, and resumes on another node after the leader's loss with no gap
//! and no duplicate. WAL_READ answers the same log on every node. With
//! several shards per node, an idle group does not hold back a WATCH_ALL
//! on a node that follows it.

use serde_json::{json, Value};

use crate::harness::{flips_one_at_a_time, Cluster};
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

/// Snapshot settings for the read-back test: a snapshot every 100 entries
/// (the least allowed), 200 entries kept behind the newest one.
const READ_BACK_SETTINGS: &str =
    "    snapshot_every_entries: 100\n    log_kept_behind_snapshot_entries: 200\n";
/// Flips (one entry each) before the first reads: past two snapshots, so
/// the first flip lies behind the newest one but within the log kept.
const FLIPS_BEHIND_SNAPSHOT: usize = 250;
/// Flips in all before the first flip must have been purged: the newest
/// snapshot then lies more than 200 entries past it.
const FLIPS_PAST_THE_KEPT_LOG: usize = 600;

/// A node reads its group's log by offset back past its newest snapshot,
/// as far as the log it keeps behind it (`log_kept_behind_snapshot_entries`);
/// once the log is purged past an offset, WAL_READ and WATCH_ALL from it
/// are refused with the oldest offset still readable, and later offsets
/// still read.
#[test]
fn a_node_reads_back_past_its_snapshot_as_far_as_its_log_keeps() {
    let mut cluster = Cluster::start_with(3, false, READ_BACK_SETTINGS);
    let leader = cluster.leader();
    cluster.flip_instances(leader, &["i-0"]);
    let follower = *cluster.nodes.keys().find(|&&n| n != leader).unwrap();
    let mut conn = cluster.raw(leader);
    let offsets = flips_one_at_a_time(&mut conn, "i-0", FLIPS_BEHIND_SNAPSHOT);
    let first = offsets[0];
    for node in [leader, follower] {
        let status = cluster.wait_applied(node, "i-0", *offsets.last().unwrap());
        let snapshot = status["snapshot_index"].as_u64().unwrap_or(0);
        assert!(snapshot >= 100, "node {node} took no snapshot: {status}");
        let page = cluster.ok_on(node, "WAL_READ", json!({"from_offset": first, "limit": 3}));
        assert_eq!(page["records"][0]["offset"], first, "node {node}: {page}");
        let mut replay = watch_all(&cluster, node, json!({"from_offset": first}));
        let seen = events(&mut replay, 3);
        assert_eq!(
            seen.iter().map(|e| e.0).collect::<Vec<_>>(),
            offsets[..3],
            "node {node}"
        );
    }

    let more = flips_one_at_a_time(
        &mut conn,
        "i-0",
        FLIPS_PAST_THE_KEPT_LOG - FLIPS_BEHIND_SNAPSHOT,
    );
    let last = *more.last().unwrap();
    for node in [leader, follower] {
        cluster.wait_applied(node, "i-0", last);
        // The purge follows the snapshot in the background.
        let started = std::time::Instant::now();
        let refusal = loop {
            let r = cluster
                .raw(node)
                .call("WAL_READ", json!({"from_offset": first, "limit": 3}));
            if r["status"] == "error" {
                break r;
            }
            assert!(
                started.elapsed() < crate::harness::CLUSTER_SETTLE_TIMEOUT,
                "node {node} still reads offset {first}: {r}"
            );
            std::thread::sleep(crate::harness::LEADER_POLL);
        };
        assert_eq!(refusal["error"]["code"], "BAD_REQUEST", "{refusal}");
        let message = refusal["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("older than the oldest offset"),
            "{refusal}"
        );
        let e =
            cluster
                .raw(node)
                .err_code("WATCH_ALL", json!({"from_offset": first}), "BAD_REQUEST");
        assert!(
            e["message"]
                .as_str()
                .unwrap_or_default()
                .contains("older than the oldest offset"),
            "{e}"
        );
        let status = cluster.raw(node).ok("REPLICATION_STATUS", json!({}));
        assert!(
            status["shards"][0]["purged_index"].as_u64().is_some(),
            "node {node}: {status}"
        );
        // What the log still holds reads as before.
        let recent = more[more.len() - 3];
        let page = cluster.ok_on(node, "WAL_READ", json!({"from_offset": recent, "limit": 3}));
        assert_eq!(page["records"][0]["offset"], recent, "node {node}: {page}");
    }
}

/// A node that restarted reads back past the snapshot it started from, as
/// far as its log keeps, and reads there what a node that did not restart
/// reads — the parts of cross-shard batches included: a committed batch's
/// shown, an aborted one's not. The group read back is shard 1's, whose
/// part of a batch is not the decider's: only the decision logged in the
/// log behind the snapshot says that part committed.
#[test]
fn a_restarted_node_reads_back_past_its_snapshot_as_the_others_do() {
    let mut cluster = Cluster::start_full(3, false, READ_BACK_SETTINGS, 2);
    let leader = cluster.leader_of_shard(1);
    let (on0, on1) = (ids_on_shard("rb", 0, 3), ids_on_shard("rb", 1, 3));
    let flipper = on1[0].as_str();
    cluster.flip_instances(leader, &[flipper]);
    let mut conn = cluster.raw(leader);
    let first = flips_one_at_a_time(&mut conn, flipper, 1)[0];
    let op = |name: &str, params: Value| json!({"op": name, "params": params});
    let create = |id: &str| {
        op(
            "CREATE_INSTANCE",
            json!({"machine": "flip", "version": 1, "instance_id": id}),
        )
    };
    let flip = |id: &str| op("APPLY_EVENT", json!({"instance_id": id, "event": "FLIP"}));
    let ops = [
        create(&on0[1]),
        flip(&on0[1]),
        create(&on1[1]),
        flip(&on1[1]),
    ];
    conn.ok("BATCH", json!({"mode": "atomic", "ops": ops}));
    // Shard 1's part fails (no such instance): the batch aborts.
    let ops = [create(&on0[2]), flip(&on0[2]), flip(&on1[2])];
    let aborted = conn.call("BATCH", json!({"mode": "atomic", "ops": ops}));
    assert_eq!(aborted["status"], "error", "{aborted}");
    let last = *flips_one_at_a_time(&mut conn, flipper, FLIPS_BEHIND_SNAPSHOT)
        .last()
        .unwrap();

    let mut others = cluster.nodes.keys().copied().filter(|&n| n != leader);
    let (restarted, witness) = (others.next().unwrap(), leader);
    cluster.wait_applied(restarted, flipper, last);
    let status = &cluster.raw(restarted).ok("REPLICATION_STATUS", json!({}))["shards"][1];
    assert!(
        status["snapshot_index"].as_u64().unwrap_or(0) >= 100,
        "node {restarted} took no snapshot: {status}"
    );
    cluster.nodes.get_mut(&restarted).unwrap().restart();
    cluster.wait_applied(restarted, flipper, last);

    let page = json!({"from_offset": first, "limit": 12});
    let expected = cluster.ok_on(witness, "WAL_READ", page.clone());
    let described = expected.to_string();
    assert!(described.contains(on1[1].as_str()), "{expected}");
    assert!(!described.contains(on0[2].as_str()), "{expected}");
    let read = read_back_after_restart(&cluster, restarted, &page);
    assert_eq!(read["records"], expected["records"]);
    let from_first = json!({"from_offset": first});
    let seen = events(&mut watch_all(&cluster, restarted, from_first.clone()), 8);
    let witnessed = events(&mut watch_all(&cluster, witness, from_first), 8);
    assert_eq!(seen, witnessed);
    assert!(seen.iter().any(|e| e.1 == on1[1]), "{seen:?}");
}

/// WAL_READ `page` on node `node`, restarted from a snapshot: retried while
/// the log behind the snapshot is still being indexed (beside the loop,
/// after start), until `CLUSTER_SETTLE_TIMEOUT`.
fn read_back_after_restart(cluster: &Cluster, node: u64, page: &Value) -> Value {
    let started = std::time::Instant::now();
    loop {
        let r = cluster.raw(node).call("WAL_READ", page.clone());
        if r["status"] == "ok" {
            return r["result"].clone();
        }
        assert!(
            started.elapsed() < crate::harness::CLUSTER_SETTLE_TIMEOUT,
            "node {node} never read back past its snapshot ({page}): {r}"
        );
        std::thread::sleep(crate::harness::LEADER_POLL);
    }
}

/// Flips before the restart: past the first snapshot (every 100 entries),
/// far short of the log kept behind it (10,000 by default).
const FLIPS_BEFORE_RESTART: usize = 150;

/// A node restarted from a snapshot whose log behind it was never purged
/// reads the whole log from offset 0, as a node that did not restart does
/// (it used to refuse every offset before its log's first record: the
/// long linearizability run with snapshots, which reads every node's log
/// from 0, failed on it).
#[test]
fn a_node_restarted_from_a_snapshot_reads_from_offset_zero_when_nothing_was_purged() {
    let mut cluster = Cluster::start_with(3, false, "    snapshot_every_entries: 100\n");
    let leader = cluster.leader();
    cluster.flip_instances(leader, &["z-0"]);
    let mut conn = cluster.raw(leader);
    let last = *flips_one_at_a_time(&mut conn, "z-0", FLIPS_BEFORE_RESTART)
        .last()
        .unwrap();
    let restarted = cluster.others(leader)[0];
    let status = cluster.wait_applied(restarted, "z-0", last);
    assert!(
        status["snapshot_index"].is_u64() && status["purged_index"].is_null(),
        "node {restarted}: a snapshot and no purge expected: {status}"
    );
    cluster.nodes.get_mut(&restarted).unwrap().restart();
    cluster.wait_applied(restarted, "z-0", last);
    let page = json!({"from_offset": 0, "limit": 20});
    let expected = cluster.ok_on(leader, "WAL_READ", page.clone());
    let read = read_back_after_restart(&cluster, restarted, &page);
    assert_eq!(read["records"], expected["records"]);
    assert_eq!(read["records"].as_array().map(Vec::len), Some(20), "{read}");
}
