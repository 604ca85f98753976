//! One delivery task per webhook, on core 0: follow the merged event stream
//! from the webhook's cursor in `wal_offset` order and POST each event that
//! matches, one request at a time, until a 2xx acknowledges it.
//!
//! The stream is read as a WATCH_ALL subscription reads it
//! (`crate::server::connection::writer`): from the primary merge's ring
//! while the cursor is inside it, from the shards' logs (`watch::catchup`)
//! when it is older — so a webhook holds at most one round of events
//! (`WEBHOOK_EVENTS_PER_ROUND_MAX`) and never a queue that grows with
//! traffic, and writers never wait for it.
//!
//! Failure: a non-2xx answer, a timeout or a connection error is retried
//! after `WEBHOOK_RETRY_BACKOFF_BASE_MS` · 2^(failures−1), capped at
//! `WEBHOOK_RETRY_BACKOFF_MAX_MS`, with jitter (a uniform pick in the upper
//! half). After `WEBHOOK_FAILED_ATTEMPTS_BEFORE_PAUSE` consecutive failures
//! the webhook is paused (durably) on that event until resumed.
//!
//! Cursor: advanced past each acknowledged (or filtered-out) event, saved
//! durably after `WEBHOOK_CURSOR_SAVE_DELIVERIES_MAX` deliveries or within
//! `WEBHOOK_CURSOR_SAVE_INTERVAL_MS` of moving — so after a crash the
//! deliveries acknowledged since the last save are sent again.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_lite::future;
use shards::json::canonical::write_str;
use shards::shard::events::WatchEvent;

use super::{
    client, sign, Hook, Webhooks, WEBHOOK_CURSOR_SAVE_DELIVERIES_MAX,
    WEBHOOK_CURSOR_SAVE_INTERVAL_MS, WEBHOOK_EVENTS_PER_ROUND_MAX,
    WEBHOOK_FAILED_ATTEMPTS_BEFORE_PAUSE, WEBHOOK_RETRY_BACKOFF_BASE_MS,
    WEBHOOK_RETRY_BACKOFF_MAX_MS,
};
use crate::server::context::ServerCtx;
use crate::watch::catchup::read_merged;

/// Header carrying the signature of the body.
pub const SIGNATURE_HEADER: &str = "x-corestate-signature";
/// Header carrying the delivery id: the event's `wal_offset`.
pub const DELIVERY_HEADER: &str = "x-corestate-delivery";
/// Header carrying the webhook's id.
pub const WEBHOOK_ID_HEADER: &str = "x-corestate-webhook";
/// Header carrying when this attempt was sent, in Unix milliseconds.
pub const TIMESTAMP_HEADER: &str = "x-corestate-timestamp";

/// Start `hook`'s delivery task.
pub fn start(ctx: Rc<ServerCtx>, hooks: Rc<Webhooks>, hook: Rc<Hook>) {
    glommio::spawn_local(run(ctx, hooks, hook)).detach();
}

/// How a delivery ended.
enum Outcome {
    Delivered,
    /// Paused after too many failures, or deleted: stop at this event.
    Stopped,
}

async fn run(ctx: Rc<ServerCtx>, hooks: Rc<Webhooks>, hook: Rc<Hook>) {
    ctx.merger.borrow_mut().register_waker(&hook.waker);
    let mut saver = Saver::new();
    let mut pause_saved = false;
    loop {
        if hook.deleted.get() {
            return;
        }
        if hook.status.borrow().paused {
            if !pause_saved {
                // The pause, and the cursor it holds, survive a restart.
                pause_saved = saver.save_always(&hooks, &hook).await;
            }
            let _ = hook.wake_rx.recv_async().await;
            continue;
        }
        pause_saved = false;
        let cursor = hook.cursor.get();
        let round = match next_round(&ctx, cursor).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("webhook {}: cannot read events from {cursor}: {e}", hook.id);
                hook.set_error(&format!("reading events: {e}"));
                glommio::timer::sleep(Duration::from_millis(WEBHOOK_RETRY_BACKOFF_MAX_MS)).await;
                continue;
            }
        };
        let mut stopped = false;
        for e in round.events.iter().filter(|e| e.offset >= cursor) {
            if hook.matcher.matches(e) {
                // Everything before this event is done: the status shows
                // the offset being delivered (or paused on).
                hook.cursor.set(e.offset);
                match deliver(&hooks, &hook, e).await {
                    Outcome::Delivered => saver.delivered += 1,
                    Outcome::Stopped => {
                        stopped = true;
                        break;
                    }
                }
            }
            hook.cursor.set(e.offset + 1);
            saver.moved(&hooks, &hook).await;
        }
        if stopped {
            continue;
        }
        hook.cursor.set(hook.cursor.get().max(round.next_cursor));
        if round.caught_up {
            // Wait for the next release; save a moved cursor meanwhile.
            let woken = future::or(
                async {
                    let _ = hook.wake_rx.recv_async().await;
                    true
                },
                async {
                    glommio::timer::sleep(Duration::from_millis(WEBHOOK_CURSOR_SAVE_INTERVAL_MS))
                        .await;
                    false
                },
            )
            .await;
            if !woken {
                saver.save_now(&hooks, &hook).await;
            }
        } else {
            saver.moved(&hooks, &hook).await;
            future::yield_now().await;
        }
    }
}

struct Round {
    events: Vec<Arc<WatchEvent>>,
    next_cursor: u64,
    /// Nothing more is released yet: wait for a wake.
    caught_up: bool,
}

/// The events from `cursor` on: from the ring, or from the logs when the
/// ring no longer holds them.
async fn next_round(ctx: &ServerCtx, cursor: u64) -> Result<Round, String> {
    let ring_floor = ctx.merger.borrow().ring_floor();
    if cursor < ring_floor {
        let got = read_merged(&ctx.router, cursor)
            .await
            .map_err(|e| e.message)?;
        let progressed = got.next_cursor > cursor;
        return Ok(Round {
            events: got.events,
            next_cursor: got.next_cursor,
            caught_up: !progressed,
        });
    }
    let m = ctx.merger.borrow();
    let events = m
        .events_from(cursor, WEBHOOK_EVENTS_PER_ROUND_MAX)
        .unwrap_or_default();
    if events.len() == WEBHOOK_EVENTS_PER_ROUND_MAX {
        let next = events.last().map_or(cursor, |e| e.offset + 1);
        Ok(Round {
            events,
            next_cursor: next,
            caught_up: false,
        })
    } else {
        Ok(Round {
            events,
            next_cursor: cursor.max(m.released_upto()),
            caught_up: true,
        })
    }
}

/// POST `e` until acknowledged, paused or deleted.
async fn deliver(hooks: &Webhooks, hook: &Hook, e: &WatchEvent) -> Outcome {
    let body = Bytes::from(event_body(&hook.id, e));
    let signature = sign::signature(hook.secret.as_bytes(), &body);
    loop {
        if hook.deleted.get() || !hooks.contains(&hook.id) {
            return Outcome::Stopped;
        }
        let headers = vec![
            (SIGNATURE_HEADER, signature.clone()),
            (DELIVERY_HEADER, e.offset.to_string()),
            (WEBHOOK_ID_HEADER, hook.id.clone()),
            (TIMESTAMP_HEADER, unix_ms().to_string()),
        ];
        let result = match client::post(&hook.target, headers, body.clone()).await {
            Ok(status) if (200..300).contains(&status) => Ok(()),
            Ok(status) => Err(format!("the receiver answered {status}")),
            Err(e) => Err(e),
        };
        let failures = {
            let mut s = hook.status.borrow_mut();
            if s.consecutive_failures > 0 {
                s.retries += 1;
            }
            match &result {
                Ok(()) => {
                    s.delivered += 1;
                    s.consecutive_failures = 0;
                    return Outcome::Delivered;
                }
                Err(_) => {
                    s.failed_attempts += 1;
                    s.consecutive_failures += 1;
                    s.consecutive_failures
                }
            }
        };
        let error = result.err().unwrap_or_default();
        hook.set_error(&format!("delivery {}: {error}", e.offset));
        if failures >= WEBHOOK_FAILED_ATTEMPTS_BEFORE_PAUSE {
            hook.status.borrow_mut().paused = true;
            tracing::warn!(
                "webhook {} paused after {failures} failed attempts at offset {} ({}): {error}; resume with POST /v1/webhooks/{}/resume",
                hook.id,
                e.offset,
                hook.url,
                hook.id
            );
            return Outcome::Stopped;
        }
        tracing::debug!(
            "webhook {}: attempt {failures} at offset {} failed: {error}",
            hook.id,
            e.offset
        );
        // Sleep; a delete wakes us early.
        let wait = backoff_ms(failures);
        future::or(
            async {
                glommio::timer::sleep(Duration::from_millis(wait)).await;
            },
            async {
                loop {
                    let _ = hook.wake_rx.recv_async().await;
                    if hook.deleted.get() {
                        return;
                    }
                }
            },
        )
        .await;
    }
}

/// The wait before the attempt after `failures` consecutive failures:
/// exponential, capped, with jitter in its upper half.
pub fn backoff_ms(failures: u32) -> u64 {
    let exponent = failures.saturating_sub(1).min(32);
    let full = WEBHOOK_RETRY_BACKOFF_BASE_MS
        .saturating_mul(1u64 << exponent)
        .min(WEBHOOK_RETRY_BACKOFF_MAX_MS);
    let half = full / 2;
    half + RandomState::new().hash_one(Instant::now()) % (full - half + 1)
}

/// The JSON body: the watch event's fields (docs/PROTOCOL.md §2.4) with the
/// webhook's id, keys in a fixed order.
pub fn event_body(webhook_id: &str, e: &WatchEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + e.payload_json.len() + e.ctx_json.len());
    out.extend_from_slice(br#"{"type":"event","webhook_id":"#);
    write_str(&mut out, webhook_id);
    out.extend_from_slice(br#","instance_id":"#);
    write_str(&mut out, &e.instance_id);
    out.extend_from_slice(br#","machine":"#);
    write_str(&mut out, &e.machine);
    out.extend_from_slice(br#","version":"#);
    out.extend_from_slice(e.version.to_string().as_bytes());
    out.extend_from_slice(br#","wal_offset":"#);
    out.extend_from_slice(e.offset.to_string().as_bytes());
    out.extend_from_slice(br#","from_state":"#);
    write_str(&mut out, &e.from_state);
    out.extend_from_slice(br#","to_state":"#);
    write_str(&mut out, &e.to_state);
    out.extend_from_slice(br#","event":"#);
    write_str(&mut out, &e.event);
    out.extend_from_slice(br#","payload":"#);
    out.extend_from_slice(&e.payload_json);
    out.extend_from_slice(br#","ctx":"#);
    out.extend_from_slice(&e.ctx_json);
    out.push(b'}');
    out
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// When to make a moved cursor durable.
struct Saver {
    delivered: u64,
    since: Option<Instant>,
}

impl Saver {
    fn new() -> Self {
        Saver {
            delivered: 0,
            since: None,
        }
    }

    /// The cursor moved: save if enough deliveries or time piled up.
    async fn moved(&mut self, hooks: &Webhooks, hook: &Hook) {
        let since = *self.since.get_or_insert_with(Instant::now);
        if self.delivered >= WEBHOOK_CURSOR_SAVE_DELIVERIES_MAX
            || since.elapsed() >= Duration::from_millis(WEBHOOK_CURSOR_SAVE_INTERVAL_MS)
        {
            self.save_now(hooks, hook).await;
        }
    }

    /// Save the cursor if it moved since the last save.
    async fn save_now(&mut self, hooks: &Webhooks, hook: &Hook) {
        if hook.cursor.get() == hook.saved_cursor.get() {
            self.delivered = 0;
            self.since = None;
            return;
        }
        self.save_always(hooks, hook).await;
    }

    /// Save the webhook's state now; whether it is durable.
    async fn save_always(&mut self, hooks: &Webhooks, hook: &Hook) -> bool {
        if hook.deleted.get() {
            return true;
        }
        let before = hook.saved_cursor.replace(hook.cursor.get());
        match hooks.save().await {
            Ok(()) => {
                self.delivered = 0;
                self.since = None;
                true
            }
            Err(e) => {
                hook.saved_cursor.set(before);
                tracing::warn!("webhook {}: cannot save its cursor: {e}", hook.id);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_and_jittered_in_its_upper_half() {
        for failures in 1..=40u32 {
            let full = (WEBHOOK_RETRY_BACKOFF_BASE_MS << (failures - 1).min(32))
                .min(WEBHOOK_RETRY_BACKOFF_MAX_MS);
            for _ in 0..20 {
                let b = backoff_ms(failures);
                assert!(b >= full / 2 && b <= full, "{failures}: {b} vs {full}");
            }
        }
    }

    #[test]
    fn the_body_carries_the_watch_event_fields() {
        let e = WatchEvent {
            offset: 7,
            instance_id: "o-1".into(),
            machine: "order".into(),
            version: 2,
            from_state: "new".into(),
            to_state: "paid".into(),
            event: "PAY".into(),
            payload_json: br#"{"a":1}"#.to_vec(),
            ctx_json: b"{}".to_vec(),
            wire: Default::default(),
        };
        let v: serde_json::Value = serde_json::from_slice(&event_body("wh-1", &e)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"event","webhook_id":"wh-1","instance_id":"o-1",
                "machine":"order","version":2,"wal_offset":7,"from_state":"new",
                "to_state":"paid","event":"PAY","payload":{"a":1},"ctx":{}})
        );
    }
}
