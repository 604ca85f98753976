//! The network side: accept connections, decode requests, route them to the
//! shards, answer in order.

pub mod acceptor;
pub mod auth;
pub mod batch;
pub mod boot;
pub mod catalog;
pub mod connection;
pub mod context;
pub mod cores;
pub mod dispatch;
pub mod ops;
pub mod refusals;
pub mod session;
pub mod tls;
