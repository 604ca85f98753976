//! Graceful shutdown on SIGTERM or SIGINT.
//!
//! A signal thread (signal-hook) turns the first SIGTERM/SIGINT into a
//! message to core 0's acceptor, which then, in order:
//! 1. stops accepting (the listening socket is closed, so new connections
//!    are refused by the kernel);
//! 2. on a cluster node, hands the lead of every shard group it leads to
//!    the most caught-up other member and waits until that one leads (at
//!    most `SHUTDOWN_HANDOVER_TIMEOUT_MS`): the group has a leader again
//!    without waiting for an election timeout, and requests still arriving
//!    on this node's open connections are forwarded to it;
//! 3. asks every connection, on every acceptor core, to stop reading:
//!    requests already received are answered, nothing more is read, and
//!    each connection closes once every answer it owes is written (watch
//!    connections close after their pending writes); it waits up to
//!    `SHUTDOWN_DRAIN_TIMEOUT_MS` for them;
//! 4. sends `ShardMsg::Shutdown` to every shard — each finishes its current
//!    group commit, syncs its WAL and stops — and waits up to
//!    `SHUTDOWN_SHARD_SYNC_TIMEOUT_MS` for all of them;
//! 5. returns, and the process exits 0.
//!
//! Because the shards stop between groups with their logs synced, the next
//! start finds no torn tail. A connection whose peer does not read its
//! answers cannot hold the shutdown beyond the drain timeout: its writes
//! are abandoned (they were durable already; only the answer is lost, as
//! with any dropped connection).
//!
//! Bounded: if the whole sequence has not finished
//! `SHUTDOWN_DEADLINE_MS` after the signal, the signal thread exits the
//! process with status 1 (logged). A second SIGTERM/SIGINT exits at once
//! with status 1. Either way every acknowledged write is already durable
//! under `every_write`; only the clean-stop guarantees are lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Longest the acceptor waits for the shards of a cluster node to hand
/// their group's lead to other members (each waits up to the Raft layer's
/// `LEADERSHIP_HANDOVER_TIMEOUT_MS`, 2 s).
pub const SHUTDOWN_HANDOVER_TIMEOUT_MS: u64 = 3_000;
/// Longest the acceptor waits for open connections to finish.
pub const SHUTDOWN_DRAIN_TIMEOUT_MS: u64 = 5_000;
/// Longest the acceptor waits for every shard to sync and stop.
pub const SHUTDOWN_SHARD_SYNC_TIMEOUT_MS: u64 = 5_000;
/// After the first signal the process is gone within this long, cleanly or not.
pub const SHUTDOWN_DEADLINE_MS: u64 = 15_000;
/// How much longer than the drain timeout the coordinator waits for a
/// core's drain report before counting that core as not drained.
pub const SHUTDOWN_DRAIN_ANSWER_GRACE_MS: u64 = 1_000;
/// How often the drain checks whether every connection is gone.
pub const SHUTDOWN_DRAIN_POLL_MS: u64 = 10;
/// Exit status when the graceful sequence was cut short.
pub const SHUTDOWN_FORCED_EXIT_CODE: i32 = 1;

/// Receives the request to shut down (the acceptor awaits it).
#[derive(Clone)]
pub struct ShutdownRequest {
    rx: flume::Receiver<&'static str>,
    /// Set once shutdown began: the watchdog stops judging shards, which
    /// stop heartbeating when they stop.
    pub begun: Arc<AtomicBool>,
}

impl ShutdownRequest {
    /// Completes with the signal's name when shutdown is requested.
    pub async fn requested(&self) -> &'static str {
        // The sender lives as long as the signal thread, i.e. forever.
        self.rx.recv_async().await.unwrap_or("shutdown")
    }

    pub fn is_begun(&self) -> bool {
        self.begun.load(Ordering::Relaxed)
    }

    pub fn mark_begun(&self) {
        self.begun.store(true, Ordering::Relaxed);
    }
}

/// Install the SIGTERM/SIGINT handlers and start the signal thread.
pub fn install() -> Result<ShutdownRequest, String> {
    let mut signals = Signals::new([SIGTERM, SIGINT])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let (tx, rx) = flume::bounded(1);
    let begun = Arc::new(AtomicBool::new(false));
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut received = 0u32;
            for signal in signals.forever() {
                let name = if signal == SIGINT { "SIGINT" } else { "SIGTERM" };
                received += 1;
                if received == 1 {
                    tracing::info!(
                        "received {name}: shutting down (stop accepting, finish requests in flight, sync every shard's WAL)"
                    );
                    let _ = tx.try_send(name);
                    std::thread::spawn(|| {
                        std::thread::sleep(Duration::from_millis(SHUTDOWN_DEADLINE_MS));
                        let msg = format!(
                            "graceful shutdown did not finish within {SHUTDOWN_DEADLINE_MS} ms; exiting with status {SHUTDOWN_FORCED_EXIT_CODE}"
                        );
                        tracing::error!("{msg}");
                        eprintln!("corestate: {msg}");
                        std::process::exit(SHUTDOWN_FORCED_EXIT_CODE);
                    });
                } else {
                    let msg = format!(
                        "received {name} again: exiting now with status {SHUTDOWN_FORCED_EXIT_CODE} without waiting for the graceful shutdown"
                    );
                    tracing::warn!("{msg}");
                    eprintln!("corestate: {msg}");
                    std::process::exit(SHUTDOWN_FORCED_EXIT_CODE);
                }
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(ShutdownRequest { rx, begun })
}

/// Step 2: stop every connection's reading and wait until all are closed
/// or the drain timeout passes. Returns how many were still open.
pub async fn drain_connections(ctx: &crate::server::context::ServerCtx) -> usize {
    let open = ctx.conns.len();
    ctx.conns.stop_all();
    if open > 0 {
        tracing::info!("shutdown: waiting for {open} connection(s) to finish their requests");
    }
    let deadline = std::time::Instant::now() + Duration::from_millis(SHUTDOWN_DRAIN_TIMEOUT_MS);
    while !ctx.conns.is_empty() && std::time::Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(SHUTDOWN_DRAIN_POLL_MS)).await;
    }
    let left = ctx.conns.len();
    if left > 0 {
        tracing::warn!(
            "shutdown: {left} connection(s) still open after {SHUTDOWN_DRAIN_TIMEOUT_MS} ms (peers not reading their answers); closing them"
        );
    }
    left
}

/// Step 2 on every acceptor core at once (`drain_connections` on each);
/// returns how many connections were still open when they gave up. A core
/// that does not answer counts with all the connections it had.
pub async fn drain_all_cores(ctx: &crate::server::context::ServerCtx) -> usize {
    use crate::server::cores::CoreMsg;
    let left = ctx
        .cores
        .ask_all_until(
            |done| CoreMsg::Drain { done },
            glommio::timer::sleep(Duration::from_millis(
                SHUTDOWN_DRAIN_TIMEOUT_MS + SHUTDOWN_DRAIN_ANSWER_GRACE_MS,
            )),
        )
        .await;
    if left.iter().any(Option::is_none) {
        return ctx.cores.open_total();
    }
    left.into_iter().flatten().sum()
}

/// Step 3: every shard finishes its group, syncs its WAL and stops. Returns
/// the shards that did not confirm in time.
/// Ask every shard to hand its group's lead over (step 2); for each shard,
/// what it did: `Ok(Some(node))` handed to `node`, `Ok(None)` led nothing,
/// `Err` failed, and `None` no answer in time.
pub async fn hand_over_leadership(
    router: &crate::server::context::Router,
) -> Vec<Option<Result<Option<u64>, String>>> {
    use shards::shard::ShardMsg;
    shards::router::ask_all_until(
        router.all(),
        |done| ShardMsg::HandOver { done },
        glommio::timer::sleep(Duration::from_millis(SHUTDOWN_HANDOVER_TIMEOUT_MS)),
    )
    .await
}

pub async fn stop_shards(router: &crate::server::context::Router) -> Vec<usize> {
    use shards::shard::ShardMsg;
    let confirmed = shards::router::ask_all_until(
        router.all(),
        |done| ShardMsg::Shutdown { done },
        glommio::timer::sleep(Duration::from_millis(SHUTDOWN_SHARD_SYNC_TIMEOUT_MS)),
    )
    .await;
    (0..confirmed.len())
        .filter(|&id| confirmed[id].is_none())
        .collect()
}
