//! Watch streams (docs/PROTOCOL.md §2.4, §10; issue 3): WATCH_INSTANCE, WATCH_ALL and
//! UNWATCH over raw sockets and through `rstmdb-client` 0.3.0's
//! subscription API — the event message byte order, filters, include_ctx,
//! auth, and the guarantees corestate adds over rstmdb 0.3: one stream in
//! strictly increasing `wal_offset` across shards, exactly once; replay
//! with `from_offset` with no gap and no duplicate; a slow watcher loses
//! nothing while the server's memory stays bounded.
//!
//! Instances are placed by `crc32c(instance_id) % 2` (the harness runs two
//! shards); every test that cares spreads its instances over both.

#[path = "../support/mod.rs"]
mod support;

// What the watch tests share.
mod conn;
mod events;
mod writers;

// One behaviour per file.
mod auth;
mod durability;
mod event_shape;
mod filters;
mod ordering;
mod replay;
mod rust_client;
mod slow_watcher;
mod subscribe;
mod unwatch;
mod watch_instance;
