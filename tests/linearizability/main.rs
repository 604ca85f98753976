//! Jepsen-style runs against the real binary (issue 14, item 14), on one
//! node and on a 3-node replicated cluster: concurrent clients hammer a
//! few instances of a machine with cycles and branches while the server
//! (on a cluster: the leader) is SIGKILLed and restarted; then every
//! instance's history must be linearizable, no acknowledged write may be
//! missing from the log, no logged write may lack a request that could
//! have made it, and a WATCH_ALL stream resumed across the kills (on a
//! cluster: at another node each time) must equal the committed log. On a
//! cluster every node's log must also be the leader's. Beside them, atomic
//! batches across the two shards must each be whole or absent, as their
//! answers say (`batches.rs`).
//!
//! `CORESTATE_LIN_SECS` (default 6) sets the load's length,
//! `CORESTATE_LIN_KILLS` (default 3; 2 on the cluster) the SIGKILLs spread
//! over it, `CORESTATE_LIN_PARTITIONS` (cluster only, default 1) the times
//! the leader is cut off from the others for `PARTITION_TIME`, and
//! `CORESTATE_TEST_SEED` repeats a run's choices, `CORESTATE_LIN_TLS=1`
//! runs the cluster's peer links over mutual TLS, and
//! `CORESTATE_LIN_SNAPSHOT_EVERY_ENTRIES=<n>` has the cluster's groups
//! snapshot every n entries (none otherwise; the log behind is kept whole).
//! Setting any of the first three writes the results to
//! bench-results/<date>/.

#[path = "../support/mod.rs"]
mod support;

mod batches;
mod client;
mod committed;
mod deployment;
// The cluster harness of tests/cluster and its fault proxies (this run
// uses part of them).
#[path = "../../raft/tests/support/fault_proxy.rs"]
mod fault_proxy;
#[allow(dead_code)]
#[path = "../cluster/harness.rs"]
mod harness;
// The Raft crate's test PKI (CORESTATE_LIN_TLS).
#[path = "../../raft/tests/support/peer_pki.rs"]
mod peer_pki;
mod results;
mod watch_resume;
mod watcher;
mod workload;

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use corestate_checker::{
    check_committed_log, check_history, check_watch_stream, Change, ClientLog, Clock, Committed,
    History, Machine,
};
use deployment::Deployment;
use peer_pki::PeerPki;
use support::{ids_on_shard, RawClient, SHARDS};
use watcher::{run_watcher, WatchControl};
use workload::{run_client, Rng, Target, INITIAL, TRANSITIONS};

/// Client threads, each with one request in flight.
const CLIENTS: usize = 8;
/// Instances per shard: few, so that clients contend on every one.
const INSTANCES_PER_SHARD: usize = 2;
const LOAD_SECS_DEFAULT: u64 = 6;
const KILLS_DEFAULT: u64 = 3;
/// Leader kills of the cluster run in the test command (each restart of a
/// node takes a few seconds on a debug build).
const CLUSTER_KILLS_DEFAULT: u64 = 2;
/// Leader partitions of the cluster run in the test command.
const CLUSTER_PARTITIONS_DEFAULT: u64 = 1;
/// How long a partition keeps the leader cut off: longer than an election
/// (150–300 ms), shorter than a turn's commit timeout (2 s).
const PARTITION_TIME: Duration = Duration::from_millis(1500);
/// Nodes of the cluster run.
const CLUSTER_NODES: u64 = 3;
/// How long every node may take to apply the leader's log after the run.
const REPLICAS_CATCH_UP: Duration = Duration::from_secs(20);
/// How long the server stays dead after each SIGKILL (clients fail
/// meanwhile).
const KILL_DOWNTIME: Duration = Duration::from_millis(200);
/// What a node logs when the order of its watch stream broke
/// (`src/watch/merge.rs`, `shards/src/shard/publishing.rs`).
const WATCH_ORDER_ERROR: &str = "watch order violated";
/// Random shift of each kill instant, at most this fraction of the
/// interval between kills (in percent).
const KILL_JITTER_PERCENT: u64 = 30;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Stops every thread of the run when the test leaves the scope, also by
/// a panic (otherwise the scope would wait for them forever).
struct StopOnDrop<'a> {
    stop: &'a AtomicBool,
    control: &'a WatchControl,
}

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.control.abandon.store(true, Ordering::SeqCst);
        self.control.draining.store(true, Ordering::SeqCst);
    }
}

/// The operations whose answers name an offset quoted in `problems`.
fn stream_context(history: &History, problems: &str) -> String {
    history
        .ops
        .iter()
        .filter(|op| match &op.outcome {
            corestate_checker::Outcome::Ok(corestate_checker::Reply::Applied {
                wal_offset,
                ..
            }) => problems.contains(&wal_offset.to_string()),
            corestate_checker::Outcome::Unknown => true,
            _ => false,
        })
        .map(|op| format!("  {op} (effect by {:?})\n", op.effect_by_ns))
        .collect()
}

#[test]
fn concurrent_clients_see_one_linearizable_node_across_sigkills() {
    let instances: Vec<String> = (0..SHARDS)
        .flat_map(|shard| ids_on_shard("lin", shard, INSTANCES_PER_SHARD))
        .collect();
    let faults = Faults {
        kills: KILLS_DEFAULT,
        partitions: 0,
    };
    run(Deployment::single(), &instances, faults, "linearizability");
}

#[test]
fn concurrent_clients_see_one_linearizable_cluster_across_leader_kills_and_partitions() {
    let instances: Vec<String> = (0..SHARDS)
        .flat_map(|shard| ids_on_shard("clin", shard, INSTANCES_PER_SHARD))
        .collect();
    let faults = Faults {
        kills: CLUSTER_KILLS_DEFAULT,
        partitions: env_u64("CORESTATE_LIN_PARTITIONS").unwrap_or(CLUSTER_PARTITIONS_DEFAULT),
    };
    // CORESTATE_LIN_TLS=1: the peer links over mutual TLS.
    let pki = std::env::var("CORESTATE_LIN_TLS")
        .is_ok_and(|v| v == "1")
        .then(PeerPki::generate);
    let cluster = Deployment::cluster(CLUSTER_NODES, pki.as_ref());
    let name = match (
        pki.is_some(),
        deployment::snapshot_every_entries().is_some(),
    ) {
        (true, true) => "cluster-linearizability-tls-snapshots",
        (true, false) => "cluster-linearizability-tls",
        (false, true) => "cluster-linearizability-snapshots",
        (false, false) => "cluster-linearizability",
    };
    run(cluster, &instances, faults, name);
}

/// The faults of a run, spread evenly over its load.
#[derive(Clone, Copy)]
struct Faults {
    kills: u64,
    partitions: u64,
}

impl Faults {
    /// Whether the `i`-th of all faults is a partition (the two kinds
    /// interleaved as evenly as their counts allow).
    fn is_partition(&self, i: u64) -> bool {
        let total = self.kills + self.partitions;
        (i + 1) * self.partitions / total > i * self.partitions / total
    }
}

fn run(mut deployment: Deployment, instances: &[String], faults: Faults, name: &str) {
    let secs = env_u64("CORESTATE_LIN_SECS").unwrap_or(LOAD_SECS_DEFAULT);
    let kills = env_u64("CORESTATE_LIN_KILLS").unwrap_or(faults.kills);
    let faults = Faults { kills, ..faults };
    let partitions = faults.partitions;
    let long_run = [
        "CORESTATE_LIN_SECS",
        "CORESTATE_LIN_KILLS",
        "CORESTATE_LIN_PARTITIONS",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok());
    let seed = env_u64("CORESTATE_TEST_SEED").unwrap_or_else(|| {
        let t = Instant::now().elapsed().as_nanos() as u64;
        (t ^ u64::from(std::process::id()).wrapping_mul(0x9e37_79b9)) | 1
    });
    let label = deployment.label();
    eprintln!(
        "linearizability run ({label}): {secs} s, {kills} kills, {partitions} partitions, \
         {CLIENTS} clients, seed {seed} (CORESTATE_TEST_SEED={seed} repeats it)"
    );
    let machine = Machine::new(INITIAL, TRANSITIONS);

    let clock = Clock::start();
    let target = Target::new(&deployment.ports());
    let first_leader = deployment.leader_index(0);
    let stop = AtomicBool::new(false);
    let control = WatchControl::new();
    let mut rng = Rng(seed);
    let load_started = Instant::now();
    // When each killed process was gone (reaped), on the clients' clock.
    let mut deaths_ns: Vec<u64> = Vec::new();
    let (logs, stats, watch_log, committed, final_reads) = thread::scope(|s| {
        let _guard = StopOnDrop {
            stop: &stop,
            control: &control,
        };
        let workers: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (clock, target, stop) = (clock, &target, &stop);
                s.spawn(move || run_client(c, seed, clock, instances, target, stop))
            })
            .collect();
        let watcher = s.spawn(|| run_watcher(&target, &control, first_leader));
        let batcher = s.spawn(|| batches::run_batcher(seed, &target, &stop));
        let interval = Duration::from_secs(secs) / ((kills + partitions) as u32 + 1);
        for i in 0..kills + partitions {
            let jitter_ms = interval.as_millis() as u64 * KILL_JITTER_PERCENT / 100;
            thread::sleep(interval - Duration::from_millis(rng.below(jitter_ms.max(1))));
            // Faults take each shard's leader in turn.
            let shard = (i as usize) % SHARDS;
            if faults.is_partition(i) {
                deployment.partition_leader(shard, PARTITION_TIME);
            } else {
                let kill = deployment
                    .kill_and_restart(shard, KILL_DOWNTIME, || deaths_ns.push(clock.now_ns()));
                target.set(kill.node, kill.port);
            }
        }
        thread::sleep(interval);
        stop.store(true, Ordering::SeqCst);
        let (logs, stats): (Vec<ClientLog>, Vec<_>) = workers
            .into_iter()
            .map(|w| w.join().expect("client thread"))
            .unzip();
        let sent = batcher.join().expect("batch client thread");
        deployment.settle_batches();
        let mut c = deployment.reader();
        let mut final_log = ClientLog::new(CLIENTS, clock);
        let final_reads = committed::final_reads(&mut c, &mut final_log, instances);
        let everything: Vec<String> = instances
            .iter()
            .cloned()
            .chain(batches::batch_instances(&sent))
            .collect();
        // The log every node holds once each has applied what its groups
        // committed. One node's own log is not enough on a cluster: a node
        // leads some groups and follows others, and WAL_READ shows what it
        // has applied — a lagging follower shows a prefix (a full test run
        // once saw "lost" writes that way: the reader followed a group whose
        // AppendEntries kept timing out on the loaded machine).
        let (whole_log, replicas) = agreed_log(&mut deployment, &mut c, &everything);
        let last_transition = whole_log
            .iter()
            .filter(|e| matches!(e.change, Change::Apply { .. }))
            .map(|e| e.offset)
            .max()
            .unwrap_or(0);
        control.drain_to.store(last_transition, Ordering::SeqCst);
        control.draining.store(true, Ordering::SeqCst);
        let watch_log = watcher.join().expect("watcher thread");
        let mut logs = logs;
        logs.push(final_log);
        (
            logs,
            stats,
            watch_log,
            (whole_log, replicas, sent),
            final_reads,
        )
    });
    let (whole_log, replicas, sent) = committed;
    let load = load_started.elapsed();
    let (committed, batch_log): (Vec<Committed>, Vec<Committed>) = whole_log
        .iter()
        .cloned()
        .partition(|c| instances.contains(&c.instance));
    let batch_check = batches::check_batches(&sent, &batch_log);

    let mut history = History::from_logs(logs);
    if deployment.deaths_bound_unknowns() {
        // A request in flight when its process died took effect before
        // the death or never.
        history.bound_unknowns_by_deaths(&deaths_ns);
    }
    let counts = history.counts();
    let durability = check_committed_log(&machine, &history, &committed, &final_reads);
    // Every write carried an idempotency key: the log settles which
    // unanswered ones took effect (checking it against every answer).
    let settled = history.settle_unknowns_by_log(&committed);
    let report = check_history(&machine, &history);
    // The stream holds the batches' transitions too.
    let stream = check_watch_stream(&watch_log.events, &whole_log, 0);
    // What the nodes themselves noticed: an event a merge took after
    // releasing past it, a shard watermark going down (their logs name it).
    let order_errors: Vec<String> = deployment
        .servers()
        .iter()
        .enumerate()
        .flat_map(|(node, server)| {
            server
                .stderr_lines_matching(WATCH_ORDER_ERROR)
                .into_iter()
                .map(move |line| format!("node {node} {line}"))
        })
        .collect();
    let unexpected: Vec<&String> = stats.iter().flat_map(|s| &s.unexpected).collect();
    let reconnects: usize = stats.iter().map(|s| s.reconnects).sum();
    let retryable: usize = stats.iter().map(|s| s.retryable).sum();

    let summary = format!(
        "{label}, seed {seed}: {secs} s load ({load:.1?} with restarts), {kills} SIGKILLs, \
         {partitions} leader partitions, \
         {CLIENTS} clients, {} instances\n{counts}\nlinearizability: {} in {:.1?} ({} search \
         steps)\nunknowns settled by the log: {settled:?}\ncommitted log: {} writes, {durability:?}\nreplicas: {replicas:?}\nwatch stream: \
         {} events over {} subscriptions: {stream:?} {}\natomic batches across shards: \
         {batch_check:?}\nwatch order errors in the node logs: {} (the first: {:?})\nclient reconnects {reconnects}, \
         retryable refusals {retryable}, unexpected errors {} (the first: {:?})",
        instances.len(),
        if report.is_linearizable() {
            "every instance linearizable".to_string()
        } else {
            format!("VIOLATION\n{}", report.failures())
        },
        report.elapsed,
        report.steps(),
        committed.len(),
        watch_log.events.len(),
        watch_log.subscriptions,
        watch_log.problem.as_deref().unwrap_or(""),
        order_errors.len(),
        order_errors.iter().take(3).collect::<Vec<_>>(),
        unexpected.len(),
        unexpected.iter().take(3).collect::<Vec<_>>(),
    );
    eprintln!("{summary}");
    if long_run {
        let anomalies = usize::from(!report.is_linearizable())
            + usize::from(durability.is_err())
            + usize::from(settled.is_err())
            + usize::from(stream.is_err())
            + usize::from(replicas.is_err())
            + usize::from(batch_check.is_err())
            + usize::from(!order_errors.is_empty());
        // The filter that runs this test alone.
        let filter = match deployment {
            Deployment::Cluster(_) => "cluster",
            _ => "node",
        };
        // The settings of the run beside the counts.
        let mut prefix = match &deployment {
            Deployment::Cluster(c) if c.peer_tls() => "CORESTATE_LIN_TLS=1 ".to_string(),
            _ => String::new(),
        };
        if let (Deployment::Cluster(_), Some(every)) =
            (&deployment, deployment::snapshot_every_entries())
        {
            prefix.push_str(&format!("CORESTATE_LIN_SNAPSHOT_EVERY_ENTRIES={every} "));
        }
        let path = results::write_results(
            name,
            secs,
            (kills, partitions),
            &format!(
                "# Linearizability run, {label}\n\n`{prefix}CORESTATE_LIN_SECS={secs} \
                 CORESTATE_LIN_KILLS={kills} CORESTATE_LIN_PARTITIONS={partitions} \
                 CORESTATE_TEST_SEED={seed} cargo test {}--test \
                 linearizability {filter} -- --nocapture`\n\nAnomalies: {anomalies}\n\n```\n\
                 {summary}\n```\n",
                if cfg!(debug_assertions) {
                    ""
                } else {
                    "--release "
                }
            ),
        );
        eprintln!("results written to {}", path.display());
    }

    assert!(
        report.is_linearizable(),
        "seed {seed}:\n{}",
        report.failures()
    );
    if let Err(problems) = &durability {
        panic!("seed {seed}: committed log vs history: {problems}");
    }
    assert!(
        order_errors.is_empty(),
        "seed {seed}: nodes logged watch order violations:\n{}",
        order_errors.join("\n")
    );
    if let Err(problems) = &settled {
        panic!("seed {seed}: idempotency keys in the log vs answers: {problems}");
    }
    if let Err(problems) = &stream {
        let around: Vec<String> = watch_log
            .resumes
            .iter()
            .map(|(at, from)| {
                let last = at.checked_sub(1).map(|i| &watch_log.events[i]);
                format!("resumed from {from} after {at} events (last {last:?})")
            })
            .collect();
        panic!(
            "seed {seed}: watch stream vs committed log: {problems}\nsubscriptions:\n  {}\n\
             deaths at {deaths_ns:?} ns\nhistory around the missing offsets:\n{}",
            around.join("\n  "),
            stream_context(&history, problems)
        );
    }
    if let Err(problem) = &replicas {
        panic!("seed {seed}: {problem}");
    }
    if let Err(problems) = &batch_check {
        panic!("seed {seed}: atomic batches: {problems}");
    }
    assert!(
        watch_log.problem.is_none(),
        "watcher: {:?}",
        watch_log.problem
    );
    assert!(unexpected.is_empty(), "unexpected answers: {unexpected:#?}");
    if deployment.deaths_bound_unknowns() {
        // A single server never refuses for want of a leader.
        assert_eq!(retryable, 0, "retryable refusals from a single node");
    }
    assert!(
        counts.by_kind_outcome[1][0] > 0,
        "no apply was acknowledged: the run proved nothing"
    );
    for server in deployment.servers() {
        let stderr = server.stderr();
        assert!(!stderr.contains("panicked"), "server panicked:\n{stderr}");
        // The last run must still be serving.
        server.raw().assert_alive();
    }
}

/// The log of `instances` (WAL_READ) the checks use, and whether every
/// replica holds it. A single server's is its own. On a cluster, every
/// running node's log is read until all are equal on two reads in a row
/// (each node applies every committed entry in time, and a group's leader
/// has applied every write it acknowledged, so the logs meet at the whole
/// committed log); nodes that still differ after `REPLICAS_CATCH_UP` are
/// reported, and the checks then use `reader`'s log.
fn agreed_log(
    deployment: &mut Deployment,
    reader: &mut RawClient,
    instances: &[String],
) -> (Vec<Committed>, Result<usize, String>) {
    if let Deployment::Single(_) = deployment {
        return (committed::read_committed(reader, instances), Ok(0));
    }
    let started = Instant::now();
    let mut previous: Option<Vec<Committed>> = None;
    loop {
        let mut logs: Vec<(u16, Vec<Committed>)> = deployment
            .servers()
            .into_iter()
            .filter_map(|s| s.is_running().then(|| (s.port(), s.raw())))
            .map(|(port, mut c)| (port, committed::read_committed(&mut c, instances)))
            .collect();
        let (_, first) = logs.swap_remove(0);
        let differing = logs.iter().find(|(_, log)| *log != first);
        match differing {
            None if previous.as_ref() == Some(&first) => return (first, Ok(logs.len() + 1)),
            None => previous = Some(first),
            Some((port, log)) if started.elapsed() > REPLICAS_CATCH_UP => {
                let at = log.iter().zip(&first).position(|(a, b)| a != b);
                let around = |l: &[Committed]| match at {
                    Some(i) => format!("{:?}", &l[i.saturating_sub(1)..(i + 2).min(l.len())]),
                    None => String::new(),
                };
                let problem = format!(
                    "after {REPLICAS_CATCH_UP:?} the node on port {port} holds {} writes, \
                     another {}; first difference at {at:?}: {} against {}",
                    log.len(),
                    first.len(),
                    around(log),
                    around(&first)
                );
                return (committed::read_committed(reader, instances), Err(problem));
            }
            Some(_) => previous = None,
        }
        thread::sleep(Duration::from_millis(100));
    }
}
