//! What every connection on one acceptor core shares: the shard mailboxes,
//! the machine catalog, authentication settings, limits, metrics, the
//! refusal log and the registry of open connections. Each acceptor core has
//! its own (`Rc`, `crate::server::cores`); what the cores share is behind an
//! `Arc` and says why it is cheap there.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use super::auth::TokenSet;
use super::catalog::Catalog;
use super::cores::{Cores, Seat};
use super::refusals::RefusalLog;
use crate::metrics::Metrics;
use crate::watch::subscription::ConnWatch;

/// Per-connection and per-request limits, from the configuration.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_inflight_requests_per_connection: usize,
    pub max_batch_ops: usize,
    pub max_connections: usize,
    /// Close a connection that sent nothing for this long while no request
    /// of it was in flight; `None` disables it.
    pub idle_timeout: Option<std::time::Duration>,
    /// `storage.allow_flush_all`: FLUSH_ALL is refused unless set.
    pub allow_flush_all: bool,
    /// Bytes of unwritten answers one connection may hold.
    pub answer_buffer_per_connection_bytes: usize,
    /// Bytes of requests one connection may have read and not answered.
    pub request_buffer_per_connection_bytes: usize,
}

pub use shards::router::Router;

/// One open (or handshaking) connection as the rest of the server sees it:
/// who it is, how to ask it to stop, and its subscriptions (for metrics).
pub struct ConnHandle {
    pub peer: Option<SocketAddr>,
    stop: Cell<bool>,
    /// The one task waiting for `stop` (the reader, or the handshake).
    waker: RefCell<Option<Waker>>,
    watch: RefCell<Option<Rc<RefCell<ConnWatch>>>>,
}

impl ConnHandle {
    fn new(peer: Option<SocketAddr>) -> Self {
        ConnHandle {
            peer,
            stop: Cell::new(false),
            waker: RefCell::new(None),
            watch: RefCell::new(None),
        }
    }

    pub fn stopping(&self) -> bool {
        self.stop.get()
    }

    /// Ready once the server asked this connection to stop; otherwise
    /// remembers the caller's waker (one waiter at a time).
    pub fn poll_stop(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.stop.get() {
            return Poll::Ready(());
        }
        let mut slot = self.waker.borrow_mut();
        if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *slot = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Completes once the server asked this connection to stop.
    pub async fn stopped(&self) {
        futures_lite::future::poll_fn(|cx| self.poll_stop(cx)).await
    }

    /// Ask the connection to stop: its reader stops waiting for the client.
    pub(crate) fn request_stop(&self) {
        self.stop.set(true);
        let waker = self.waker.borrow_mut().take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    pub fn set_watch(&self, watch: Rc<RefCell<ConnWatch>>) {
        *self.watch.borrow_mut() = Some(watch);
    }

    pub fn watch(&self) -> Option<Rc<RefCell<ConnWatch>>> {
        self.watch.borrow().clone()
    }
}

/// Every open connection, so that shutdown can stop them all and metrics
/// can count them and their subscriptions.
#[derive(Default)]
pub struct Connections {
    next_id: Cell<u64>,
    live: RefCell<hashbrown::HashMap<u64, Rc<ConnHandle>>>,
    /// Set once shutdown began: new connections stop at once.
    stopping: Cell<bool>,
}

impl Connections {
    pub fn len(&self) -> usize {
        self.live.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.borrow().is_empty()
    }

    /// Ask every connection to stop reading (graceful shutdown). Later
    /// registrations are born stopped.
    pub fn stop_all(&self) {
        self.stopping.set(true);
        let handles: Vec<Rc<ConnHandle>> = self.live.borrow().values().cloned().collect();
        for handle in handles {
            handle.request_stop();
        }
    }

    /// Every open connection's handle (for metrics).
    pub fn handles(&self) -> Vec<Rc<ConnHandle>> {
        self.live.borrow().values().cloned().collect()
    }
}

/// A connection's registration; dropping it removes the connection (and
/// frees its seat in the server-wide count).
pub struct ConnRegistration {
    ctx: Rc<ServerCtx>,
    id: u64,
    pub handle: Rc<ConnHandle>,
    _seat: Seat,
}

impl ConnRegistration {
    pub fn new(ctx: &Rc<ServerCtx>, peer: Option<SocketAddr>, seat: Seat) -> Self {
        let conns = &ctx.conns;
        let id = conns.next_id.get();
        conns.next_id.set(id + 1);
        let handle = Rc::new(ConnHandle::new(peer));
        if conns.stopping.get() {
            handle.request_stop();
        }
        conns.live.borrow_mut().insert(id, handle.clone());
        ConnRegistration {
            ctx: ctx.clone(),
            id,
            handle,
            _seat: seat,
        }
    }
}

impl Drop for ConnRegistration {
    fn drop(&mut self) {
        self.ctx.conns.live.borrow_mut().remove(&self.id);
    }
}

pub struct ServerCtx {
    /// Which acceptor core this is (the index of the shard whose executor
    /// runs it).
    pub core: usize,
    /// Every acceptor core: hand-offs, server-wide connection counts, asks.
    pub cores: Arc<Cores>,
    pub router: Router,
    /// This core's watch merge (the primary on core 0, a replica elsewhere).
    pub merger: Rc<RefCell<crate::watch::merge::Merger>>,
    pub catalog: Arc<Catalog>,
    pub tokens: Arc<TokenSet>,
    pub limits: Limits,
    pub metrics: Metrics,
    pub refusals: RefusalLog,
    pub conns: Connections,
    /// Bytes of unwritten answers all connections together may hold.
    pub answer_budget: Arc<shards::shard::budget::ServerBudget>,
    /// The webhooks (core 0 only, where the HTTP API and the primary merge
    /// run; `None` on the other cores).
    pub webhooks: Option<Rc<crate::webhooks::Webhooks>>,
}
