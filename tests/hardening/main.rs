//! A hostile (or merely heavy) client, a full disk, a pause or a damaged
//! log must never crash the server or lose data silently: each behaviour
//! against the real binary, memory read from /proc, signals for real.

#[path = "../support/mod.rs"]
mod support;

mod bad_input;
mod damaged_log;
mod full_disk;
mod gone_clients;
mod heavy_clients;
mod metrics_slots;
mod pause;
mod wal_read_paging;
