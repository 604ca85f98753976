//! Operating the server: authentication on every operation, the limits
//! that hold (connections, idle time, in-flight requests, frame size,
//! batch size), the Prometheus endpoint, and graceful shutdown on
//! SIGTERM/SIGINT — each against the real binary, signals for real.

#[path = "../support/mod.rs"]
mod support;

mod answer_lease;
mod auth_everywhere;
mod limits;
mod metrics;
mod placement;
mod shutdown;
