//! What the integration tests share, one concept per file. Each test
//! binary includes it with `#[path = "../support/mod.rs"] mod support;`
//! (or `mod support;` from a top-level test file) and imports what it uses.

// Each test binary uses a different subset.
#![allow(dead_code)]

pub mod fixtures;
pub mod http;
pub mod proc;
pub mod proc_stats;
pub mod raw_client;
pub mod rstmdb;
pub mod server;
pub mod wal_files;
pub mod wire;

// The names the tests import, flat; each binary imports a subset.
#[allow(unused_imports)]
pub use {
    fixtures::*, http::*, proc::*, proc_stats::*, raw_client::*, rstmdb::*, server::*,
    wal_files::*, wire::*,
};
