//! The watcher: one WATCH_ALL subscription from offset 0, resumed with
//! `from_offset` = last offset seen + 1 on every reconnect (each SIGKILL
//! ends its connection), recording every event it is given. Afterwards
//! the stream must equal the committed log: no gap, no duplicate.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use corestate_checker::StreamEvent;
use serde_json::{json, Value};

use crate::workload::{connect, Target};

/// How long one read waits before the watcher looks at its stop flags.
const WATCH_POLL: Duration = Duration::from_millis(100);
/// How long the watcher may take, after the load ends, to reach the end
/// of the committed log.
pub const WATCH_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What the watcher was told to do from outside.
pub struct WatchControl {
    /// The load has ended; stop when `drain_to` is reached.
    pub draining: AtomicBool,
    /// The last committed transition's offset (set once draining).
    pub drain_to: AtomicU64,
    /// Give up reconnecting (the test is over).
    pub abandon: AtomicBool,
}

impl WatchControl {
    pub fn new() -> WatchControl {
        WatchControl {
            draining: AtomicBool::new(false),
            drain_to: AtomicU64::new(0),
            abandon: AtomicBool::new(false),
        }
    }
}

#[derive(Debug, Default)]
pub struct WatchLog {
    pub events: Vec<StreamEvent>,
    pub subscriptions: usize,
    /// Each subscription: (events received before it, its from_offset).
    pub resumes: Vec<(usize, u64)>,
    /// Why the watcher stopped early, if it did.
    pub problem: Option<String>,
}

fn event_of(frame: &Value) -> Option<StreamEvent> {
    Some(StreamEvent {
        offset: frame["wal_offset"].as_u64()?,
        instance: frame["instance_id"].as_str()?.to_string(),
        event: frame["event"].as_str()?.to_string(),
        from_state: frame["from_state"].as_str()?.to_string(),
        to_state: frame["to_state"].as_str()?.to_string(),
    })
}

/// Watch through node `first_node` first (on a cluster, the leader: the
/// node the run kills), then wherever a connection is to be had.
pub fn run_watcher(target: &Target, control: &WatchControl, first_node: usize) -> WatchLog {
    let mut log = WatchLog::default();
    let mut drain_started: Option<Instant> = None;
    let mut node = first_node;
    'connections: loop {
        let Some(mut client) = connect(target, &mut node, &control.abandon) else {
            log.problem = Some("abandoned while reconnecting".into());
            return log;
        };
        let from_offset = log.events.last().map_or(0, |e| e.offset + 1);
        if client
            .send(
                "WATCH_ALL",
                json!({"from_offset": from_offset, "include_ctx": false}),
            )
            .is_err()
        {
            continue;
        }
        log.subscriptions += 1;
        log.resumes.push((log.events.len(), from_offset));
        loop {
            if control.draining.load(Ordering::SeqCst) {
                let started = *drain_started.get_or_insert_with(Instant::now);
                let target_offset = control.drain_to.load(Ordering::SeqCst);
                if log.events.last().map_or(0, |e| e.offset) >= target_offset {
                    return log;
                }
                if started.elapsed() > WATCH_DRAIN_TIMEOUT {
                    log.problem = Some(format!(
                        "stream did not reach offset {target_offset} within \
                         {WATCH_DRAIN_TIMEOUT:?}"
                    ));
                    return log;
                }
            }
            match client.next_frame(WATCH_POLL) {
                Ok(None) => {}
                Ok(Some(frame)) if frame["type"] == "event" => match event_of(&frame) {
                    Some(event) => log.events.push(event),
                    None => {
                        log.problem = Some(format!("malformed event {frame}"));
                        return log;
                    }
                },
                Ok(Some(frame)) => {
                    if frame["status"] != "ok" {
                        log.problem = Some(format!("WATCH_ALL from {from_offset}: {frame}"));
                        return log;
                    }
                }
                // The server died: resume from where the stream got to
                // (on a cluster, at the next node).
                Err(_) => {
                    node = (node + 1) % target.nodes();
                    continue 'connections;
                }
            }
        }
    }
}
