//! Shard loops as group members, end to end: three nodes, each running the
//! real shard loop (`Shard::run_member`) over its group member (WAL log,
//! `every_write`, peers over TCP), driven with the server's own shard
//! messages. The leader's loop executes and proposes its turns; followers'
//! loops replay them and forward what needs the leader to it; a stopped
//! leader is replaced and its successor has every acknowledged write; a
//! leader cut off from its quorum tells its clients the outcome is unknown,
//! rebuilds from the committed log and stays consistent with the group.
//! Snapshots are built from a loop's state and installed into another's.
//! (How a turn's records fit its entry: `shard_loop_turn_room.rs`.)

#[path = "support/group_node.rs"]
mod group_node;
#[path = "support/loop_cluster.rs"]
mod loop_cluster;
#[path = "support/loop_node.rs"]
mod loop_node;
#[path = "support/member_thread.rs"]
mod member_thread;
#[path = "support/memlock.rs"]
mod memlock;
#[path = "support/turns.rs"]
mod turns;

use std::net::SocketAddr;

use loop_cluster::{create, exec, get, offset_of, pay, pay_keyed, state_of, Cluster};
use loop_node::{on_leader, retryable, wait_until, STEP_TIMEOUT};
use shards::error::ErrorCode;

#[test]
fn writes_on_the_leader_replay_on_followers_and_survive_its_loss() {
    let mut cluster = Cluster::start();
    let first = cluster.leader();
    let installed = on_leader(&cluster.running(), |n| {
        n.install("order", &turns::order_machine())
    });
    assert_eq!(installed, Ok(true));
    exec(&cluster, || create("o-1"));
    exec(&cluster, || create("o-2"));
    let paid = exec(&cluster, || pay("o-1"));
    assert_eq!(paid["to_state"], "paid", "{paid}");
    let first_offset = offset_of(&paid);

    // A follower forwards what needs the leader to it and relays the
    // answer; its loop answers what needs no leader itself.
    let follower = cluster.nodes.values().find(|n| n.id != first).unwrap();
    let via_follower = follower.exec(get("o-1")).expect("forwarded to the leader");
    assert_eq!(state_of(&via_follower), "paid", "{via_follower}");
    let created = follower.exec(create("o-3")).expect("a create forwarded");
    assert_eq!(created["instance_id"], "o-3", "{created}");
    assert!(follower.shard_answers());

    // The leader goes; its successor's loop replayed every write.
    let first_addr = cluster.stop(first);
    let second = cluster.leader();
    assert_ne!(second, first);
    assert_eq!(state_of(&exec(&cluster, || get("o-1"))), "paid");
    assert_eq!(state_of(&exec(&cluster, || get("o-2"))), "created");
    let paid = exec(&cluster, || pay("o-2"));
    assert!(
        offset_of(&paid) > first_offset,
        "offsets keep growing across leaders: {} after {first_offset}",
        offset_of(&paid)
    );
    let again = on_leader(&cluster.running(), |n| n.exec(pay_keyed("o-2", "other")));
    assert_eq!(
        again.expect_err("paid already").code,
        ErrorCode::InvalidTransition
    );

    // Snapshots were built from the loops' state along the way.
    wait_until("a snapshot on the leader", || {
        cluster.nodes[&second].status().snapshot.is_some()
    });
    // The first leader comes back, catches up, and leads the rest.
    cluster.restart(first, first_addr);
    let applied = cluster.nodes[&second].status().last_applied;
    wait_until("the restarted node caught up", || {
        cluster.nodes[&first].status().last_applied >= applied
    });
    cluster.stop(second);
    cluster.leader();
    for (id, state) in [("o-1", "paid"), ("o-2", "paid")] {
        assert_eq!(state_of(&exec(&cluster, || get(id))), state, "{id}");
    }
}

#[test]
fn a_leader_cut_off_from_its_quorum_answers_unknown_and_stays_consistent() {
    let mut cluster = Cluster::start();
    let leader = cluster.leader();
    assert_eq!(
        on_leader(&cluster.running(), |n| n
            .install("order", &turns::order_machine())),
        Ok(true)
    );
    exec(&cluster, || create("before"));
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != leader).collect();
    let addrs: Vec<(u64, SocketAddr)> =
        followers.iter().map(|&id| (id, cluster.stop(id))).collect();

    // Alone, the leader cannot commit: the write's clients learn the
    // outcome is unknown (retryable), within the commit timeout; reads
    // cannot be confirmed either; the loop itself keeps answering.
    let started = std::time::Instant::now();
    let cut_off = cluster.nodes[&leader].exec(create("during"));
    let error = cut_off.expect_err("no quorum, no commit");
    assert!(retryable(&error), "{error:?}");
    assert!(started.elapsed() < STEP_TIMEOUT);
    let read = cluster.nodes[&leader].exec(get("before"));
    assert!(read.is_err_and(|e| retryable(&e)));
    assert!(cluster.nodes[&leader].shard_answers());

    // The followers come back. Whether "during" committed is up to the
    // log; whatever it says, the group agrees: a retry either finds it or
    // creates it, and every later leader has it exactly once.
    for (id, addr) in addrs {
        cluster.restart(id, addr);
    }
    cluster.leader();
    match on_leader(&cluster.running(), |n| n.exec(create("during"))) {
        Ok(_) => {}
        Err(e) => assert_eq!(e.code, ErrorCode::InstanceExists, "{e:?}"),
    }
    exec(&cluster, || pay("during"));
    for _ in 0..2 {
        let current = cluster.leader();
        assert_eq!(state_of(&exec(&cluster, || get("during"))), "paid");
        assert_eq!(state_of(&exec(&cluster, || get("before"))), "created");
        let addr = cluster.stop(current);
        cluster.leader();
        cluster.restart(current, addr);
    }
}
