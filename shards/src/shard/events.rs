//! Watch events: what a shard publishes about its durable transitions, and
//! the publication that carries them (with the shard's watermark) to the
//! acceptor's merger.

use std::sync::{Arc, OnceLock};

use crate::wal::entry::{ApplyEventEntry, Entry, RawJson};

/// One successful APPLY_EVENT, ready to be sent to watchers (docs/PROTOCOL.md §2.4).
/// Payload and context are already canonical JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchEvent {
    pub offset: u64,
    pub instance_id: String,
    pub machine: String,
    pub version: u32,
    pub from_state: String,
    pub to_state: String,
    pub event: String,
    pub payload_json: Vec<u8>,
    pub ctx_json: Vec<u8>,
    /// Wire bytes derived from this event once and shared by every reader
    /// of it (see [`WireCache`]).
    pub wire: WireCache,
}

/// The part of an event's wire form that is the same for every subscriber,
/// encoded by whoever delivers the event first and reused by the rest: with
/// four WATCH_ALL subscribers an event's strings were escaped and its
/// numbers formatted four times, which was 9 % of a server's CPU under a
/// 16×16 apply load (profile in bench-results/2026-12-06/watch-wire-cache).
/// What the bytes are is the encoder's business
/// (`corestate::watch::subscription`); an event only carries them, so it is
/// shared between cores as before. Two events compare equal whatever their
/// caches hold.
#[derive(Default)]
pub struct WireCache(OnceLock<Box<[u8]>>);

impl WireCache {
    /// The cached bytes, encoded by `encode` on the first call.
    pub fn get_or_init(&self, encode: impl FnOnce() -> Vec<u8>) -> &[u8] {
        self.0.get_or_init(|| encode().into_boxed_slice())
    }

    /// Bytes held, 0 until the first delivery.
    pub fn len(&self) -> usize {
        self.0.get().map_or(0, |b| b.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Clone for WireCache {
    /// A copy starts empty: a changed copy must not keep the original's
    /// bytes.
    fn clone(&self) -> Self {
        WireCache::default()
    }
}

impl PartialEq for WireCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for WireCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WireCache({} bytes)", self.len())
    }
}

impl WatchEvent {
    /// Bytes of its five strings (instance, machine, states, event).
    pub fn strings_len(&self) -> usize {
        self.instance_id.len()
            + self.machine.len()
            + self.from_state.len()
            + self.to_state.len()
            + self.event.len()
    }

    /// Rebuild the event of an `apply_event` log entry (replay from the WAL).
    pub fn from_entry(offset: u64, entry: Entry) -> Option<WatchEvent> {
        match entry {
            Entry::ApplyEvent(apply) => Some(WatchEvent::from_apply(offset, apply)),
            _ => None,
        }
    }

    /// The event of an `apply_event` log entry at `offset`: its payload
    /// and context are the JSON text the entry holds, which is what the
    /// leader published.
    pub fn from_apply(offset: u64, entry: ApplyEventEntry) -> WatchEvent {
        WatchEvent {
            offset,
            instance_id: entry.instance_id,
            machine: entry.machine.unwrap_or_default(),
            version: entry.version.unwrap_or(0),
            from_state: entry.from_state,
            to_state: entry.to_state,
            event: entry.event,
            payload_json: entry
                .payload
                .map_or_else(|| b"null".to_vec(), RawJson::into_bytes),
            ctx_json: entry.ctx.into_bytes(),
            wire: WireCache::default(),
        }
    }
}

/// What a shard tells the merger after a group commit (or when asked to
/// advance): its newly durable events, in offset order, and its watermark —
/// every event it publishes later has an offset ≥ `watermark`.
#[derive(Debug, Clone)]
pub struct Publication {
    pub shard: usize,
    pub events: Vec<Arc<WatchEvent>>,
    pub watermark: u64,
    /// Events below this are read from the logs only (0 from a shard; a
    /// merge that spilled its pending events tells its replicas so).
    pub history_upto: u64,
}
