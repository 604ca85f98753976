//! Jepsen-style run against the real binary (issue 14, item 14, on one
//! node): concurrent clients hammer a few instances of a machine with
//! cycles and branches while the server is SIGKILLed and restarted; then
//! every instance's history must be linearizable, no acknowledged write
//! may be missing from the log, no logged write may lack a request that
//! could have made it, and a WATCH_ALL stream resumed across the restarts
//! must equal the committed log.
//!
//! `CORESTATE_LIN_SECS` (default 6) sets the load's length,
//! `CORESTATE_LIN_KILLS` (default 3) the SIGKILLs spread over it, and
//! `CORESTATE_TEST_SEED` repeats a run's choices. Setting either of the
//! first two writes the results to bench-results/<date>/.

#[path = "../support/mod.rs"]
mod support;

mod client;
mod committed;
mod results;
mod watch_resume;
mod watcher;
mod workload;

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use corestate_checker::{
    check_committed_log, check_history, check_watch_stream, Change, ClientLog, Clock, History,
    Machine,
};
use support::{ids_on_shard, put_machine, Server, SHARDS};
use watcher::{run_watcher, WatchControl};
use workload::{run_client, Rng, Target, INITIAL, MACHINE, TRANSITIONS};

/// Client threads, each with one request in flight.
const CLIENTS: usize = 8;
/// Instances per shard: few, so that clients contend on every one.
const INSTANCES_PER_SHARD: usize = 2;
const LOAD_SECS_DEFAULT: u64 = 6;
const KILLS_DEFAULT: u64 = 3;
/// How long the server stays dead after each SIGKILL (clients fail
/// meanwhile).
const KILL_DOWNTIME: Duration = Duration::from_millis(200);
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
    let secs = env_u64("CORESTATE_LIN_SECS").unwrap_or(LOAD_SECS_DEFAULT);
    let kills = env_u64("CORESTATE_LIN_KILLS").unwrap_or(KILLS_DEFAULT);
    let long_run =
        std::env::var("CORESTATE_LIN_SECS").is_ok() || std::env::var("CORESTATE_LIN_KILLS").is_ok();
    let seed = env_u64("CORESTATE_TEST_SEED").unwrap_or_else(|| {
        let t = Instant::now().elapsed().as_nanos() as u64;
        (t ^ u64::from(std::process::id()).wrapping_mul(0x9e37_79b9)) | 1
    });
    eprintln!(
        "linearizability run: {secs} s, {kills} kills, {CLIENTS} clients, seed {seed} \
         (CORESTATE_TEST_SEED={seed} repeats it)"
    );
    let machine = Machine::new(INITIAL, TRANSITIONS);
    let instances: Vec<String> = (0..SHARDS)
        .flat_map(|shard| ids_on_shard("lin", shard, INSTANCES_PER_SHARD))
        .collect();
    let mut server = Server::start(&[]);
    put_machine(&mut server.raw(), MACHINE, workload::definition());

    let clock = Clock::start();
    let target = Target::new(server.port());
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
                let (clock, instances, target, stop) = (clock, &instances, &target, &stop);
                s.spawn(move || run_client(c, seed, clock, instances, target, stop))
            })
            .collect();
        let watcher = s.spawn(|| run_watcher(&target, &control));
        let interval = Duration::from_secs(secs) / (kills as u32 + 1);
        for _ in 0..kills {
            let jitter_ms = interval.as_millis() as u64 * KILL_JITTER_PERCENT / 100;
            thread::sleep(interval - Duration::from_millis(rng.below(jitter_ms.max(1))));
            server.sigkill();
            deaths_ns.push(clock.now_ns());
            thread::sleep(KILL_DOWNTIME);
            server.restart();
            target.set(server.port());
        }
        thread::sleep(interval);
        stop.store(true, Ordering::SeqCst);
        let (logs, stats): (Vec<ClientLog>, Vec<_>) = workers
            .into_iter()
            .map(|w| w.join().expect("client thread"))
            .unzip();
        let mut c = server.raw();
        let mut final_log = ClientLog::new(CLIENTS, clock);
        let final_reads = committed::final_reads(&mut c, &mut final_log, &instances);
        let committed = committed::read_committed(&mut c, &instances);
        let last_transition = committed
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
        (logs, stats, watch_log, committed, final_reads)
    });
    let load = load_started.elapsed();

    let mut history = History::from_logs(logs);
    // A request in flight when its process died took effect before the
    // death or never.
    history.bound_unknowns_by_deaths(&deaths_ns);
    let counts = history.counts();
    let report = check_history(&machine, &history);
    let durability = check_committed_log(&machine, &history, &committed, &final_reads);
    let stream = check_watch_stream(&watch_log.events, &committed, 0);
    let unexpected: Vec<&String> = stats.iter().flat_map(|s| &s.unexpected).collect();
    let reconnects: usize = stats.iter().map(|s| s.reconnects).sum();

    let summary = format!(
        "seed {seed}: {secs} s load ({load:.1?} with restarts), {kills} SIGKILLs, {CLIENTS} \
         clients, {} instances\n{counts}\nlinearizability: {} in {:.1?} ({} search steps)\n\
         committed log: {} writes, {durability:?}\nwatch stream: {} events over {} \
         subscriptions: {stream:?} {}\nclient reconnects {reconnects}, unexpected errors {}",
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
        unexpected.len(),
    );
    eprintln!("{summary}");
    if long_run {
        let anomalies = usize::from(!report.is_linearizable())
            + usize::from(durability.is_err())
            + usize::from(stream.is_err());
        let path = results::write_results(
            secs,
            kills,
            &format!(
                "# Linearizability run, single node\n\n`CORESTATE_LIN_SECS={secs} \
                 CORESTATE_LIN_KILLS={kills} CORESTATE_TEST_SEED={seed} cargo test {}--test \
                 linearizability -- --nocapture`\n\nAnomalies: {anomalies}\n\n```\n{summary}\n```\n",
                if cfg!(debug_assertions) { "" } else { "--release " }
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
    if let Err(problems) = &stream {
        let around: Vec<String> = watch_log
            .resumes
            .iter()
            .map(|(at, from)| {
                let last = at.checked_sub(1).map(|i| &watch_log.events[i]);
                format!("resumed from {from} after {at} events (last {last:?})")
            })
            .collect();
        let deaths: Vec<u64> = deaths_ns.clone();
        panic!(
            "seed {seed}: watch stream vs committed log: {problems}\nsubscriptions:\n  {}\n\
             deaths at {deaths:?} ns\nhistory around the missing offsets:\n{}",
            around.join("\n  "),
            stream_context(&history, problems)
        );
    }
    assert!(
        watch_log.problem.is_none(),
        "watcher: {:?}",
        watch_log.problem
    );
    assert!(unexpected.is_empty(), "unexpected answers: {unexpected:#?}");
    assert!(
        counts.by_kind_outcome[1][0] > 0,
        "no apply was acknowledged: the run proved nothing"
    );
    let stderr = server.stderr();
    assert!(!stderr.contains("panicked"), "server panicked:\n{stderr}");
    // The last run must still be serving.
    server.raw().assert_alive();
}
