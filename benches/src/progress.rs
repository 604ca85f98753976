//! The ticker that runs beside the load: progress on stderr (a bar on a
//! terminal, one plain line per second otherwise), per-second throughput,
//! and stall detection (no response from any connection for a while).

use std::cell::Cell;
use std::io::IsTerminal;
use std::rc::Rc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::time::MissedTickBehavior;

use crate::conn::Shared;

/// Ticker period; also the resolution of stall measurement.
pub const TICK_MS: u64 = 100;
/// A gap without responses this long is reported as a stall.
pub const STALL_WARN_MS: u64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    Bar,
    Lines,
    Silent,
}

impl Display {
    pub fn choose(quiet: bool, no_bar: bool) -> Display {
        if quiet {
            Display::Silent
        } else if !no_bar && std::io::stderr().is_terminal() {
            Display::Bar
        } else {
            Display::Lines
        }
    }
}

/// What the ticker saw.
#[derive(Debug, Default)]
pub struct TickerStats {
    pub timeline_ops_per_sec: Vec<u64>,
    pub max_stall_ms: u64,
}

/// Runs until `finished` is set. `warmup` and `duration` only label the
/// phases.
pub async fn run(
    shared: Rc<Shared>,
    finished: Rc<Cell<bool>>,
    display: Display,
    warmup: Duration,
    duration: Duration,
) -> TickerStats {
    let start = Instant::now();
    let total = warmup + duration;
    let bar = (display == Display::Bar).then(|| {
        let bar = ProgressBar::new(total.as_millis() as u64);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    });
    let mut stats = TickerStats::default();
    let mut interval = tokio::time::interval(Duration::from_millis(TICK_MS));
    // A late tick must not be followed by a burst of catch-up ticks: those
    // would see "no progress" within microseconds and report it as a stall.
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut bucket_start = Instant::now();
    let mut bucket_start_count = shared.completed.get();
    let mut last_count = bucket_start_count;
    let mut last_progress = Instant::now();
    let mut stall_warned = false;
    loop {
        interval.tick().await;
        if finished.get() {
            break;
        }
        let now = Instant::now();
        let count = shared.completed.get();
        if count != last_count {
            if stall_warned {
                eprintln!(
                    "!!! stall over after {} ms",
                    now.duration_since(last_progress).as_millis()
                );
            }
            last_count = count;
            last_progress = now;
            stall_warned = false;
        } else if !shared.stop.get() {
            let stall_ms = now.duration_since(last_progress).as_millis() as u64;
            stats.max_stall_ms = stats.max_stall_ms.max(stall_ms);
            if stall_ms >= STALL_WARN_MS && !stall_warned {
                eprintln!("!!! STALL: no response on any connection for {stall_ms} ms");
                stall_warned = true;
            }
        }
        let bucket = now.duration_since(bucket_start);
        if bucket >= Duration::from_secs(1) {
            let per_sec =
                ((count - bucket_start_count) as f64 / bucket.as_secs_f64()).round() as u64;
            bucket_start = now;
            bucket_start_count = count;
            if !shared.stop.get() {
                stats.timeline_ops_per_sec.push(per_sec);
            }
            let elapsed = now.duration_since(start);
            let phase = if shared.stop.get() {
                "drain"
            } else if elapsed < warmup {
                "warm-up"
            } else {
                "measure"
            };
            let message = format!(
                "{phase:8} {per_sec:>9} ops/s  {count:>11} done  {} errors",
                shared.failures.get()
            );
            match (&bar, display) {
                (Some(bar), _) => {
                    bar.set_position((elapsed.as_millis() as u64).min(total.as_millis() as u64));
                    bar.set_message(message);
                }
                (None, Display::Lines) => {
                    eprintln!("[{:6.1}s] {message}", elapsed.as_secs_f64());
                }
                _ => {}
            }
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    stats
}
