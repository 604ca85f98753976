//! Warnings for refused connections and requests, rate-limited per cause.
//!
//! Every refusal is worth a warning — an operator must be able to see that
//! the connection limit is hit, that TLS handshakes fail or that someone is
//! guessing tokens — but a flood of them must not fill the disk. So each
//! cause may log at most `REFUSAL_WARNINGS_PER_WINDOW_MAX` warnings per
//! `REFUSAL_WARNING_WINDOW_SECS`; the rest are counted, and the count is
//! logged when the window ends (by the next refusal, or by the periodic
//! `flush` the acceptor runs). The metrics count every refusal regardless.
//!
//! One log per acceptor core, on its executor: plain `Cell`s, no locks (so
//! the warning budget is per core; a scrape adds up the totals).

use std::cell::Cell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Warnings logged per cause in one window; further ones are only counted.
pub const REFUSAL_WARNINGS_PER_WINDOW_MAX: u32 = 10;
/// Length of the rate-limiting window.
pub const REFUSAL_WARNING_WINDOW_SECS: u64 = 60;

/// Why a connection (or an AUTH) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalCause {
    /// `max_connections` reached.
    ConnectionLimit,
    /// The TLS handshake failed or timed out.
    TlsHandshake,
    /// AUTH with a wrong token or method.
    AuthFailed,
}

impl RefusalCause {
    pub const ALL: [RefusalCause; 3] = [
        RefusalCause::ConnectionLimit,
        RefusalCause::TlsHandshake,
        RefusalCause::AuthFailed,
    ];

    /// The label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCause::ConnectionLimit => "connection_limit",
            RefusalCause::TlsHandshake => "tls_handshake",
            RefusalCause::AuthFailed => "auth_failed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

struct Window {
    started: Cell<Instant>,
    logged: Cell<u32>,
    suppressed: Cell<u64>,
    /// Every refusal of this cause since start (for metrics).
    total: Cell<u64>,
}

pub struct RefusalLog {
    windows: [Window; 3],
}

impl Default for RefusalLog {
    fn default() -> Self {
        Self::new()
    }
}

impl RefusalLog {
    pub fn new() -> Self {
        let now = Instant::now();
        let window = || Window {
            started: Cell::new(now),
            logged: Cell::new(0),
            suppressed: Cell::new(0),
            total: Cell::new(0),
        };
        RefusalLog {
            windows: [window(), window(), window()],
        }
    }

    /// Record one refusal; logs a warning unless this cause's budget for
    /// the window is spent. `detail` is only formatted when logged.
    pub fn refuse(
        &self,
        cause: RefusalCause,
        peer: Option<SocketAddr>,
        detail: impl FnOnce() -> String,
    ) {
        let w = &self.windows[cause.index()];
        w.total.set(w.total.get() + 1);
        self.roll(cause, Instant::now());
        if w.logged.get() < REFUSAL_WARNINGS_PER_WINDOW_MAX {
            w.logged.set(w.logged.get() + 1);
            let peer = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
            tracing::warn!(cause = cause.as_str(), peer = %peer, "refused: {}", detail());
        } else {
            w.suppressed.set(w.suppressed.get() + 1);
        }
    }

    /// Refusals of `cause` since start.
    pub fn total(&self, cause: RefusalCause) -> u64 {
        self.windows[cause.index()].total.get()
    }

    /// Refusals since start, indexed like `RefusalCause::ALL`.
    pub fn totals(&self) -> [u64; 3] {
        RefusalCause::ALL.map(|cause| self.total(cause))
    }

    /// End windows that are over, logging how many warnings each suppressed.
    pub fn flush(&self) {
        let now = Instant::now();
        for cause in RefusalCause::ALL {
            self.roll(cause, now);
        }
    }

    fn roll(&self, cause: RefusalCause, now: Instant) {
        let w = &self.windows[cause.index()];
        if now.duration_since(w.started.get()) < Duration::from_secs(REFUSAL_WARNING_WINDOW_SECS) {
            return;
        }
        let suppressed = w.suppressed.replace(0);
        if suppressed > 0 {
            tracing::warn!(
                cause = cause.as_str(),
                suppressed,
                "refused: {suppressed} more {} refusal(s) in the last {REFUSAL_WARNING_WINDOW_SECS} s were not logged",
                cause.as_str()
            );
        }
        w.started.set(now);
        w.logged.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_logs_at_most_the_budget_and_counts_everything() {
        let log = RefusalLog::new();
        for _ in 0..1000 {
            log.refuse(RefusalCause::ConnectionLimit, None, || "limit".into());
        }
        let w = &log.windows[RefusalCause::ConnectionLimit.index()];
        assert_eq!(w.logged.get(), REFUSAL_WARNINGS_PER_WINDOW_MAX);
        assert_eq!(
            w.suppressed.get(),
            1000 - REFUSAL_WARNINGS_PER_WINDOW_MAX as u64
        );
        assert_eq!(log.total(RefusalCause::ConnectionLimit), 1000);
        // Causes have separate budgets.
        log.refuse(RefusalCause::AuthFailed, None, || "auth".into());
        assert_eq!(
            log.windows[RefusalCause::AuthFailed.index()].logged.get(),
            1
        );
    }

    #[test]
    fn a_new_window_reports_and_resets() {
        let log = RefusalLog::new();
        for _ in 0..20 {
            log.refuse(RefusalCause::TlsHandshake, None, || "tls".into());
        }
        let w = &log.windows[RefusalCause::TlsHandshake.index()];
        w.started
            .set(Instant::now() - Duration::from_secs(REFUSAL_WARNING_WINDOW_SECS + 1));
        log.flush();
        assert_eq!(w.suppressed.get(), 0);
        assert_eq!(w.logged.get(), 0);
        assert_eq!(log.total(RefusalCause::TlsHandshake), 20);
    }
}
