//! Shard loops as group members, end to end: three nodes, each running the
//! real shard loop (`Shard::run_member`) over its group member (WAL log,
//! `every_write`, peers over TCP), driven with the server's own shard
//! messages. The leader's loop executes and proposes its turns; followers'
//! loops replay them and forward what needs the leader to it; a stopped
//! leader is replaced and its successor has every acknowledged write; a
//! leader cut off from its quorum tells its clients the outcome is unknown,
//! rebuilds from the committed log and stays consistent with the group.
//! Snapshots are built from a loop's state and installed into another's.

#[path = "support/group_node.rs"]
mod group_node;
#[path = "support/loop_node.rs"]
mod loop_node;
#[path = "support/member_thread.rs"]
mod member_thread;
#[path = "support/memlock.rs"]
mod memlock;
#[path = "support/turns.rs"]
mod turns;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use corestate_raft::shard_group::ENTRY_RECORDS_BYTES_MAX;
use loop_node::{on_leader, retryable, wait_until, LoopNode, STEP_TIMEOUT};
use openraft::{BasicNode, Config, ServerState, SnapshotPolicy};

/// Entries between snapshots (small: the tests' logs are short).
const SNAPSHOT_EVERY_ENTRIES: u64 = 3;
use serde_json::{json, Value};
use shards::error::ErrorCode;
use shards::machine::definition::{parse_definition, MachineDef};
use shards::shard::budget::{ResponseBudget, ServerBudget};
use shards::shard::{ApplyEvent, BatchVote, Command, CreateInstance, ReplyTo, ShardMsg, Verdict};
use shards::wal::entry::{write_create_instance, write_put_machine, CreateFields};
use shards::wal::record::RECORD_HEADER_BYTES;

struct Cluster {
    nodes: BTreeMap<u64, LoopNode>,
    config: Arc<Config>,
    dirs: BTreeMap<u64, tempfile::TempDir>,
    /// Every member's peer address, running or not (a restart keeps it).
    addrs: BTreeMap<u64, SocketAddr>,
}

impl Cluster {
    fn start() -> Cluster {
        Cluster::start_with(|_| {})
    }

    /// A cluster whose Raft config `tune` adjusts.
    fn start_with(tune: impl FnOnce(&mut Config)) -> Cluster {
        // Snapshots every few entries, and no log kept behind them: the
        // loop's look at its state builds them, and a restarted or lagging
        // member installs one into its loop.
        let mut config = Config {
            cluster_name: loop_node::CLUSTER_NAME.to_string(),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY_ENTRIES),
            max_in_snapshot_log_to_keep: 0,
            ..Config::default()
        };
        tune(&mut config);
        let config = Arc::new(config.validate().expect("valid config"));
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            config,
            dirs: BTreeMap::new(),
            addrs: BTreeMap::new(),
        };
        let mut books = BTreeMap::new();
        for id in [1, 2, 3] {
            let dir = tempfile::tempdir().expect("temp dir");
            let (book, peers) = flume::bounded(1);
            let node = LoopNode::start(
                id,
                dir.path().to_path_buf(),
                "127.0.0.1:0".parse().unwrap(),
                cluster.config.clone(),
                peers,
            );
            cluster.addrs.insert(id, node.addr);
            cluster.nodes.insert(id, node);
            cluster.dirs.insert(id, dir);
            books.insert(id, book);
        }
        for (id, book) in books {
            book.send(cluster.peers_of(id)).expect("node waits");
        }
        let voters = cluster
            .nodes
            .values()
            .map(|n| (n.id, BasicNode::new(n.addr.to_string())))
            .collect();
        cluster.nodes[&1].initialize(voters);
        cluster
    }

    fn peers_of(&self, id: u64) -> BTreeMap<u64, SocketAddr> {
        let mut peers = self.addrs.clone();
        peers.remove(&id);
        peers
    }

    fn running(&self) -> Vec<&LoopNode> {
        self.nodes.values().collect()
    }

    /// The leader the running members agree on.
    fn leader(&self) -> u64 {
        let started = std::time::Instant::now();
        loop {
            let statuses: Vec<_> = self.nodes.values().map(|n| (n.id, n.status())).collect();
            let leader = statuses
                .iter()
                .find(|(_, s)| s.state == ServerState::Leader)
                .map(|&(id, _)| id);
            if let Some(id) = leader {
                if statuses.iter().all(|(_, s)| s.leader == Some(id)) {
                    return id;
                }
            }
            assert!(
                started.elapsed() < STEP_TIMEOUT,
                "no agreed leader within {STEP_TIMEOUT:?}: {statuses:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn stop(&mut self, id: u64) -> SocketAddr {
        let mut node = self.nodes.remove(&id).expect("a running node");
        node.stop();
        node.addr
    }

    /// Start node `id` again on its directory and address.
    fn restart(&mut self, id: u64, addr: SocketAddr) {
        let (book, peers) = flume::bounded(1);
        let dir = self.dirs[&id].path().to_path_buf();
        let node = LoopNode::start(id, dir, addr, self.config.clone(), peers);
        book.send(self.peers_of(id)).expect("node waits");
        self.nodes.insert(id, node);
    }
}

fn create(id: &str) -> Command {
    Command::Create(CreateInstance {
        instance_id: id.to_string(),
        machine: "order".into(),
        version: 1,
        initial_ctx: json!({"amount": 10}),
        idempotency_key: None,
    })
}

/// PAY under idempotency key `key`: a retry after an unknown outcome gets
/// the first answer, never a second transition.
fn pay_keyed(id: &str, key: &str) -> Command {
    Command::Apply(ApplyEvent {
        instance_id: id.to_string(),
        event: "PAY".into(),
        payload: json!({}),
        expected_state: None,
        expected_wal_offset: None,
        event_id: None,
        idempotency_key: Some(key.to_string()),
    })
}

fn pay(id: &str) -> Command {
    pay_keyed(id, &format!("pay-{id}"))
}

fn get(id: &str) -> Command {
    Command::Get {
        instance_id: id.to_string(),
    }
}

fn state_of(answer: &Value) -> &str {
    answer["state"].as_str().expect("a state")
}

fn offset_of(answer: &Value) -> u64 {
    answer["wal_offset"].as_u64().expect("an offset")
}

fn exec(cluster: &Cluster, cmd: impl Fn() -> Command) -> Value {
    on_leader(&cluster.running(), |n| n.exec(cmd())).expect("the leader runs it")
}

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

/// Entries of megabytes keep an unoptimized build's loops busy for longer
/// than the default election timeout: the lead would move.
fn patient_elections(config: &mut Config) {
    config.heartbeat_interval = 500;
    config.election_timeout_min = 5_000;
    config.election_timeout_max = 10_000;
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
    let cluster = Cluster::start_with(patient_elections);
    let leader = cluster.leader();
    let installed = on_leader(&cluster.running(), |n| {
        n.install("order", &turns::order_machine())
    });
    assert_eq!(installed, Ok(true));
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
    let cluster = Cluster::start_with(patient_elections);
    let leader = &cluster.nodes[&cluster.leader()];
    let installed = on_leader(&cluster.running(), |n| {
        n.install("order", &turns::order_machine())
    });
    assert_eq!(installed, Ok(true));
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
    let cluster = Cluster::start_with(patient_elections);
    let leader = &cluster.nodes[&cluster.leader()];
    let installed = on_leader(&cluster.running(), |n| {
        n.install("order", &turns::order_machine())
    });
    assert_eq!(installed, Ok(true));
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
