//! A group member's loop turn is one entry of its group's log, and an
//! entry holds at most `ENTRY_RECORDS_BYTES_MAX` of records. A write whose
//! record fits an entry alone but not beside the records its turn holds
//! already runs in the next turn — whichever way it came: from the
//! mailbox, waiting for its client's answer budget, or parked behind a
//! cross-shard batch's lock — instead of the whole turn being refused.
//! Three real shard loops with Raft over TCP (`support/loop_cluster.rs`).

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

use std::sync::Arc;

use corestate_raft::shard_group::ENTRY_RECORDS_BYTES_MAX;
use loop_cluster::{create, exec, get, offset_of, pay, state_of, Cluster};
use loop_node::{on_leader, wait_until, STEP_TIMEOUT};
use openraft::Config;
use serde_json::{json, Value};
use shards::machine::definition::{parse_definition, MachineDef};
use shards::shard::budget::{ResponseBudget, ServerBudget};
use shards::shard::{BatchVote, Command, CreateInstance, ReplyTo, ShardMsg, Verdict};
use shards::wal::entry::{write_create_instance, write_put_machine, CreateFields};
use shards::wal::record::RECORD_HEADER_BYTES;

/// Entries of megabytes keep an unoptimized build's loops busy for longer
/// than the default election timeout: the lead would move.
fn patient_elections(config: &mut Config) {
    config.heartbeat_interval = 500;
    config.election_timeout_min = 5_000;
    config.election_timeout_max = 10_000;
}

/// Three loops with `patient_elections` and the order machine.
fn order_cluster() -> Cluster {
    let cluster = Cluster::start_with(patient_elections);
    let installed = on_leader(&cluster.running(), |n| {
        n.install("order", &turns::order_machine())
    });
    assert_eq!(installed, Ok(true));
    cluster
}

/// A create of `id` whose record (header and payload) takes exactly
/// `record_bytes`.
fn create_of_record_size(id: &str, record_bytes: usize) -> Command {
    let payload_with = |pad: usize| {
        let ctx = serde_json::to_vec(&json!({ "pad": "x".repeat(pad) })).unwrap();
        let mut out = Vec::new();
        write_create_instance(
            &mut out,
            &CreateFields {
                instance_id: id,
                machine: "order",
                version: 1,
                initial_state: "created",
                initial_ctx_json: &ctx,
                idempotency_key: None,
            },
        );
        out.len()
    };
    let pad = record_bytes - RECORD_HEADER_BYTES - payload_with(0);
    assert_eq!(RECORD_HEADER_BYTES + payload_with(pad), record_bytes);
    Command::Create(CreateInstance {
        instance_id: id.to_string(),
        machine: "order".into(),
        version: 1,
        initial_ctx: json!({ "pad": "x".repeat(pad) }),
        idempotency_key: None,
    })
}

/// A turn is logged as one entry, so its records must fit one. A create
/// whose record fits an entry alone, but not beside a small create queued
/// just before it, was run in the same turn: the turn came to more than an
/// entry holds and both were refused ("may be sent again" — into the same
/// company, for all the loop knew). Now the large one does not join the
/// turn: it starts the next, and every write is logged and replicated.
#[test]
fn a_write_that_fits_an_entry_alone_is_not_refused_for_its_company() {
    let cluster = order_cluster();
    let leader = cluster.leader();
    // Sent by a client to the leader, then as forwarded by a follower.
    for (forwarded, tag) in [(false, "direct"), (true, "forwarded")] {
        let ids = ["small-1", "large", "small-2"].map(|id| format!("{tag}-{id}"));
        // The small create's record takes more than 100 bytes.
        let large = create_of_record_size(&ids[1], ENTRY_RECORDS_BYTES_MAX - 100);
        let cmds = vec![create(&ids[0]), large, create(&ids[2])];
        let answers = cluster.nodes[&leader].exec_queued(cmds, forwarded);
        let mut offsets = Vec::new();
        for (id, answer) in ids.iter().zip(answers) {
            let answer = answer.unwrap_or_else(|e| panic!("{id} refused: {e:?}"));
            assert_eq!(answer["instance_id"], id.as_str(), "{answer}");
            offsets.push(offset_of(&answer));
        }
        assert!(offsets.is_sorted(), "in the order sent: {offsets:?}");
        // Every member applied the entries, and the group serves on.
        let applied = cluster.nodes[&leader].status().last_applied;
        for node in cluster.running() {
            wait_until("every member applied the writes", || {
                node.status().last_applied >= applied
            });
        }
        for id in &ids {
            assert_eq!(state_of(&exec(&cluster, || get(id))), "created", "{id}");
        }
    }
}

fn answer<T>(rx: flume::Receiver<T>) -> T {
    rx.recv_timeout(STEP_TIMEOUT).expect("the shard answers")
}

/// The machine `name` v1 (`order`'s states) whose PUT_MACHINE record takes
/// exactly `record_bytes`: its definition and the definition itself.
fn machine_of_record_size(name: &str, record_bytes: usize) -> (Arc<MachineDef>, Arc<Value>) {
    let with = |pad: usize| {
        let mut definition = turns::order_machine();
        definition["meta"] = json!({ "pad": "m".repeat(pad) });
        let def = parse_definition(name, 1, &definition).expect("a valid definition");
        let mut out = Vec::new();
        write_put_machine(&mut out, name, 1, &def.checksum, &definition);
        (
            Arc::new(def),
            Arc::new(definition),
            RECORD_HEADER_BYTES + out.len(),
        )
    };
    let (_, _, bare) = with(0);
    let (def, definition, bytes) = with(record_bytes - bare);
    assert_eq!(bytes, record_bytes);
    (def, definition)
}

/// A write that learns its record's size only by staging it — a machine,
/// an atomic batch, a cross-shard batch's part — and fits an entry alone
/// but not beside a small create queued before it was run in the same
/// turn, and the whole turn was refused. Now it starts the next turn.
#[test]
fn a_machine_or_batch_part_that_fits_an_entry_alone_is_not_refused_for_its_company() {
    let cluster = order_cluster();
    let leader = &cluster.nodes[&cluster.leader()];
    // Each record is 100 bytes under an entry's limit (a small create's
    // takes more than 100). A batch's record holds its ops' records whole
    // (headers too) and, a part's, 12 bytes of txid and decider.
    let near_full = ENTRY_RECORDS_BYTES_MAX - 100;
    let inner = |head: usize| near_full - RECORD_HEADER_BYTES - head;
    let (def, raw_definition) = machine_of_record_size("big", near_full);
    let (installed_tx, installed_rx) = flume::bounded(1);
    let (batch_tx, batch_rx) = flume::bounded(1);
    let (part_tx, part_rx) = flume::bounded(1);
    const TXID: u64 = 7;
    let large = [
        ShardMsg::InstallMachine {
            def,
            raw_definition,
            done: installed_tx,
        },
        ShardMsg::AtomicBatch {
            ops: vec![create_of_record_size("batched", inner(0))],
            done: batch_tx,
        },
        ShardMsg::Prepare {
            txid: TXID,
            decider: turns::SHARD as u32,
            ops: vec![create_of_record_size("part", inner(12))],
            done: part_tx,
        },
    ];
    for (i, msg) in large.into_iter().enumerate() {
        // Queued together: small, large, small.
        let ids = [format!("before-{i}"), format!("after-{i}")];
        let (before_tx, before) = flume::bounded(1);
        let (after_tx, after) = flume::bounded(1);
        let exec = |id: &str, tx| ShardMsg::Exec {
            cmd: create(id),
            reply: ReplyTo::internal(tx, 0),
        };
        leader.send(exec(&ids[0], before_tx));
        leader.send(msg);
        leader.send(exec(&ids[1], after_tx));
        for (id, rx) in ids.iter().zip([before, after]) {
            let reply = answer(rx);
            assert!(reply.body.is_ok(), "{id}: {:?}", reply.body.err());
        }
    }
    assert_eq!(answer(installed_rx), Ok(true));
    for (what, vote) in [("batch", answer(batch_rx)), ("part", answer(part_rx))] {
        assert!(matches!(vote, BatchVote::Yes(_)), "{what}: {vote:?}");
    }
    let (decided_tx, decided) = flume::bounded(1);
    leader.send(ShardMsg::Decide {
        txid: TXID,
        commit: true,
        done: decided_tx,
    });
    assert_eq!(answer(decided), Verdict::Committed);
    // Every member applied it all, and the group serves on.
    let applied = leader.status().last_applied;
    for node in cluster.running() {
        wait_until("every member applied the writes", || {
            node.status().last_applied >= applied
        });
    }
    for id in ["batched", "part", "before-2", "after-2"] {
        assert_eq!(state_of(&exec(&cluster, || get(id))), "created", "{id}");
    }
}

/// A client's answer budget (bytes): spent by one charge the test holds.
const CLIENT_BUDGET_BYTES: usize = 1 << 20;

/// Requests waiting for their client's answer budget run after a turn's
/// messages, and on a member only once the turn learnt it leads: a turn
/// with nothing but the connection's wake-up (`Unpark`) never ran them,
/// and they waited until some other request came. Run, each stays in its
/// client's order, and a record without room beside the turn's others
/// waits, first in its client's queue, for the next turn (here the large
/// create's record fills an entry: it must not share the small one's).
#[test]
fn a_leaders_writes_waiting_for_their_budget_run_when_it_comes_back_in_order() {
    let cluster = order_cluster();
    let leader = &cluster.nodes[&cluster.leader()];
    let server = ServerBudget::new(CLIENT_BUDGET_BYTES);
    let budget = ResponseBudget::new(CLIENT_BUDGET_BYTES, server);
    let spent = budget.charge(CLIENT_BUDGET_BYTES + 1).expect("charged");
    // The client's requests after its oldest unwritten answer (0) wait.
    let client = |cmd, seq| {
        let (tx, rx) = flume::bounded(1);
        let reply = ReplyTo {
            tx,
            seq,
            budget: Some(budget.clone()),
            lease: None,
        };
        leader.send(ShardMsg::Exec { cmd, reply });
        rx
    };
    let small = client(create("w-small"), 1);
    let large = client(
        create_of_record_size("w-large", ENTRY_RECORDS_BYTES_MAX - 100),
        2,
    );
    // The budget comes back, and the connection wakes the shard.
    drop(spent);
    leader.send(ShardMsg::Unpark);
    let mut offsets = Vec::new();
    for (i, rx) in [small, large].into_iter().enumerate() {
        let body = answer(rx)
            .body
            .unwrap_or_else(|e| panic!("write {i} refused: {e:?}"));
        let answer: Value = serde_json::from_slice(&body).expect("JSON");
        offsets.push(offset_of(&answer));
    }
    assert!(offsets[0] < offsets[1], "the client's order: {offsets:?}");
    let applied = leader.status().last_applied;
    for node in cluster.running() {
        wait_until("every member applied the writes", || {
            node.status().last_applied >= applied
        });
    }
    assert_eq!(state_of(&exec(&cluster, || get("w-large"))), "created");
}

/// A request parked behind a cross-shard part's lock runs when the part is
/// decided, in the decision's turn. One whose record did not fit beside
/// the turn's others ran there all the same and the whole turn was
/// refused; now it stays parked, first, and the next turn runs it before
/// any new message (a later request on its instance must not overtake it).
#[test]
fn a_parked_write_without_room_in_its_decisions_turn_runs_first_in_the_next() {
    let cluster = order_cluster();
    let leader = &cluster.nodes[&cluster.leader()];
    // A part that creates x holds x's lock until it is decided (here
    // aborted, so that x may be created again).
    const TXID: u64 = 11;
    let (voted_tx, voted) = flume::bounded(1);
    leader.send(ShardMsg::Prepare {
        txid: TXID,
        decider: turns::SHARD as u32,
        ops: vec![create("x")],
        done: voted_tx,
    });
    assert!(matches!(answer(voted), BatchVote::Yes(_)));
    // x created, its record 100 bytes under an entry's limit: parked.
    let (tx, parked) = flume::bounded(1);
    let cmd = create_of_record_size("x", ENTRY_RECORDS_BYTES_MAX - 100);
    let reply = ReplyTo::internal(tx, 0);
    leader.send(ShardMsg::Exec { cmd, reply });
    // A small create, then the decision, queued together: the parked
    // create would follow both in the decision's turn.
    let (tx, small) = flume::bounded(1);
    let reply = ReplyTo::internal(tx, 0);
    leader.send(ShardMsg::Exec {
        cmd: create("small"),
        reply,
    });
    let (decided_tx, decided) = flume::bounded(1);
    leader.send(ShardMsg::Decide {
        txid: TXID,
        commit: false,
        done: decided_tx,
    });
    // And a payment for x, which must not overtake x's creation.
    let (tx, paid) = flume::bounded(1);
    let reply = ReplyTo::internal(tx, 0);
    leader.send(ShardMsg::Exec {
        cmd: pay("x"),
        reply,
    });
    let small = answer(small).body.map(|_| ());
    assert_eq!(small, Ok(()), "the small create");
    assert_eq!(answer(decided), Verdict::Aborted);
    let parked = answer(parked).body.map(|_| ());
    assert_eq!(parked, Ok(()), "the parked create");
    let paid = answer(paid).body.map(|_| ());
    assert_eq!(paid, Ok(()), "the payment after it");
    let applied = leader.status().last_applied;
    for node in cluster.running() {
        wait_until("every member applied the writes", || {
            node.status().last_applied >= applied
        });
    }
    assert_eq!(state_of(&exec(&cluster, || get("x"))), "paid");
}
