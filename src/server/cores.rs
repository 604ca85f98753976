//! The acceptor role on every core.
//!
//! Measured (bench-results/2026-12-04/shards-1-vs-2.md): with one acceptor
//! on shard 0's executor, that core decodes, dispatches and encodes every
//! request of every connection and saturates (0.97 of a core at get 16×16)
//! while shard 1's core idles at half. So every shard's executor is also an
//! *acceptor core*: it serves the connections handed to it — reads and
//! decodes their frames, runs session operations, routes instance
//! operations to the owning shard's mailbox (a request for an instance its
//! own shard owns never leaves the thread; others take one visible mailbox
//! hop), writes the answers and watch events. Each core has its own
//! `ServerCtx`: counters, refusal log, connection registry and a replica of
//! the watch merge, all plain `Cell`s — no locks on the data path.
//!
//! What stays shared, and why it is cheap:
//! * the listening socket is accepted on core 0 only, which hands each
//!   connection to the core with the fewest open connections (`Seat`), so a
//!   few connections spread evenly (kernel `SO_REUSEPORT` hashing would not);
//!   the hand-off is one message per connection, not per request;
//! * the open-connection counts (`max_connections` is server-wide): one
//!   atomic add when a connection opens and one when it closes;
//! * the machine catalog (`Arc`, a mutex held for map updates only);
//! * the answer budget (already atomic);
//! * the watch merge runs once, on core 0; each other core keeps a replica
//!   fed with the released events (`crate::watch::merge_task::run`'s relays), so
//!   its subscribers are served from local memory.
//!
//! Control messages (`CoreMsg`): a connection to serve, a request for the
//! core's metrics (a scrape adds up every core's), and the shutdown drain.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::{Counters, WatchKind};
use crate::server::context::ServerCtx;
use crate::watch::subscription::Filter;

/// How long a scrape waits for one acceptor core's figures.
pub const CORE_STATS_TIMEOUT_MS: u64 = 2_000;

/// A message to one acceptor core.
pub enum CoreMsg {
    /// Serve this connection.
    Serve(Handoff),
    /// Send back this core's counters and levels.
    Stats { done: flume::Sender<CoreStats> },
    /// Shutdown: ask every connection to stop, wait until they are gone or
    /// `SHUTDOWN_DRAIN_TIMEOUT_MS` passed; send back how many are left.
    Drain { done: flume::Sender<usize> },
}

/// One core's figures for a scrape.
pub struct CoreStats {
    pub counters: Counters,
    /// Indexed like `RefusalCause::ALL`.
    pub refusals: [u64; 3],
    pub connections_open: usize,
    /// Indexed by `WatchKind`.
    pub subscriptions: [u64; 2],
    /// Largest distance between this core's released stream and one of its
    /// subscriptions' cursors.
    pub lag_max_offsets: u64,
}

/// Every acceptor core's control mailbox and open-connection count.
pub struct Cores {
    control: Vec<flume::Sender<CoreMsg>>,
    open: Vec<AtomicUsize>,
}

impl Cores {
    /// `count` cores; returns each core's control mailbox to receive from.
    pub fn new(count: usize) -> (Arc<Cores>, Vec<flume::Receiver<CoreMsg>>) {
        let (control, inboxes): (Vec<_>, Vec<_>) = (0..count.max(1))
            .map(|_| flume::unbounded::<CoreMsg>())
            .unzip();
        let open = control.iter().map(|_| AtomicUsize::new(0)).collect();
        (Arc::new(Cores { control, open }), inboxes)
    }

    pub fn count(&self) -> usize {
        self.control.len()
    }

    /// Open (or handshaking) connections on every core together.
    pub fn open_total(&self) -> usize {
        self.open.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }

    /// A seat for one more connection on the core with the fewest open
    /// connections (the lowest-numbered on a tie).
    pub fn take_seat(self: &Arc<Self>) -> Seat {
        let core = (0..self.open.len())
            .min_by_key(|&c| self.open[c].load(Ordering::Relaxed))
            .unwrap_or(0);
        self.open[core].fetch_add(1, Ordering::Relaxed);
        Seat {
            cores: self.clone(),
            core,
        }
    }

    /// A seat on a given core (a connection that core serves itself, such
    /// as the HTTP API's on core 0).
    pub fn seat_on(self: &Arc<Self>, core: usize) -> Seat {
        let core = core.min(self.open.len() - 1);
        self.open[core].fetch_add(1, Ordering::Relaxed);
        Seat {
            cores: self.clone(),
            core,
        }
    }

    /// Give a connection to its seat's core. Fails (closing the socket and
    /// freeing the seat) only if that core stopped; `false` then.
    pub fn hand_off(&self, handoff: Handoff) -> bool {
        let core = handoff.seat.core;
        self.control[core].send(CoreMsg::Serve(handoff)).is_ok()
    }

    /// Ask every core (this one included) and take what came by `deadline`.
    pub async fn ask_all_until<T>(
        &self,
        make: impl FnMut(flume::Sender<T>) -> CoreMsg,
        deadline: impl std::future::Future<Output = ()>,
    ) -> Vec<Option<T>> {
        shards::router::ask_all_until(&self.control, make, deadline).await
    }
}

/// A connection's place on one core, counted until dropped.
pub struct Seat {
    cores: Arc<Cores>,
    pub core: usize,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.cores.open[self.core].fetch_sub(1, Ordering::Relaxed);
    }
}

/// An accepted connection on its way to another core: its socket (closed
/// if the hand-off is dropped), its peer and its seat.
pub struct Handoff {
    pub socket: OwnedFd,
    pub peer: Option<SocketAddr>,
    pub seat: Seat,
}

impl Handoff {
    /// Detach an accepted stream from this core's executor: the socket is
    /// duplicated and the original closed, so the receiving core registers
    /// it with its own io_uring.
    pub fn new(
        stream: glommio::net::TcpStream,
        peer: Option<SocketAddr>,
        seat: Seat,
    ) -> std::io::Result<Self> {
        // SAFETY: `dup` of a valid open descriptor; the result, when not
        // -1, is a new descriptor this process owns and nothing else uses.
        let fd = unsafe { libc::dup(stream.as_raw_fd()) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        drop(stream);
        // SAFETY: `fd` was just created by `dup` and is owned by nobody else.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Handoff { socket, peer, seat })
    }

    /// The stream, registered with the calling core's executor.
    pub fn into_stream(self) -> (glommio::net::TcpStream, Option<SocketAddr>, Seat) {
        // SAFETY: the descriptor is an open TCP socket owned by this value.
        let stream = unsafe { glommio::net::TcpStream::from_raw_fd(self.socket.into_raw_fd()) };
        (stream, self.peer, self.seat)
    }
}

/// This core's figures (see `CoreStats`).
pub fn stats(ctx: &ServerCtx) -> CoreStats {
    let released_upto = ctx.merger.borrow().released_upto();
    let mut subscriptions = [0u64; 2];
    let mut lag_max_offsets = 0u64;
    for handle in ctx.conns.handles() {
        let Some(watch) = handle.watch() else {
            continue;
        };
        let watch = watch.borrow();
        for sub in &watch.subs {
            let kind = match sub.filter {
                Filter::Instance(_) => WatchKind::Instance,
                Filter::All { .. } => WatchKind::All,
            };
            subscriptions[kind as usize] += 1;
            lag_max_offsets = lag_max_offsets.max(released_upto.saturating_sub(sub.cursor));
        }
    }
    CoreStats {
        counters: ctx.metrics.snapshot(),
        refusals: ctx.refusals.totals(),
        connections_open: ctx.conns.len(),
        subscriptions,
        lag_max_offsets,
    }
}

/// Every core's figures by core number, those of cores that did not answer
/// in time left out.
pub async fn stats_of_all(ctx: &ServerCtx) -> Vec<(usize, CoreStats)> {
    ctx.cores
        .ask_all_until(
            |done| CoreMsg::Stats { done },
            glommio::timer::sleep(Duration::from_millis(CORE_STATS_TIMEOUT_MS)),
        )
        .await
        .into_iter()
        .enumerate()
        .filter_map(|(core, stats)| Some((core, stats?)))
        .collect()
}

/// A core's control loop: serve handed-off connections, answer stats and
/// drain requests. Runs until the core's mailbox closes.
pub async fn control_loop(
    ctx: Rc<ServerCtx>,
    inbox: flume::Receiver<CoreMsg>,
    tls: Option<futures_rustls::TlsAcceptor>,
) {
    while let Ok(msg) = inbox.recv_async().await {
        match msg {
            CoreMsg::Serve(handoff) => {
                let (stream, peer, seat) = handoff.into_stream();
                super::acceptor::serve_accepted(&ctx, stream, peer, seat, tls.clone());
            }
            CoreMsg::Stats { done } => {
                let _ = done.send(stats(&ctx));
            }
            CoreMsg::Drain { done } => {
                let ctx = ctx.clone();
                glommio::spawn_local(async move {
                    let _ = done.send(crate::shutdown::drain_connections(&ctx).await);
                })
                .detach();
            }
        }
    }
}
