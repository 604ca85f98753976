//! Start-up, shutdown and the process's threads: one pinned glommio
//! executor per shard (each recovers its own log, then serves its mailbox),
//! a watchdog thread and a signal thread. Every shard's executor is also an
//! acceptor core (`crate::server::cores`): it serves the connections core 0
//! accepts and hands it, as tasks beside its shard — with one shard per
//! core, a thread of its own would share a core with a shard, and every
//! request would cross threads. Requests for a core's own shard's instances
//! stay on the thread; the others cross once each way through the
//! mailboxes. What each core runs once the shards opened is in
//! `crate::server::boot`.
//!
//! Shutdown (SIGTERM/SIGINT, see `crate::shutdown`) runs on core 0:
//! stop accepting, drain connections, sync and stop every shard, return —
//! and `main` exits 0. The watchdog stands down once shards are told to
//! stop, since stopped shards no longer heartbeat.
//!
//! Panics: a panic anywhere stops the process with a message (fail-stop) —
//! a shard whose task died would otherwise leave its instances silently
//! unreachable. The watchdog (`crate::watchdog`) aborts the process, naming
//! the shard, when a shard's executor stops making progress.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use corestate_raft::net::PeerTls;
use futures_rustls::TlsAcceptor;
use glommio::{LocalExecutorBuilder, Placement};
use shards::shard::events::Publication;
use shards::shard::{OpenReport, Shard, ShardConfig, ShardMsg};
use shards::wal::Frontier;

use crate::config::Config;
use crate::server::auth::TokenSet;
use crate::server::boot::{self, CoreJob, Shared};
use crate::server::catalog::Catalog;
use crate::server::context::{Limits, Router};
use crate::server::cores::Cores;
use crate::shutdown;

/// Registered I/O memory per executor; must fit the locked-memory limit.
pub const EXECUTOR_IO_MEMORY_BYTES: usize = 1024 * 1024;
/// Name of the file that records the data directory's layout.
pub const DATA_DIR_META_FILE: &str = "corestate.json";
/// Version of the on-disk layout. 2: WAL records count the entries before
/// them, and each shard's log has a manifest (`shards::wal::sequence`,
/// `shards::wal::manifest`).
pub const DATA_DIR_FORMAT_VERSION: u64 = 2;

/// Raise the soft limits this server needs to their hard ones: locked
/// memory (glommio's io_uring needs it) and open descriptors (each
/// connection holds its socket and, once it lends an answer, a duplicate
/// of it: `server::connection`).
fn raise_soft_limits() {
    for resource in [libc::RLIMIT_MEMLOCK, libc::RLIMIT_NOFILE] {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain libc calls with a valid pointer to a local struct.
        unsafe {
            if libc::getrlimit(resource, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
                lim.rlim_cur = lim.rlim_max;
                libc::setrlimit(resource, &lim);
            }
        }
    }
}

/// No transparent huge pages for this process. mimalloc asks for them
/// (`madvise(MADV_HUGEPAGE)` on its arenas), and the kernel then zeroes —
/// and, its memory fragmented, first compacts — a whole 2 MiB page on the
/// first touch of any of it, again after each time mimalloc gave freed
/// memory back. Where the state grows (creates) that showed as
/// `clear_page_erms` at 56–67 % of a node's CPU samples (3-node create
/// 16×16) and in the tail: one node, durable create 16×16, p99 17–19 ms
/// with huge pages and 2.3–5.8 ms without; throughput 65–70k → 96–126k
/// ops/s in two batches of runs, no gain in two noisier ones; applies
/// unchanged (bench-results/2026-12-05/thp-off-ab.md).
fn disable_transparent_huge_pages() {
    // SAFETY: a plain prctl on this process; it only sets a flag.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        tracing::warn!(
            "could not turn transparent huge pages off for this process: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed").to_owned();
        tracing::error!("fatal: panic in thread {name}: {info}; stopping the server");
        default(info);
        eprintln!("corestate: fatal: panic in thread {name}; stopping the server");
        std::process::abort();
    }));
}

/// Run this core's job (accepting; core `ACCEPTOR_SHARD` reports its end
/// on `done`), then wait for the shard loop to finish.
async fn serve_core(
    serving: glommio::Task<()>,
    job_rx: flume::Receiver<CoreJob>,
    done: Option<flume::Sender<Result<(), String>>>,
) {
    if let Ok(job) = job_rx.recv_async().await {
        let result = job().await;
        if let Some(done) = done {
            let _ = done.send(result);
        }
    }
    serving.await;
}

/// Refuse to start when the data directory was made with another shard
/// count: instances are placed by hash modulo the shard count.
fn check_data_dir(dir: &Path, shards: usize) -> Result<(), String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create data directory {}: {e}", dir.display()))?;
    let meta = dir.join(DATA_DIR_META_FILE);
    match std::fs::read(&meta) {
        Ok(bytes) => {
            let v: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", meta.display()))?;
            let format = v["format"].as_u64().unwrap_or(0);
            if format != DATA_DIR_FORMAT_VERSION {
                return Err(format!(
                    "data directory {} has layout version {format}; this corestate reads version                      {DATA_DIR_FORMAT_VERSION} only (version {format} was written by a development                      build before the first release; start with an empty data directory)",
                    dir.display()
                ));
            }
            let recorded = v["shards"].as_u64().unwrap_or(0) as usize;
            if recorded != shards {
                return Err(format!(
                    "data directory {} was created with {recorded} shard(s); start with --shards {recorded} \
                     (instances are placed by hash across shards, so the count cannot change)",
                    dir.display()
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let body = serde_json::json!({"format": DATA_DIR_FORMAT_VERSION, "shards": shards});
            let tmp = dir.join(format!("{DATA_DIR_META_FILE}.tmp"));
            std::fs::write(&tmp, body.to_string())
                .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|_| std::fs::rename(&tmp, &meta))
                .and_then(|_| std::fs::File::open(dir)?.sync_all())
                .map_err(|e| format!("cannot write {}: {e}", meta.display()))
        }
        Err(e) => Err(format!("cannot read {}: {e}", meta.display())),
    }
}

/// The shard whose executor also runs the acceptor: on a machine with as
/// many shards as cores, a separate acceptor thread would share a core with
/// a shard and make every request cross threads; here requests for this
/// shard's instances never leave the thread.
pub const ACCEPTOR_SHARD: usize = 0;

/// Run the server until SIGTERM/SIGINT has shut it down gracefully
/// (`Ok`). `tls` is the acceptor built from the configuration's
/// certificates (`crate::server::tls::load`), `None` for plain TCP;
/// `peer_tls` a cluster's peer links' (`corestate.cluster.tls`, loaded in
/// `main`). Returns an error message for start-up failures and for
/// a shutdown that could not confirm every shard's WAL sync.
pub fn run(
    config: Config,
    tls: Option<TlsAcceptor>,
    peer_tls: Option<PeerTls>,
) -> Result<(), String> {
    install_panic_hook();
    raise_soft_limits();
    disable_transparent_huge_pages();
    // Before anything slow: a signal during recovery is kept and acted on
    // as soon as the acceptor runs.
    let shutdown = shutdown::install()?;
    check_data_dir(&config.data_dir, config.shards)?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let frontier = Frontier::new();
    let mut mailboxes = Vec::new();
    let mut heartbeats = Vec::new();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<OpenReport, String>>();
    let (publish_tx, publish_rx) = flume::unbounded::<Publication>();
    let mut job_senders = Vec::new();
    let (done_tx, done_rx) = flume::bounded::<Result<(), String>>(1);
    let mut wiring = match &config.cluster {
        Some(cluster) => {
            crate::server::batch::set_txid_node(cluster.node_id);
            Some(crate::cluster::wire(config.shards, peer_tls)?)
        }
        None => None,
    };
    for id in 0..config.shards {
        let (job_tx, job_rx) = flume::bounded::<CoreJob>(1);
        job_senders.push(job_tx);
        let (tx, rx) = flume::unbounded::<ShardMsg>();
        // A cluster member's group server puts forwarded operations here
        // (a standalone shard keeps no sender of its own: its loop ends
        // when the server's are gone).
        let own_mailbox = config.cluster.as_ref().map(|_| tx.clone());
        mailboxes.push(tx);
        let heartbeat = Arc::new(AtomicU64::new(0));
        heartbeats.push(heartbeat.clone());
        let shard_cfg = ShardConfig {
            id,
            dir: config.data_dir.join(format!("shard-{id:03}")),
            fsync: config.fsync,
            segment_size_bytes: config.wal_segment_size_bytes,
            allow_instance_recreate: config.allow_instance_recreate,
            salvage: config.salvage,
            auto_compaction: config
                .compaction
                .enabled
                .then(|| shards::shard::AutoCompaction {
                    events_threshold: config.compaction.events_threshold,
                    size_threshold_bytes: config.compaction.size_threshold_mb * 1024 * 1024,
                    min_interval: Duration::from_secs(config.compaction.min_interval_secs),
                }),
        };
        let frontier = frontier.clone();
        let ready = ready_tx.clone();
        let publisher = publish_tx.clone();
        // Every executor is also an acceptor core; core 0's job (accepting,
        // then shutdown) reports its end (see the module comment).
        let done = (id == ACCEPTOR_SHARD).then(|| done_tx.clone());
        // A cluster member: its group's inbox, and on the acceptor's
        // executor the peer listener's directory.
        let member = match (&config.cluster, wiring.as_mut()) {
            (Some(cluster), Some(w)) => Some((
                cluster.clone(),
                w.inboxes[id].take().expect("one inbox per shard"),
                (id == ACCEPTOR_SHARD).then(|| w.directory.clone()),
                w.tls.clone(),
            )),
            _ => None,
        };
        let placement = match config.cores.cpu_of(id, cpus) {
            Some(cpu) => Placement::Fixed(cpu),
            None => Placement::Unbound,
        };
        LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{id}"))
            .io_memory(EXECUTOR_IO_MEMORY_BYTES)
            .spin_before_park(config.cores.spin_before_park(config.fsync))
            .spawn(move || async move {
                if let Some((cluster, inbox, directory, tls)) = member {
                    let peer_listener =
                        match directory.map(|d| crate::cluster::listen(&cluster, d, tls.clone())) {
                            Some(Err(e)) => {
                                let _ = ready.send(Err(e));
                                return;
                            }
                            listening => listening.map(Result::ok),
                        };
                    let opened = crate::cluster::open_member_shard(
                        &shard_cfg,
                        &cluster,
                        frontier,
                        heartbeat,
                        inbox,
                        own_mailbox.expect("a cluster member's mailbox"),
                        tls,
                    )
                    .await;
                    match opened {
                        Ok(m) => {
                            // Recovery's buffers were just freed.
                            shards::env::memory::release_freed_memory();
                            let _ = ready.send(Ok(m.report));
                            let serving =
                                glommio::spawn_local(m.shard.run_member(rx, Some(publisher)));
                            serve_core(serving, job_rx, done).await;
                            if let Err(e) = m.member.shutdown().await {
                                tracing::warn!("shard {id}: stopping its group member: {e}");
                            }
                            drop((m.peers, peer_listener));
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                        }
                    }
                    return;
                }
                let env = shards::env::Env::os(id);
                match Shard::open(&shard_cfg, env, frontier, heartbeat).await {
                    Ok((shard, report)) => {
                        // Recovery's buffers were just freed.
                        shards::env::memory::release_freed_memory();
                        let _ = ready.send(Ok(report));
                        let serving = glommio::spawn_local(shard.run(rx, Some(publisher)));
                        serve_core(serving, job_rx, done).await;
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                    }
                }
            })
            .map_err(|e| format!("cannot start shard {id}: {e}"))?;
    }
    drop(ready_tx);
    drop(publish_tx);
    let mut reports = Vec::new();
    for _ in 0..config.shards {
        match ready_rx.recv() {
            Ok(Ok(report)) => reports.push(report),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("a shard stopped during start-up".into()),
        }
    }
    reports.sort_by_key(|r| r.shard);
    for r in &reports {
        if r.scan.bytes_resynced > 0 {
            tracing::info!(
                "shard {}: wrote the last {} bytes of its log again and synced them (the log was not sealed by a graceful stop)",
                r.shard,
                r.scan.bytes_resynced
            );
        }
        if let Some(t) = &r.scan.torn_tail {
            tracing::warn!(
                "shard {}: torn write at the end of {} cut at byte {} ({} bytes discarded; none of it was acknowledged)",
                r.shard,
                t.path.display(),
                t.position,
                t.bytes_zeroed
            );
        }
        if let Some(s) = &r.scan.salvage {
            tracing::warn!(
                "shard {}: --salvage cut {} at byte {} ({}); dropped {} record(s) and {} later segment(s)",
                r.shard,
                s.path.display(),
                s.position,
                s.defect,
                s.records_dropped,
                s.segments_removed
            );
        }
    }
    let recovered_records: u64 = reports.iter().map(|r| r.counts.records).sum();
    let recovered_instances: u64 = reports.iter().map(|r| r.instances_active).sum();
    crate::watchdog::start(heartbeats, shutdown.clone());

    let start = reports.iter().map(|r| r.watermark).max().unwrap_or(0);
    let (cores, inboxes) = Cores::new(config.shards);
    let shared = Shared {
        cores,
        router: Router::new(mailboxes.clone()),
        catalog: Arc::new(Catalog::new(
            config.max_machine_versions,
            config.cluster.is_some(),
        )),
        tokens: Arc::new(TokenSet::new(
            config.auth_required,
            &config.auth_token_hashes,
        )),
        limits: Limits {
            max_inflight_requests_per_connection: config.max_inflight_requests_per_connection,
            max_batch_ops: config.max_batch_ops,
            max_connections: config.max_connections,
            idle_timeout: config.idle_timeout(),
            allow_flush_all: config.allow_flush_all,
            answer_buffer_per_connection_bytes: config.answer_buffer_per_connection_bytes,
            request_buffer_per_connection_bytes: config.request_buffer_per_connection_bytes,
        },
        answer_budget: shards::shard::budget::ServerBudget::new(config.answer_buffer_total_bytes),
        frontier: frontier.clone(),
        watch_demand: crate::watch::demand::WatchDemand::new(config.shards),
        tls: tls.clone(),
    };
    let jobs = boot::jobs(
        shared,
        inboxes,
        boot::Primary {
            config: config.clone(),
            reports,
            publications: publish_rx,
            mailboxes,
            shutdown,
            recovered_records,
            recovered_instances,
        },
        start,
    );
    for (core, (job, sender)) in jobs.into_iter().zip(&job_senders).enumerate() {
        sender
            .send(job)
            .map_err(|_| format!("shard {core} stopped during start-up"))?;
    }
    done_rx
        .recv()
        .unwrap_or_else(|_| Err("the acceptor's shard stopped".to_string()))
}
