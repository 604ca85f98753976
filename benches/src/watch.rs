//! WATCH_ALL subscribers of the `watch` workload. Each one reads the event
//! stream of its own connection while the writers apply; it counts the
//! events of this run, checks that `wal_offset` strictly increases, and
//! measures event latency from the `"t"` stamp the writer put in the payload
//! (Unix ns when the request was rendered) to the read that brought the
//! event — one machine, one clock. After the writers finish it keeps
//! reading until it has an event for every acknowledged apply, the stream
//! has been quiet for a while, or the drain timeout expires. The
//! subscribers' figures are then summed up for the report.

use std::cell::Cell;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use memchr::memmem;
use serde_json::Value;
use tokio::time::MissedTickBehavior;

use tokio::task::JoinHandle;

use crate::conn::{new_histogram, BenchError, Conn, Shared, LATENCY_US_MAX};
use crate::report::{Latency, SubscriberResult, WatchResults};
use crate::workload::unix_nanos;

/// After the writers finish, a subscriber that has received nothing for
/// this long stops waiting (the missing events are counted as lost).
pub const WATCH_DRAIN_QUIET: Duration = Duration::from_secs(2);
/// How often a subscriber waiting for events checks whether it is done.
pub const WATCH_CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// Order violations kept (and printed) per subscriber; the rest are counted.
pub const ORDER_VIOLATIONS_KEPT_MAX: usize = 5;
/// Most subscribers a run may have.
pub const SUBSCRIBERS_MAX: usize = 256;
/// How long past their own drain timeout subscribers get before they are
/// told to give up.
pub const SUBSCRIBER_JOIN_GRACE: Duration = Duration::from_secs(5);

/// What the orchestrator tells the subscribers (one thread).
pub struct WatchShared {
    /// Set once every writer has finished; `applies_acked` is final then.
    pub writers_done_at: Cell<Option<Instant>>,
    /// Stamped applies acknowledged by the server over the whole run.
    pub applies_acked: Cell<u64>,
    /// How long after the writers finish a subscriber may keep reading.
    pub drain_timeout: Duration,
}

impl WatchShared {
    pub fn new(drain_timeout: Duration) -> WatchShared {
        WatchShared {
            writers_done_at: Cell::new(None),
            applies_acked: Cell::new(0),
            drain_timeout,
        }
    }
}

/// Why a subscriber stopped reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriberEnd {
    /// It had an event for every acknowledged apply.
    Complete,
    /// Nothing arrived for [`WATCH_DRAIN_QUIET`] after the writers finished.
    Quiet,
    /// The drain timeout expired while events were still arriving.
    DrainTimeout,
    /// The connection failed or sent something that is not an event.
    Failed(String),
}

impl SubscriberEnd {
    pub fn describe(&self) -> String {
        match self {
            SubscriberEnd::Complete => "complete".into(),
            SubscriberEnd::Quiet => format!(
                "stream quiet for {} ms after the writers finished",
                WATCH_DRAIN_QUIET.as_millis()
            ),
            SubscriberEnd::DrainTimeout => "drain timeout".into(),
            SubscriberEnd::Failed(why) => format!("failed: {why}"),
        }
    }
}

/// What one subscriber saw.
pub struct SubscriberOutcome {
    pub subscription_id: String,
    /// Events of this run's applies (stamped, on this run's instances).
    pub events: u64,
    /// … of which the stamp is in the measured window.
    pub events_in_window: u64,
    /// Events of other clients' applies (ignored).
    pub foreign_events: u64,
    /// Events whose `wal_offset` was not above every offset seen before.
    pub order_violations: u64,
    /// The first few violations: (highest offset before, offset received).
    pub first_violations: Vec<(u64, u64)>,
    /// Latency of the in-window events, µs.
    pub histogram: Histogram<u64>,
    /// Events the byte-level fast path did not recognise.
    pub slow_path_events: u64,
    /// When the last event arrived, relative to the writers finishing (ms;
    /// negative: before).
    pub last_event_after_writers_ms: Option<i64>,
    pub end: SubscriberEnd,
}

/// The fields of an event the subscriber needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventFacts {
    pub wal_offset: u64,
    /// The payload's `"t"`; `None` for events that are not this run's.
    pub stamp_ns: Option<u64>,
}

/// Parses an event message. `Err` when the frame is not an event at all.
/// A byte-level fast path reads the docs/PROTOCOL.md §2.4 layout; anything else is
/// parsed as JSON.
pub fn parse_event(
    payload: &[u8],
    instance_prefix: &[u8],
    slow_path: &mut u64,
) -> Result<EventFacts, String> {
    if let Some(facts) = fast_event(payload, instance_prefix) {
        return Ok(facts);
    }
    *slow_path += 1;
    let v: Value = serde_json::from_slice(payload)
        .map_err(|e| format!("not JSON ({e}): {}", preview(payload)))?;
    if v.get("type").and_then(Value::as_str) != Some("event") {
        return Err(format!("not an event: {}", preview(payload)));
    }
    let wal_offset = v
        .get("wal_offset")
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("event without a wal_offset: {}", preview(payload)))?;
    let ours = v
        .get("instance_id")
        .and_then(Value::as_str)
        .is_some_and(|id| id.as_bytes().starts_with(instance_prefix));
    let stamp_ns = v.pointer("/payload/t").and_then(Value::as_u64);
    Ok(EventFacts {
        wal_offset,
        stamp_ns: stamp_ns.filter(|_| ours),
    })
}

fn preview(payload: &[u8]) -> String {
    let cut = payload.len().min(300);
    String::from_utf8_lossy(&payload[..cut]).into_owned()
}

fn digits_at(bytes: &[u8]) -> Option<u64> {
    let end = bytes
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(bytes.len());
    if end == 0 || end > 19 {
        return None;
    }
    std::str::from_utf8(&bytes[..end]).ok()?.parse().ok()
}

fn fast_event(payload: &[u8], instance_prefix: &[u8]) -> Option<EventFacts> {
    const INSTANCE: &[u8] = br#""instance_id":""#;
    const OFFSET: &[u8] = br#""wal_offset":"#;
    const PAYLOAD: &[u8] = br#""payload":"#;
    const STAMP: &[u8] = br#""t":"#;
    let rest = payload.strip_prefix(br#"{"type":"event","#.as_slice())?;
    let at = memmem::find(rest, INSTANCE)? + INSTANCE.len();
    let ours = rest[at..].starts_with(instance_prefix);
    let rest = &rest[at..];
    let at = memmem::find(rest, OFFSET)? + OFFSET.len();
    let wal_offset = digits_at(&rest[at..])?;
    let rest = &rest[at..];
    let at = memmem::find(rest, PAYLOAD)? + PAYLOAD.len();
    let body = &rest[at..];
    if !ours {
        return Some(EventFacts {
            wal_offset,
            stamp_ns: None,
        });
    }
    let at = memmem::find(body, STAMP)? + STAMP.len();
    let stamp_ns = digits_at(&body[at..])?;
    Some(EventFacts {
        wal_offset,
        stamp_ns: Some(stamp_ns),
    })
}

/// Reads events until done (see the module doc). `conn` has already
/// subscribed; bytes it read past the WATCH_ALL answer are events.
pub async fn run_subscriber(
    mut conn: Conn,
    index: usize,
    subscription_id: String,
    instance_prefix: Vec<u8>,
    shared: &Shared,
    watch: &WatchShared,
) -> SubscriberOutcome {
    let mut out = SubscriberOutcome {
        subscription_id,
        events: 0,
        events_in_window: 0,
        foreign_events: 0,
        order_violations: 0,
        first_violations: Vec::new(),
        histogram: new_histogram(),
        slow_path_events: 0,
        last_event_after_writers_ms: None,
        end: SubscriberEnd::Complete,
    };
    let mut interval = tokio::time::interval(WATCH_CHECK_INTERVAL);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut highest_offset: Option<u64> = None;
    let mut last_event_at: Option<Instant> = None;
    let mut received_ns = unix_nanos();
    loop {
        let mut got_any = false;
        loop {
            let range = match conn.next_frame() {
                Ok(Some(range)) => range,
                Ok(None) => break,
                Err(e) => {
                    out.end = SubscriberEnd::Failed(format!("bad frame: {e}"));
                    return out;
                }
            };
            let facts = match parse_event(
                conn.payload(range),
                &instance_prefix,
                &mut out.slow_path_events,
            ) {
                Ok(facts) => facts,
                Err(why) => {
                    shared.report_failure(index, &format!("watch subscriber: {why}"));
                    out.end = SubscriberEnd::Failed(why);
                    return out;
                }
            };
            got_any = true;
            let Some(stamp_ns) = facts.stamp_ns else {
                out.foreign_events += 1;
                continue;
            };
            out.events += 1;
            if highest_offset.is_some_and(|h| facts.wal_offset <= h) {
                out.order_violations += 1;
                let before = highest_offset.unwrap_or(0);
                if out.first_violations.len() < ORDER_VIOLATIONS_KEPT_MAX {
                    eprintln!(
                        "!!! ORDER: subscriber {index} received wal_offset {} after {before}",
                        facts.wal_offset
                    );
                    out.first_violations.push((before, facts.wal_offset));
                }
            }
            highest_offset =
                Some(highest_offset.map_or(facts.wal_offset, |h| h.max(facts.wal_offset)));
            if shared.stamp_in_window(stamp_ns) {
                out.events_in_window += 1;
                let latency_us = received_ns.saturating_sub(stamp_ns) / 1000;
                out.histogram
                    .saturating_record(latency_us.clamp(1, LATENCY_US_MAX));
            }
        }
        let now = Instant::now();
        if got_any {
            last_event_at = Some(now);
        }
        if let Some(done_at) = watch.writers_done_at.get() {
            if out.events >= watch.applies_acked.get() {
                out.end = SubscriberEnd::Complete;
                break;
            }
            let quiet_since = last_event_at.map_or(done_at, |t| t.max(done_at));
            if now.duration_since(quiet_since) >= WATCH_DRAIN_QUIET {
                out.end = SubscriberEnd::Quiet;
                break;
            }
            if now.duration_since(done_at) >= watch.drain_timeout {
                out.end = SubscriberEnd::DrainTimeout;
                break;
            }
        }
        if shared.abort.get() {
            out.end = SubscriberEnd::Failed("the run was aborted".into());
            break;
        }
        tokio::select! {
            r = conn.fill() => match r {
                Ok(_) => received_ns = unix_nanos(),
                Err(e) => {
                    let why = format!("connection lost: {e}");
                    shared.report_failure(index, &format!("watch subscriber: {why}"));
                    out.end = SubscriberEnd::Failed(why);
                    break;
                }
            },
            _ = interval.tick() => {}
        }
    }
    if let (Some(last), Some(done)) = (last_event_at, watch.writers_done_at.get()) {
        out.last_event_after_writers_ms = Some(if last >= done {
            last.duration_since(done).as_millis() as i64
        } else {
            -(done.duration_since(last).as_millis() as i64)
        });
    }
    out
}

/// Waits for the subscribers; past their drain timeout (plus a grace) they
/// are told to give up.
pub async fn join_subscribers(
    handles: Vec<JoinHandle<SubscriberOutcome>>,
    shared: &Shared,
    watch: &WatchShared,
) -> Result<Vec<SubscriberOutcome>, BenchError> {
    let deadline = tokio::time::Instant::now() + watch.drain_timeout + SUBSCRIBER_JOIN_GRACE;
    let mut outcomes = Vec::with_capacity(handles.len());
    for mut handle in handles {
        let joined = match tokio::time::timeout_at(deadline, &mut handle).await {
            Ok(joined) => joined,
            Err(_) => {
                shared.abort.set(true);
                handle.await
            }
        };
        outcomes.push(joined.map_err(|e| BenchError(format!("subscriber task failed: {e}")))?);
    }
    Ok(outcomes)
}

fn fraction(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        if part == 0 {
            1.0
        } else {
            f64::INFINITY
        }
    } else {
        part as f64 / whole as f64
    }
}

pub fn watch_results(
    subscribers: &[SubscriberOutcome],
    applies_in_window: u64,
    applies_total: u64,
    elapsed_secs: f64,
) -> WatchResults {
    let mut all = new_histogram();
    let per_subscriber: Vec<SubscriberResult> = subscribers
        .iter()
        .map(|o| {
            all.add(&o.histogram).expect("same histogram bounds");
            SubscriberResult {
                subscription_id: o.subscription_id.clone(),
                events_in_window: o.events_in_window,
                events_per_sec: o.events_in_window as f64 / elapsed_secs.max(1e-9),
                delivered_fraction: fraction(o.events_in_window, applies_in_window),
                events_total: o.events,
                delivered_fraction_total: fraction(o.events, applies_total),
                foreign_events: o.foreign_events,
                order_violations: o.order_violations,
                first_violations: o.first_violations.iter().map(|&(a, b)| [a, b]).collect(),
                latency: Latency::from_histogram(&o.histogram),
                end: o.end.describe(),
                last_event_after_writers_ms: o.last_event_after_writers_ms,
                slow_path_events: o.slow_path_events,
            }
        })
        .collect();
    let min = |f: fn(&SubscriberResult) -> f64| {
        per_subscriber.iter().map(f).reduce(f64::min).unwrap_or(0.0)
    };
    let delivered_fraction_min = min(|s| s.delivered_fraction);
    let delivered_fraction_total_min = min(|s| s.delivered_fraction_total);
    WatchResults {
        subscribers: subscribers.len(),
        include_ctx: false,
        applies_acked_in_window: applies_in_window,
        applies_acked_total: applies_total,
        loss: per_subscriber
            .iter()
            .any(|s| s.events_in_window < applies_in_window || s.events_total < applies_total),
        order_violations: per_subscriber.iter().map(|s| s.order_violations).sum(),
        delivered_fraction_min,
        delivered_fraction_total_min,
        events_per_sec_min: min(|s| s.events_per_sec),
        events_per_sec_mean: per_subscriber.iter().map(|s| s.events_per_sec).sum::<f64>()
            / per_subscriber.len().max(1) as f64,
        latency: Latency::from_histogram(&all),
        per_subscriber,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_in_the_spec_layout_take_the_fast_path() {
        let mut slow = 0;
        let e = br#"{"type":"event","subscription_id":"sub-1","instance_id":"bi-t-3","machine":"corestate-bench","version":1,"wal_offset":1099511628118,"from_state":"a","to_state":"b","event":"go","payload":{"d":"xx","t":1700000000123456789}}"#;
        assert_eq!(
            parse_event(e, b"bi-t-", &mut slow),
            Ok(EventFacts {
                wal_offset: 1099511628118,
                stamp_ns: Some(1700000000123456789)
            })
        );
        assert_eq!(slow, 0);
        let foreign = br#"{"type":"event","subscription_id":"sub-1","instance_id":"order-1","machine":"m","version":1,"wal_offset":5,"from_state":"a","to_state":"b","event":"go","payload":{"t":1}}"#;
        assert_eq!(
            parse_event(foreign, b"bi-t-", &mut slow).unwrap().stamp_ns,
            None
        );
        assert_eq!(slow, 0);
    }

    #[test]
    fn other_layouts_are_parsed_and_non_events_rejected() {
        let mut slow = 0;
        let e = br#"{"wal_offset":7,"type":"event","payload":{"t":42},"instance_id":"bi-t-0"}"#;
        assert_eq!(
            parse_event(e, b"bi-t-", &mut slow),
            Ok(EventFacts {
                wal_offset: 7,
                stamp_ns: Some(42)
            })
        );
        assert_eq!(slow, 1);
        let response = br#"{"type":"response","id":"1","status":"ok","result":{}}"#;
        assert!(parse_event(response, b"bi-t-", &mut slow).is_err());
    }
}
