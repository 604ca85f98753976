//! Atomic batches on a cluster: a batch whose ops are on one shard is one
//! entry of that shard's group — all or nothing on every node, through a
//! follower (forwarded to the leader) and through the leader's SIGKILL.
//! A batch across shards runs two-phase commit through the groups' logs:
//! all or nothing on every node, streamed to every node's watchers, and
//! whole or absent through the SIGKILL of its coordinator's node or of a
//! group's leader mid-batch — with no instance left locked.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{flips_one_at_a_time, Cluster, NOT_LEADER_CODE};
use std::io::Write;

use crate::support::wire::rcpx_json;
use crate::support::{ids_on_shard, request, RawClient};
use crate::watch::{events, watch_all};

/// Kill rounds: each kills the leader with a batch just sent.
const KILL_ROUNDS: usize = 3;
/// How long after sending a cross-shard batch its victim is killed, by
/// round: from before the first prepare to around the decision.
const KILL_DELAYS_MS: [u64; 6] = [2, 6, 10, 16, 24, 40];

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
pub(crate) fn state_on(cluster: &mut Cluster, node: u64, id: &str) -> Option<String> {
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

    let mut live: Vec<(u64, RawClient)> = nodes
        .iter()
        .map(|&n| (n, watch_all(&cluster, n, json!({"include_ctx": false}))))
        .collect();
    // Through a follower: forwarded to the leader as one part.
    let mut ops = create_and_flip("b-0");
    ops.push(op("GET_INSTANCE", json!({"instance_id": "b-0"})));
    let r = cluster.ok_on(follower, "BATCH", json!({"mode": "atomic", "ops": ops}));
    let results = r["results"].as_array().expect("results");
    assert_eq!(results.len(), 3, "{r}");
    assert_eq!(results[1]["result"]["to_state"], "b", "{r}");
    assert_eq!(results[2]["result"]["state"], "b", "{r}");
    // Every node's watchers see the batch's transition (a follower
    // publishes what it applies, batches included).
    let flip_at = results[1]["result"]["wal_offset"].as_u64().expect("offset");
    for (node, conn) in &mut live {
        let seen = events(conn, 1);
        assert_eq!(
            seen,
            [(flip_at, "b-0".into(), "FLIP".into())],
            "node {node}"
        );
    }
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

/// Two groups (2 shards per node) on 3 nodes; parts left in doubt are
/// settled after 1 s (`in_doubt_resolve_after_ms`), so a GET parked behind
/// one answers well within the test client's timeout.
fn two_group_cluster() -> Cluster {
    Cluster::start_full(3, false, "    in_doubt_resolve_after_ms: 1000\n", 2)
}

/// A batch that creates and flips `a` (shard 0) and `b` (shard 1).
fn across(a: &str, b: &str) -> Vec<Value> {
    create_and_flip(a)
        .into_iter()
        .chain(create_and_flip(b))
        .collect()
}

#[test]
fn atomic_batches_across_shards_commit_on_every_node_or_nowhere() {
    let mut cluster = two_group_cluster();
    let first = cluster.leader();
    cluster.flip_instances(first, &[]);
    let nodes: Vec<u64> = cluster.nodes.keys().copied().collect();
    let (on0, on1) = (ids_on_shard("x", 0, 4), ids_on_shard("x", 1, 4));
    let mut live: Vec<(u64, RawClient)> = nodes
        .iter()
        .map(|&n| (n, watch_all(&cluster, n, json!({"include_ctx": false}))))
        .collect();

    // Through every node: each coordinates, leading one group or none.
    for (i, &via) in nodes.iter().enumerate() {
        let mut ops = across(&on0[i], &on1[i]);
        ops.push(op("GET_INSTANCE", json!({"instance_id": on1[i]})));
        let r = cluster.ok_on(via, "BATCH", json!({"mode": "atomic", "ops": ops}));
        let results = r["results"].as_array().expect("results");
        assert_eq!(results.len(), 5, "{r}");
        assert_eq!(results[1]["result"]["to_state"], "b", "{r}");
        assert_eq!(results[3]["result"]["to_state"], "b", "{r}");
        assert_eq!(results[4]["result"]["state"], "b", "{r}");
    }
    // A failing op in the second shard's part: nothing anywhere.
    let mut failing = across(&on0[3], &on1[3]);
    failing.push(op(
        "APPLY_EVENT",
        json!({"instance_id": on1[3], "event": "NOPE"}),
    ));
    let e = cluster
        .raw(nodes[1])
        .call("BATCH", json!({"mode": "atomic", "ops": failing}));
    assert_eq!(e["error"]["code"], "BAD_REQUEST", "{e}");
    assert_eq!(e["error"]["details"]["failed_op_index"], 4, "{e}");
    assert_eq!(e["error"]["details"]["applied"], false, "{e}");
    for &node in &nodes {
        for id in on0[..3].iter().chain(&on1[..3]) {
            assert_eq!(state_on(&mut cluster, node, id).as_deref(), Some("b"));
        }
        for id in [&on0[3], &on1[3]] {
            assert_eq!(state_on(&mut cluster, node, id), None, "{id} on {node}");
        }
    }
    // Every node's watchers saw the six flips, in offset order, with the
    // same offsets; every node's log says the same.
    let mut streams = Vec::new();
    for (node, conn) in &mut live {
        let seen = events(conn, 6);
        let offsets: Vec<u64> = seen.iter().map(|e| e.0).collect();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "node {node}: {seen:?}"
        );
        streams.push(seen);
    }
    assert!(streams.windows(2).all(|w| w[0] == w[1]), "{streams:?}");
    let leader = cluster.leader();
    for &node in &nodes {
        cluster.converges(node, leader);
        // WAL_READ shows the committed parts on every node.
        let flipped: Vec<String> = cluster
            .transitions(node)
            .into_iter()
            .map(|(_, id, _)| id)
            .collect();
        for id in on0[..3].iter().chain(&on1[..3]) {
            assert!(
                flipped.contains(id),
                "node {node}'s log lacks {id}: {flipped:?}"
            );
        }
    }
}

#[test]
fn atomic_batches_across_shards_survive_kills_whole_or_absent() {
    let mut cluster = two_group_cluster();
    let first = cluster.leader();
    cluster.flip_instances(first, &[]);
    let (on0, on1) = (
        ids_on_shard("k", 0, KILL_ROUNDS * 2),
        ids_on_shard("k", 1, KILL_ROUNDS * 2),
    );
    for round in 0..KILL_ROUNDS * 2 {
        let leader0 = cluster.leader();
        let leader1 = cluster.leader_of_shard(1);
        // Even rounds kill the node coordinating the batch (it leads shard
        // 0's group); odd rounds kill shard 1's leader while another node
        // coordinates.
        let (via, victim) = if round % 2 == 0 {
            (leader0, leader0)
        } else {
            let via = *cluster.nodes.keys().find(|&&n| n != leader1).unwrap();
            (via, leader1)
        };
        let (a, b) = (&on0[round], &on1[round]);
        let mut conn = cluster.raw(via);
        let params = json!({"mode": "atomic", "ops": across(a, b)});
        conn.send_json(&request("kill-batch", "BATCH", params));
        std::thread::sleep(Duration::from_millis(
            KILL_DELAYS_MS[round % KILL_DELAYS_MS.len()],
        ));
        cluster.nodes.get_mut(&victim).unwrap().restart();
        let next = cluster.leader();
        let states = (
            state_on(&mut cluster, next, a),
            state_on(&mut cluster, next, b),
        );
        assert!(
            matches!(&states, (None, None)) || states == (Some("b".into()), Some("b".into())),
            "round {round} (killed node {victim}, coordinator {via}): half a batch: {a}, {b} are {states:?}"
        );
        // Nothing stays locked: both instances take writes again.
        for id in [a, b] {
            match state_on(&mut cluster, next, id) {
                Some(_) => {
                    cluster.ok_anywhere("APPLY_EVENT", json!({"instance_id": id, "event": "FLIP"}))
                }
                None => cluster.ok_anywhere(
                    "CREATE_INSTANCE",
                    json!({"machine": "flip", "version": 1, "instance_id": id}),
                ),
            };
        }
    }
    cluster.all_converge();
}

/// Tries at orphaning a batch: under load the batch may be answered (a
/// leader change refuses it) before its coordinator is killed.
const ORPHAN_ATTEMPTS: usize = 3;

/// The leaders of shards 0 and 1, once on two different nodes and the same
/// a second apart (each group's lead moves to its preferred node — shard
/// 0: node 1, shard 1: node 2 — once settled; no transfer under way).
fn two_settled_leaders(cluster: &mut Cluster) -> (u64, u64) {
    let started = std::time::Instant::now();
    let mut last = None;
    loop {
        let l0 = cluster.leader();
        let l1 = cluster.leader_of_shard(1);
        if l0 != l1 && last == Some((l0, l1)) {
            return (l0, l1);
        }
        last = Some((l0, l1));
        assert!(
            started.elapsed() < crate::harness::CLUSTER_SETTLE_TIMEOUT,
            "the groups' leaders did not settle on two nodes: {last:?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Send a batch across `a` (shard 0) and `b` (shard 1) to `coordinator`
/// (shard 0's leader) with `frozen` (shard 1's leader) stopped: the part on
/// shard 0, the decider, is prepared, the one on shard 1 waits on the
/// frozen leader — and the coordinator's node is killed then. Returns the
/// batch's answer if it came before the kill (no orphan this time).
fn orphan_a_batch(
    cluster: &mut Cluster,
    coordinator: u64,
    frozen: u64,
    a: &str,
    b: &str,
) -> Option<Value> {
    cluster.nodes[&frozen].signal(libc::SIGSTOP);
    let mut conn = cluster.raw(coordinator);
    let params = json!({"mode": "atomic", "ops": across(a, b)});
    conn.send_json(&request("orphaned", "BATCH", params));
    std::thread::sleep(Duration::from_millis(800));
    cluster.nodes.get_mut(&coordinator).unwrap().sigkill();
    cluster.nodes[&frozen].signal(libc::SIGCONT);
    conn.read_frame().map(|f| f.json())
}

/// A batch left in doubt by `orphan_a_batch`: its coordinator's node
/// (killed, not restarted) and its two instances.
pub(crate) struct Orphan {
    pub coordinator: u64,
    pub a: String,
    pub b: String,
}

/// Orphan a batch across instances `<prefix>…` of shards 0 and 1, again
/// (after restarting the coordinator's node) while the batch is answered
/// before the kill; panics after `ORPHAN_ATTEMPTS` tries.
pub(crate) fn orphan_one(cluster: &mut Cluster, prefix: &str) -> Orphan {
    let (on0, on1) = (
        ids_on_shard(prefix, 0, ORPHAN_ATTEMPTS),
        ids_on_shard(prefix, 1, ORPHAN_ATTEMPTS),
    );
    for (attempt, (a, b)) in on0.into_iter().zip(on1).enumerate() {
        let (coordinator, frozen) = two_settled_leaders(cluster);
        match orphan_a_batch(cluster, coordinator, frozen, &a, &b) {
            None => return Orphan { coordinator, a, b },
            Some(early) => {
                cluster.nodes.get_mut(&coordinator).unwrap().restart();
                eprintln!("attempt {attempt}: answered before the kill ({early:?}); again");
            }
        }
    }
    panic!("in {ORPHAN_ATTEMPTS} attempts the batch was always answered before the kill");
}

#[test]
fn a_batch_whose_coordinator_dies_mid_prepare_is_aborted_by_its_decider() {
    // Slow elections: shard 1's group keeps its frozen leader while the
    // batch waits on it.
    let settings = "    in_doubt_resolve_after_ms: 1000\n    election_timeout_ms: 1000\n";
    let mut cluster = Cluster::start_full(3, false, settings, 2);
    let first = cluster.leader();
    cluster.flip_instances(first, &[]);
    let (on0, on1) = (
        ids_on_shard("d", 0, ORPHAN_ATTEMPTS),
        ids_on_shard("d", 1, ORPHAN_ATTEMPTS),
    );
    for attempt in 0..ORPHAN_ATTEMPTS {
        let (coordinator, frozen) = two_settled_leaders(&mut cluster);
        let third = *cluster
            .nodes
            .keys()
            .find(|&&n| n != coordinator && n != frozen)
            .unwrap();
        let (a, b) = (&on0[attempt], &on1[attempt]);
        let early = orphan_a_batch(&mut cluster, coordinator, frozen, a, b);
        let states = (
            state_on(&mut cluster, third, a),
            state_on(&mut cluster, third, b),
        );
        cluster.nodes.get_mut(&coordinator).unwrap().restart();
        if early.is_some() {
            // Answered before the kill: no orphan this time, but whole or
            // absent all the same.
            assert!(
                matches!(&states, (None, None)) || states == (Some("b".into()), Some("b".into())),
                "half a batch: {states:?} after {early:?}"
            );
            eprintln!("attempt {attempt}: answered before the kill ({early:?}); again");
            continue;
        }
        // Nobody will decide the prepared part but its decider: a leader
        // of shard 0's group finds it undecided and has the decider abort it.
        assert_eq!(states, (None, None));
        let settled = [frozen, third].iter().any(|n| {
            cluster.nodes[n]
                .stderr()
                .contains("stayed undecided; decider shard 0 aborted it")
        });
        assert!(settled, "no node settled the batch part left in doubt");
        // Its instances are free again.
        cluster.ok_anywhere(
            "CREATE_INSTANCE",
            json!({"machine": "flip", "version": 1, "instance_id": a}),
        );
        cluster.all_converge();
        return;
    }
    panic!("in {ORPHAN_ATTEMPTS} attempts the batch was always answered before the kill");
}

/// Operations through a follower pipelined behind one parked at the leader.
const BESIDE_PARKED_OPS: usize = 16;

#[test]
fn an_operation_parked_behind_a_part_in_doubt_does_not_fail_those_forwarded_with_it() {
    // The orphaned part stays in doubt (its instance locked) for 8 s —
    // longer than a forwarded batch may wait (`FORWARD_TIMEOUT_MS`).
    let settings = "    in_doubt_resolve_after_ms: 8000\n    election_timeout_ms: 1000\n";
    let mut cluster = Cluster::start_full(3, false, settings, 2);
    let first = cluster.leader();
    let beside = ids_on_shard("beside", 0, BESIDE_PARKED_OPS);
    let ids: Vec<&str> = beside.iter().map(String::as_str).collect();
    cluster.flip_instances(first, &ids);
    let Orphan { coordinator, a, .. } = orphan_one(&mut cluster, "p");
    // Through the live node that does not lead shard 0: an operation on
    // the locked instance, then flips of free ones, in one write —
    // forwarded in one call.
    let leader = cluster.leader();
    let via = *cluster
        .nodes
        .keys()
        .find(|&&n| n != coordinator && n != leader)
        .unwrap();
    let mut raw = cluster.raw(via);
    let mut out = rcpx_json(&request(
        "parked",
        "APPLY_EVENT",
        json!({"instance_id": a, "event": "FLIP"}),
    ));
    for (i, id) in beside.iter().enumerate() {
        let flip = json!({"instance_id": id, "event": "FLIP"});
        out.extend(rcpx_json(&request(
            &format!("beside-{i}"),
            "APPLY_EVENT",
            flip,
        )));
    }
    let sent = std::time::Instant::now();
    raw.stream.write_all(&out).expect("write");
    let mut answers: Vec<Value> = (0..=BESIDE_PARKED_OPS)
        .map(|_| raw.read_response())
        .collect();
    eprintln!("answered in {:?}", sent.elapsed());
    answers.sort_by_key(|r| r["id"].as_str().unwrap_or_default().to_string());
    let (parked, others) = answers.split_last().expect("answers");
    for r in others {
        assert_eq!(r["status"], "ok", "beside the parked operation: {r}");
    }
    // The parked one: run once the part is decided, or refused as
    // retryable with its outcome unknown — never a hang.
    eprintln!("the parked operation: {parked}");
    assert_eq!(parked["id"], "parked");
    assert!(
        parked["status"] == "ok" || parked["error"]["retryable"] == true,
        "the parked operation: {parked}"
    );
    cluster.nodes.get_mut(&coordinator).unwrap().restart();
}

/// Cross-shard batches before the log moves on: each leaves a prepared part
/// (and its decision) in both groups' logs.
const BATCHES_BEFORE_PURGE: usize = 20;
/// Writes per group afterwards, one entry each: past two snapshots (one
/// every 100 entries), so the batches' entries are purged (no log is kept
/// behind a snapshot) and the next snapshot forgets their decisions.
const FLIPS_PAST_TWO_SNAPSHOTS: usize = 250;

/// Wait until node `node`'s `batch_decisions_kept` of every shard passes
/// `check`; panics with `what` after `CLUSTER_SETTLE_TIMEOUT`.
fn wait_decisions_kept(cluster: &Cluster, node: u64, check: impl Fn(u64) -> bool, what: &str) {
    let started = std::time::Instant::now();
    loop {
        let status = cluster.raw(node).ok("REPLICATION_STATUS", json!({}));
        let kept: Vec<u64> = status["shards"]
            .as_array()
            .expect("shards")
            .iter()
            .map(|s| s["batch_decisions_kept"].as_u64().expect("a count"))
            .collect();
        if kept.iter().all(|&k| check(k)) {
            return;
        }
        assert!(
            started.elapsed() < crate::harness::CLUSTER_SETTLE_TIMEOUT,
            "node {node} {what}: {kept:?}"
        );
        std::thread::sleep(crate::harness::LEADER_POLL);
    }
}

/// A member remembers the decision of each batch part prepared in its log
/// so that reads of the log know whether the part's entries are visible;
/// once the log is purged past a part, no read needs it, and the member
/// forgets it — its memory follows its log, not its whole history.
#[test]
fn a_member_forgets_batch_decisions_its_log_has_purged() {
    let settings = "    snapshot_every_entries: 100\n    log_kept_behind_snapshot_entries: 0\n";
    let mut cluster = Cluster::start_full(3, false, settings, 2);
    let via = cluster.leader();
    cluster.flip_instances(via, &[]);
    let nodes: Vec<u64> = cluster.nodes.keys().copied().collect();
    let (on0, on1) = (
        ids_on_shard("forget", 0, BATCHES_BEFORE_PURGE),
        ids_on_shard("forget", 1, BATCHES_BEFORE_PURGE),
    );
    for (a, b) in on0.iter().zip(&on1) {
        cluster.ok_on(via, "BATCH", json!({"mode": "atomic", "ops": across(a, b)}));
    }
    let all = BATCHES_BEFORE_PURGE as u64;
    for &node in &nodes {
        wait_decisions_kept(&cluster, node, |k| k >= all, "never held every part");
    }
    let mut conn = cluster.raw(via);
    for id in [&on0[0], &on1[0]] {
        let offsets = flips_one_at_a_time(&mut conn, id, FLIPS_PAST_TWO_SNAPSHOTS);
        for &node in &nodes {
            cluster.wait_applied(node, id, *offsets.last().unwrap());
        }
    }
    for &node in &nodes {
        wait_decisions_kept(&cluster, node, |k| k < all, "still holds the purged parts");
    }
}
