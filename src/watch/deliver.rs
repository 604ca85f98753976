//! Delivery of released events to a connection's subscriptions — the one
//! place that decides which events a watcher gets and from where (the ring
//! while it keeps up, the shards' logs when it fell behind or asked for
//! history): RCP connections (`server::connection::writer`) and WebSocket
//! streams (`http::ws`) both call `deliver_events` and differ only in how
//! they write what it encoded.

use std::cell::RefCell;
use std::rc::Rc;

use crate::metrics::WatchKind;
use crate::server::connection::{WATCH_EVENTS_PER_ROUND_MAX, WRITE_BUFFER_FLUSH_BYTES};
use crate::server::context::ServerCtx;
use crate::watch::catchup::read_merged;
use crate::watch::subscription::{write_event, ConnWatch, Filter};

/// Events released to each subscription since its cursor, appended to `out`
/// until it holds `WRITE_BUFFER_FLUSH_BYTES`. Returns whether more are due.
pub async fn deliver_events(
    ctx: &ServerCtx,
    watch: &Rc<RefCell<ConnWatch>>,
    out: &mut Vec<u8>,
) -> Result<bool, String> {
    let mode = watch.borrow().mode.get();
    let ids: Vec<String> = watch.borrow().subs.iter().map(|s| s.id.clone()).collect();
    let mut more = false;
    for id in ids {
        if out.len() >= WRITE_BUFFER_FLUSH_BYTES {
            return Ok(true);
        }
        let Some(cursor) = watch
            .borrow()
            .subs
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.cursor)
        else {
            continue;
        };
        let (ring_floor, released_upto) = {
            let m = ctx.merger.borrow();
            (m.ring_floor(), m.released_upto())
        };
        let (events, next_cursor, caught_up) = if cursor < ring_floor {
            let got = read_merged(&ctx.router, cursor)
                .await
                .map_err(|e| e.message)?;
            // Go round again: to read on from the logs, or — caught up — to
            // take what the ring already holds. Without progress (a batch
            // still undecided), the next release wakes us instead.
            let progressed = got.next_cursor > cursor;
            (got.events, got.next_cursor, !progressed)
        } else {
            let m = ctx.merger.borrow();
            let events = m
                .events_from(cursor, WATCH_EVENTS_PER_ROUND_MAX)
                .unwrap_or_default();
            if events.len() == WATCH_EVENTS_PER_ROUND_MAX {
                let next = events.last().map_or(cursor, |e| e.offset + 1);
                (events, next, false)
            } else {
                (events, cursor.max(released_upto), true)
            }
        };
        let mut w = watch.borrow_mut();
        let Some(sub) = w.subs.iter_mut().find(|s| s.id == id) else {
            continue;
        };
        let mut forwarded = 0u64;
        for e in events.iter().filter(|e| e.offset >= sub.cursor) {
            if sub.filter.matches(e) {
                write_event(out, mode, sub, e)
                    .map_err(|_| format!("event at offset {} exceeds the frame limit", e.offset))?;
                forwarded += 1;
            }
        }
        if forwarded > 0 {
            let kind = match sub.filter {
                Filter::Instance(_) => WatchKind::Instance,
                Filter::All { .. } => WatchKind::All,
            };
            ctx.metrics.events_forwarded(kind, forwarded);
        }
        sub.cursor = sub.cursor.max(next_cursor);
        more |= !caught_up;
    }
    Ok(more)
}
