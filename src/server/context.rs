//! What every connection on the acceptor shares: the shard mailboxes, the
//! machine catalog, authentication settings and limits. It lives on the
//! acceptor's executor only (`Rc`), so nothing in it needs a lock.

use shards::shard::{shard_for_instance, ShardMsg};

use super::auth::TokenSet;
use super::catalog::Catalog;

/// Per-connection and per-request limits, from the configuration.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_inflight_requests_per_connection: usize,
    pub max_batch_ops: usize,
    pub max_connections: usize,
    /// Close a connection that sent nothing for this long while no request
    /// of it was in flight; `None` disables it.
    pub idle_timeout: Option<std::time::Duration>,
}

/// The shard mailboxes, indexed by shard id.
pub struct Router {
    mailboxes: Vec<flume::Sender<ShardMsg>>,
}

impl Router {
    pub fn new(mailboxes: Vec<flume::Sender<ShardMsg>>) -> Self {
        Router { mailboxes }
    }

    pub fn shards(&self) -> usize {
        self.mailboxes.len()
    }

    /// The mailbox of the shard that owns `instance_id`.
    pub fn owner(&self, instance_id: &str) -> &flume::Sender<ShardMsg> {
        &self.mailboxes[shard_for_instance(instance_id, self.mailboxes.len())]
    }

    pub fn all(&self) -> &[flume::Sender<ShardMsg>] {
        &self.mailboxes
    }
}

pub struct ServerCtx {
    pub router: Router,
    pub merger: std::rc::Rc<std::cell::RefCell<crate::watch::merge::Merger>>,
    pub catalog: Catalog,
    pub tokens: TokenSet,
    pub limits: Limits,
}
