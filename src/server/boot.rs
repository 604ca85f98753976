//! What each acceptor core runs once the shards have opened
//! (`crate::server::cores` says why every core is one).
//!
//! Core 0 (the primary): resolve cross-shard batches a crash left in doubt,
//! load the machine catalog and complete half-done installs, start the
//! primary watch merge (relaying to the other cores), the webhooks'
//! delivery tasks, the metrics endpoint, the HTTP API and the listener; accept until shutdown is requested; then run the
//! graceful sequence (`crate::shutdown`) across every core and shard.
//!
//! Every other core: build its context with a watch-merge replica and serve
//! what core 0 hands it (`cores::control_loop`), until its shard stops.

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_rustls::TlsAcceptor;
use shards::shard::budget::ServerBudget;
use shards::shard::events::Publication;
use shards::shard::{OpenReport, ShardMsg, Verdict};
use shards::wal::Frontier;

use super::acceptor::accept_loop;
use super::auth::TokenSet;
use super::catalog::{install_everywhere, Catalog};
use super::context::{Connections, Limits, Router, ServerCtx};
use super::cores::{control_loop, CoreMsg, Cores};
use super::refusals::{RefusalLog, REFUSAL_WARNING_WINDOW_SECS};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::shutdown::{self, ShutdownRequest};
use crate::watch::demand::{Seat, WatchDemand};
use crate::watch::merge::Merger;
use crate::webhooks::Webhooks;

/// The acceptor's work for one core, built on the main thread and run on
/// that core's executor (its futures are not `Send`; the closure is).
pub type CoreJob = Box<
    dyn FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>>>> + Send,
>;

/// What every acceptor core's context shares or copies.
#[derive(Clone)]
pub struct Shared {
    pub cores: Arc<Cores>,
    pub router: Router,
    pub catalog: Arc<Catalog>,
    pub tokens: Arc<TokenSet>,
    pub limits: Limits,
    pub answer_budget: Arc<ServerBudget>,
    pub frontier: Frontier,
    pub tls: Option<TlsAcceptor>,
    /// Which cores' merges have watchers (`crate::watch::demand`).
    pub watch_demand: Arc<WatchDemand>,
}

/// What only core 0 needs.
pub struct Primary {
    pub config: Config,
    pub reports: Vec<OpenReport>,
    pub publications: flume::Receiver<Publication>,
    pub mailboxes: Vec<flume::Sender<ShardMsg>>,
    pub shutdown: ShutdownRequest,
    pub recovered_records: u64,
    pub recovered_instances: u64,
}

/// One job per core, core 0's first. `start`: the offset below which every
/// event is history when the shards opened — the largest of their
/// watermarks (`Merger::new`); the merges start there.
pub fn jobs(
    shared: Shared,
    inboxes: Vec<flume::Receiver<CoreMsg>>,
    primary: Primary,
    start: u64,
) -> Vec<CoreJob> {
    let mut relays = Vec::new();
    let mut jobs: Vec<CoreJob> = Vec::new();
    let mut inboxes = inboxes.into_iter();
    let inbox0 = inboxes.next();
    for (i, inbox) in inboxes.enumerate() {
        let core = i + 1;
        let (relay_tx, relay_rx) = flume::unbounded::<Publication>();
        relays.push(relay_tx);
        let shared = shared.clone();
        jobs.push(Box::new(move || {
            Box::pin(async move {
                let merger = Rc::new(RefCell::new(
                    Merger::new(vec![start])
                        .with_frontier(shared.frontier.clone())
                        .with_seat(Seat {
                            demand: shared.watch_demand.clone(),
                            core,
                        }),
                ));
                glommio::spawn_local(crate::watch::merge_task::run(
                    merger.clone(),
                    relay_rx,
                    Vec::new(),
                    Vec::new(),
                ))
                .detach();
                let tls = shared.tls.clone();
                let ctx = context(core, shared, merger, None);
                glommio::spawn_local(flush_refusal_log(ctx.clone())).detach();
                glommio::spawn_local(control_loop(ctx, inbox, tls)).detach();
                Ok(())
            })
        }));
    }
    let primary_job: CoreJob = Box::new(move || {
        Box::pin(async move {
            let inbox = inbox0.ok_or("no acceptor core")?;
            run_primary(shared, inbox, primary, relays).await
        })
    });
    jobs.insert(0, primary_job);
    jobs
}

fn context(
    core: usize,
    shared: Shared,
    merger: Rc<RefCell<Merger>>,
    webhooks: Option<Rc<Webhooks>>,
) -> Rc<ServerCtx> {
    Rc::new(ServerCtx {
        core,
        cores: shared.cores,
        router: shared.router,
        merger,
        catalog: shared.catalog,
        tokens: shared.tokens,
        limits: shared.limits,
        metrics: Metrics::new(),
        refusals: RefusalLog::new(),
        conns: Connections::default(),
        answer_budget: shared.answer_budget,
        webhooks,
    })
}

async fn run_primary(
    shared: Shared,
    inbox: flume::Receiver<CoreMsg>,
    p: Primary,
    relays: Vec<flume::Sender<Publication>>,
) -> Result<(), String> {
    let config = p.config;
    let tls = shared.tls.clone();
    resolve_in_doubt(&shared.router, &p.reports).await?;
    if let Some(cluster) = &config.cluster {
        let mailboxes = shared.router.all().to_vec();
        let after_ms = cluster.in_doubt_resolve_after_ms;
        glommio::spawn_local(resolve_stale_loop(mailboxes, after_ms)).detach();
    }
    let mut merger = Merger::new(p.reports.iter().map(|r| r.watermark).collect())
        .with_frontier(shared.frontier.clone())
        .with_seat(Seat {
            demand: shared.watch_demand.clone(),
            core: 0,
        });
    if !relays.is_empty() {
        merger = merger.relaying();
    }
    let merger = Rc::new(RefCell::new(merger));
    glommio::spawn_local(crate::watch::merge_task::run(
        merger.clone(),
        p.publications,
        p.mailboxes,
        relays,
    ))
    .detach();
    let catalog = shared.catalog.clone();
    catalog.load(p.reports.iter().flat_map(|r| r.machines.iter().cloned()));
    // A PUT acknowledged on some shards before a crash is completed on the
    // others, so every shard knows every machine again. Not on a cluster
    // node: its groups' logs hold the machines, an install needs each
    // group's leader (which may be another node, or none yet while the
    // node starts). (With more than one shard per node, a PUT that reached
    // only some groups is completed by the client's retry: on a cluster a
    // PUT of a machine shard 0's group has installs it again everywhere.)
    let reinstall = if catalog.clustered() {
        Vec::new()
    } else {
        catalog.installed()
    };
    for def in reinstall {
        let raw = Arc::new(def.normalized_value());
        if let Err(e) = install_everywhere(&shared.router, &def, raw).await {
            return Err(format!(
                "cannot reinstall machine {} v{}: {e}",
                def.machine, def.version
            ));
        }
    }
    let machines = catalog.installed().len();
    let webhooks = Webhooks::load(&config.data_dir)?;
    let ctx = context(0, shared, merger, Some(webhooks.clone()));
    webhooks.start_all(&ctx);
    let listener = glommio::net::TcpListener::bind(config.bind)
        .map_err(|e| format!("cannot listen on {}: {e}", config.bind))?;
    if config.metrics.enabled {
        let metrics_listener =
            glommio::net::TcpListener::bind(config.metrics.bind_addr).map_err(|e| {
                format!(
                    "cannot listen for metrics on {}: {e}",
                    config.metrics.bind_addr
                )
            })?;
        glommio::spawn_local(crate::metrics::http::serve(ctx.clone(), metrics_listener)).detach();
    }
    // The HTTP API (served on core 0) stops accepting when this sender is
    // dropped.
    let http_stop = match config.http_listen {
        Some(addr) => {
            let http_listener = glommio::net::TcpListener::bind(addr)
                .map_err(|e| format!("cannot listen for the HTTP API on {addr}: {e}"))?;
            let (stop_tx, stop_rx) = flume::bounded::<()>(1);
            glommio::spawn_local(crate::http::serve(
                ctx.clone(),
                http_listener,
                tls.clone(),
                stop_rx,
            ))
            .detach();
            Some(stop_tx)
        }
        None => None,
    };
    glommio::spawn_local(flush_refusal_log(ctx.clone())).detach();
    glommio::spawn_local(control_loop(ctx.clone(), inbox, tls.clone())).detach();
    tracing::info!(
        "corestate {} listening on {}{} | http {} | shards {} ({}, spin before park {} µs) | data dir {} | fsync {} | auth {} | metrics {} | recovered {} records, {} machines, {} active instances",
        env!("CARGO_PKG_VERSION"),
        config.bind,
        match (&tls, config.tls.require_client_cert) {
            (None, _) => "",
            (Some(_), false) => " (TLS)",
            (Some(_), true) => " (TLS, client certificates required)",
        },
        match config.http_listen {
            Some(addr) if tls.is_some() => format!("https://{addr}/v1"),
            Some(addr) => format!("http://{addr}/v1"),
            None => "off".to_string(),
        },
        config.shards,
        config.cores,
        config.cores.spin_before_park(config.fsync).as_micros(),
        config.data_dir.display(),
        config.fsync,
        if config.auth_required { "required" } else { "off" },
        if config.metrics.enabled {
            format!("http://{}/metrics", config.metrics.bind_addr)
        } else {
            "off".to_string()
        },
        p.recovered_records,
        machines,
        p.recovered_instances
    );
    let signal = accept_loop(ctx.clone(), &listener, tls, &p.shutdown).await;
    drop(listener);
    drop(http_stop);
    shut_down(&ctx, &p.shutdown, signal).await
}

/// Cross-shard batches a crash left prepared but undecided on some shard:
/// committed if their decider's log holds the Commit, else abandoned
/// (presumed abort). Done before the first client is served.
async fn resolve_in_doubt(router: &Router, reports: &[OpenReport]) -> Result<(), String> {
    let resolved = shards::coordinator::resolve_in_doubt(router.all(), reports)
        .await
        .map_err(|e| e.message)?;
    for r in &resolved {
        tracing::warn!(
            "shard {}: batch {} was prepared but undecided at the crash; decider shard {} {}",
            r.shard,
            r.txid,
            r.decider,
            if r.verdict == Verdict::Committed {
                "committed it: applied"
            } else {
                "never committed it: dropped"
            }
        );
    }
    if !resolved.is_empty() {
        tracing::info!(
            "resolved {} cross-shard batch part(s) left in doubt",
            resolved.len()
        );
    }
    Ok(())
}

/// How often a cluster node looks for cross-shard batch parts left in
/// doubt (`shards::coordinator::resolve_stale`).
const IN_DOUBT_CHECK_INTERVAL_MS: u64 = 1_000;

/// On a cluster node: settle, every `IN_DOUBT_CHECK_INTERVAL_MS`, the
/// cross-shard parts its shards lead that stayed undecided for `after_ms`
/// (their coordinator's node died, or a decision was lost with a leader).
/// Ends when the shards are gone.
async fn resolve_stale_loop(mailboxes: Vec<flume::Sender<ShardMsg>>, after_ms: u64) {
    let every = Duration::from_millis(IN_DOUBT_CHECK_INTERVAL_MS);
    // Parts whose decider forgot their batch, reported once each (they
    // come back every round while they stay in doubt).
    let mut forgotten: HashSet<(usize, u64)> = HashSet::new();
    loop {
        glommio::timer::sleep(every).await;
        let Ok(resolved) = shards::coordinator::resolve_stale(&mailboxes, after_ms).await else {
            return;
        };
        let mut still_forgotten = HashSet::new();
        for r in resolved {
            let outcome = match r.verdict {
                Verdict::Committed => "had committed it: applied",
                Verdict::Aborted => "aborted it: dropped",
                Verdict::Undecided => continue, // not among what it returns
                Verdict::Forgotten => {
                    still_forgotten.insert((r.shard, r.txid));
                    if forgotten.contains(&(r.shard, r.txid)) {
                        continue;
                    }
                    tracing::error!(
                        "shard {}: batch {} stayed undecided and its decider shard {} no longer \
                         knows whether it committed it (it forgot batches this old, see \
                         COMMITTED_BATCH_IDS_KEPT_MAX): the part stays in doubt and its \
                         instances locked until an operator rules on it: CLUSTER_RESOLVE_BATCH \
                         {{\"txid\": \"{}\", \"outcome\": \"commit\" or \"abort\"}}",
                        r.shard,
                        r.txid,
                        r.decider,
                        r.txid
                    );
                    continue;
                }
            };
            tracing::warn!(
                "shard {}: batch {} stayed undecided; decider shard {} {outcome}",
                r.shard,
                r.txid,
                r.decider
            );
        }
        forgotten = still_forgotten;
    }
}

/// The graceful sequence after the listener closed (see `crate::shutdown`).
async fn shut_down(
    ctx: &Rc<ServerCtx>,
    shutdown: &ShutdownRequest,
    signal: &str,
) -> Result<(), String> {
    let started = Instant::now();
    tracing::info!("{signal}: stopped accepting connections");
    // A standalone shard answers at once (it leads no group).
    let handover = Instant::now();
    for (shard, done) in shutdown::hand_over_leadership(&ctx.router)
        .await
        .into_iter()
        .enumerate()
    {
        match done {
            Some(Ok(Some(node))) => tracing::info!(
                "shard {shard}: handed its group's lead to node {node} in {} ms",
                handover.elapsed().as_millis()
            ),
            Some(Ok(None)) => {}
            Some(Err(e)) => tracing::warn!("shard {shard}: could not hand over its lead: {e}"),
            None => tracing::warn!(
                "shard {shard}: no hand-over of its lead within {} ms",
                shutdown::SHUTDOWN_HANDOVER_TIMEOUT_MS
            ),
        }
    }
    let open = ctx.cores.open_total();
    let abandoned = shutdown::drain_all_cores(ctx).await;
    if let Some(webhooks) = &ctx.webhooks {
        webhooks.save_cursors().await;
    }
    shutdown.mark_begun();
    let unsynced = shutdown::stop_shards(&ctx.router).await;
    if !unsynced.is_empty() {
        return Err(format!(
            "shutdown: shard(s) {unsynced:?} did not confirm their WAL sync within {} ms",
            shutdown::SHUTDOWN_SHARD_SYNC_TIMEOUT_MS
        ));
    }
    tracing::info!(
        "shutdown complete in {} ms: {} of {open} connection(s) finished cleanly, every shard's WAL synced",
        started.elapsed().as_millis(),
        open - abandoned.min(open)
    );
    Ok(())
}

/// Ends the refusal log's windows on time, so suppressed warnings are
/// counted in the log even when the flood stopped.
async fn flush_refusal_log(ctx: Rc<ServerCtx>) {
    loop {
        glommio::timer::sleep(Duration::from_secs(REFUSAL_WARNING_WINDOW_SECS)).await;
        ctx.refusals.flush();
    }
}
