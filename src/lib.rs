//! corestate: a thread-per-core state machine database speaking RCP, the
//! protocol of rstmdb.
//!
//! Data flow: `server::acceptor` accepts a socket → `server::connection`
//! reads frames (`protocol::frame`) and request envelopes
//! (`protocol::request`) → `server::dispatch` routes each request — instance
//! operations to the owner shard's mailbox (crate `shards`), machine
//! operations to `server::catalog` — and the connection writes the answers
//! in request order (`protocol::response`). `http` serves the same
//! operations as a JSON API over HTTP/1.1 (hyper), through the same dispatch. `webhooks` POSTs committed
//! transitions to subscribed URLs. `runtime` starts the pinned
//! shard executors, the acceptor and the watchdog.

pub mod cluster;
pub mod config;
pub mod http;
pub mod metrics;
pub mod protocol;
pub mod runtime;
pub mod server;
pub mod shutdown;
pub mod watch;
pub mod watchdog;
pub mod webhooks;
