//! Webhooks on transitions (issue 15 item 6): subscriptions created through
//! the HTTP API, each POSTing every committed transition that matches its
//! filters to its URL, at least once and in `wal_offset` order.
//!
//! * `mod.rs` — the registry on core 0: subscriptions, their status and
//!   counters, the API's operations on them, their metrics;
//! * `store.rs` — the durable file of subscriptions and cursors;
//! * `delivery.rs` — one task per webhook following the merged stream;
//! * `client.rs` — hyper's HTTP/1.1 client on glommio, one request at a time;
//! * `sign.rs` — the HMAC-SHA256 signature header.
//!
//! Everything here runs on core 0, beside the primary watch merge whose
//! ring and catch-up-from-logs (`crate::watch`) the deliveries read: a
//! webhook is a cursor into that stream, like a WATCH_ALL subscription, so
//! it holds no queue of its own and a slow receiver slows only itself.

pub mod client;
pub mod delivery;
pub mod sign;
pub mod store;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use shards::{EngineError, EngineResult, ErrorCode};

use crate::metrics::Exposition;
use crate::server::context::ServerCtx;
use crate::watch::subscription::Filter;
use store::{Store, StoredHook};

/// Webhooks that may exist at once.
pub const WEBHOOKS_MAX: usize = 64;
/// Longest URL, in bytes.
pub const WEBHOOK_URL_BYTES_MAX: usize = 2048;
/// Longest secret, in bytes.
pub const WEBHOOK_SECRET_BYTES_MAX: usize = 1024;
/// Longest filter value (machine, event, to_state), in bytes.
pub const WEBHOOK_FILTER_BYTES_MAX: usize = 256;
/// Longest an attempt may take (connect, request, answer) before it counts
/// as failed.
pub const WEBHOOK_REQUEST_TIMEOUT_MS: u64 = 5_000;
/// Answer body bytes read (and discarded) at most per attempt.
pub const WEBHOOK_RESPONSE_BODY_BYTES_MAX: usize = 64 * 1024;
/// Wait before the first retry; doubled for each further failure.
pub const WEBHOOK_RETRY_BACKOFF_BASE_MS: u64 = 100;
/// Longest wait between two attempts.
pub const WEBHOOK_RETRY_BACKOFF_MAX_MS: u64 = 30_000;
/// Consecutive failed attempts of one delivery after which the webhook is
/// paused (until resumed through the API).
pub const WEBHOOK_FAILED_ATTEMPTS_BEFORE_PAUSE: u32 = 6;
/// A delivered cursor is saved at most this long after it moved...
pub const WEBHOOK_CURSOR_SAVE_INTERVAL_MS: u64 = 200;
/// ...or after this many deliveries, whichever comes first.
pub const WEBHOOK_CURSOR_SAVE_DELIVERIES_MAX: u64 = 100;
/// Events a delivery task takes from the ring per round.
pub const WEBHOOK_EVENTS_PER_ROUND_MAX: usize = 256;
/// Longest error text kept in a webhook's status.
const WEBHOOK_LAST_ERROR_BYTES_MAX: usize = 512;

/// What a webhook matches: every field given must be equal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookFilter {
    pub machine: Option<String>,
    pub event: Option<String>,
    pub to_state: Option<String>,
}

impl HookFilter {
    /// The same test WATCH_ALL applies.
    pub fn as_watch_filter(&self) -> Filter {
        let one = |v: &Option<String>| v.iter().cloned().collect::<Vec<_>>();
        Filter::All {
            machines: one(&self.machine),
            from_states: Vec::new(),
            to_states: one(&self.to_state),
            events: one(&self.event),
        }
    }
}

/// Delivery counters and state of one webhook.
#[derive(Debug, Default)]
pub struct HookStatus {
    pub paused: bool,
    pub last_error: Option<String>,
    /// Failed attempts of the delivery in progress (0 after a success).
    pub consecutive_failures: u32,
    pub delivered: u64,
    pub failed_attempts: u64,
    pub retries: u64,
}

/// One webhook: its subscription, where it is, how it goes.
pub struct Hook {
    pub id: String,
    pub url: String,
    pub target: client::Target,
    pub filter: HookFilter,
    pub matcher: Filter,
    pub secret: String,
    pub created_ms: u64,
    /// The next offset not yet delivered or skipped.
    pub cursor: Cell<u64>,
    /// The cursor last made durable.
    pub saved_cursor: Cell<u64>,
    pub status: RefCell<HookStatus>,
    pub deleted: Cell<bool>,
    /// Wakes the delivery task: released events (the merger), resume, delete.
    pub waker: Rc<flume::Sender<()>>,
    pub wake_rx: flume::Receiver<()>,
}

impl Hook {
    fn from_stored(s: StoredHook) -> Result<Hook, String> {
        let target = client::parse_url(&s.url)?;
        let filter = HookFilter {
            machine: s.machine,
            event: s.event,
            to_state: s.to_state,
        };
        let (tx, rx) = flume::bounded(1);
        Ok(Hook {
            id: s.id,
            url: s.url,
            target,
            matcher: filter.as_watch_filter(),
            filter,
            secret: s.secret,
            created_ms: s.created_ms,
            cursor: Cell::new(s.cursor),
            saved_cursor: Cell::new(s.cursor),
            status: RefCell::new(HookStatus {
                paused: s.paused,
                ..HookStatus::default()
            }),
            deleted: Cell::new(false),
            waker: Rc::new(tx),
            wake_rx: rx,
        })
    }

    fn stored(&self) -> StoredHook {
        StoredHook {
            id: self.id.clone(),
            url: self.url.clone(),
            machine: self.filter.machine.clone(),
            event: self.filter.event.clone(),
            to_state: self.filter.to_state.clone(),
            secret: self.secret.clone(),
            cursor: self.saved_cursor.get(),
            paused: self.status.borrow().paused,
            created_ms: self.created_ms,
        }
    }

    pub fn wake(&self) {
        let _ = self.waker.try_send(());
    }

    /// The API's view: never the secret.
    pub fn view(&self) -> Value {
        let s = self.status.borrow();
        let mut filters = Map::new();
        for (key, value) in [
            ("machine", &self.filter.machine),
            ("event", &self.filter.event),
            ("to_state", &self.filter.to_state),
        ] {
            if let Some(v) = value {
                filters.insert(key.into(), Value::String(v.clone()));
            }
        }
        json!({
            "id": self.id,
            "url": self.url,
            "filters": filters,
            "status": if s.paused { "paused" } else { "active" },
            "cursor": self.cursor.get(),
            "saved_cursor": self.saved_cursor.get(),
            "delivered": s.delivered,
            "failed_attempts": s.failed_attempts,
            "retries": s.retries,
            "consecutive_failures": s.consecutive_failures,
            "last_error": s.last_error,
            "created_ms": self.created_ms,
        })
    }

    pub fn set_error(&self, error: &str) {
        let mut text = error.to_string();
        if text.len() > WEBHOOK_LAST_ERROR_BYTES_MAX {
            let mut end = WEBHOOK_LAST_ERROR_BYTES_MAX;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        self.status.borrow_mut().last_error = Some(text);
    }
}

/// Every webhook of the server, on core 0.
pub struct Webhooks {
    hooks: RefCell<BTreeMap<String, Rc<Hook>>>,
    store: Store,
}

impl Webhooks {
    /// The webhooks stored in `data_dir`.
    pub fn load(data_dir: &Path) -> Result<Rc<Webhooks>, String> {
        let store = Store::new(data_dir);
        let mut hooks = BTreeMap::new();
        for stored in store.load()? {
            let id = stored.id.clone();
            let hook = Hook::from_stored(stored).map_err(|e| format!("webhook {id}: {e}"))?;
            hooks.insert(id, Rc::new(hook));
        }
        Ok(Rc::new(Webhooks {
            hooks: RefCell::new(hooks),
            store,
        }))
    }

    /// Start a delivery task for every loaded webhook.
    pub fn start_all(self: &Rc<Self>, ctx: &Rc<ServerCtx>) {
        let hooks: Vec<Rc<Hook>> = self.hooks.borrow().values().cloned().collect();
        if !hooks.is_empty() {
            tracing::info!("webhooks: {} loaded", hooks.len());
        }
        for hook in hooks {
            delivery::start(ctx.clone(), self.clone(), hook);
        }
    }

    /// Make every webhook, with its saved cursor, durable.
    pub async fn save(&self) -> std::io::Result<()> {
        self.store
            .save(|| {
                let hooks = self.hooks.borrow();
                hooks.values().map(|h| h.stored()).collect()
            })
            .await
    }

    /// Make every webhook's current cursor durable (graceful shutdown), so
    /// a clean restart repeats no acknowledged delivery.
    pub async fn save_cursors(&self) {
        let hooks: Vec<Rc<Hook>> = self.hooks.borrow().values().cloned().collect();
        let before: Vec<u64> = hooks
            .iter()
            .map(|h| h.saved_cursor.replace(h.cursor.get()))
            .collect();
        if let Err(e) = self.save().await {
            for (hook, cursor) in hooks.iter().zip(before) {
                hook.saved_cursor.set(cursor);
            }
            tracing::warn!("webhooks: cannot save the cursors at shutdown: {e}");
        }
    }

    fn get(&self, id: &str) -> EngineResult<Rc<Hook>> {
        self.hooks.borrow().get(id).cloned().ok_or_else(|| {
            EngineError::new(ErrorCode::NotFound, format!("no webhook with id `{id}`"))
        })
    }

    /// `POST /v1/webhooks`: validate, store durably, start delivering the
    /// transitions committed from now on.
    pub async fn create(self: &Rc<Self>, ctx: &Rc<ServerCtx>, body: &Value) -> EngineResult<Value> {
        let Value::Object(params) = body else {
            return Err(EngineError::bad_request(
                "the request body must be a JSON object with `url` and `secret`",
            ));
        };
        for key in params.keys() {
            if !["url", "secret", "machine", "event", "to_state"].contains(&key.as_str()) {
                return Err(EngineError::bad_request(format_args!(
                    "unknown field `{key}` (expected url, secret, machine, event, to_state)"
                )));
            }
        }
        let text = |key: &str, max: usize, required: bool| -> EngineResult<Option<String>> {
            match params.get(key) {
                None | Some(Value::Null) if !required => Ok(None),
                None | Some(Value::Null) => Err(EngineError::bad_request(format_args!(
                    "missing field `{key}`"
                ))),
                Some(Value::String(s)) if s.is_empty() => Err(EngineError::bad_request(
                    format_args!("`{key}` must not be empty"),
                )),
                Some(Value::String(s)) if s.len() > max => Err(EngineError::bad_request(
                    format_args!("`{key}` is longer than {max} bytes"),
                )),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(EngineError::bad_request(format_args!(
                    "`{key}` must be a string"
                ))),
            }
        };
        let url = text("url", WEBHOOK_URL_BYTES_MAX, true)?.unwrap_or_default();
        client::parse_url(&url).map_err(EngineError::bad_request)?;
        let secret = text("secret", WEBHOOK_SECRET_BYTES_MAX, true)?.unwrap_or_default();
        let stored = StoredHook {
            id: format!("wh-{}", uuid::Uuid::new_v4()),
            url,
            machine: text("machine", WEBHOOK_FILTER_BYTES_MAX, false)?,
            event: text("event", WEBHOOK_FILTER_BYTES_MAX, false)?,
            to_state: text("to_state", WEBHOOK_FILTER_BYTES_MAX, false)?,
            secret,
            // Only transitions acknowledged after this request arrived.
            cursor: ctx.merger.borrow().live_start(),
            paused: false,
            created_ms: now_ms(),
        };
        if self.hooks.borrow().len() >= WEBHOOKS_MAX {
            return Err(EngineError::new(
                ErrorCode::Conflict,
                format!("too many webhooks (max {WEBHOOKS_MAX}); delete one first"),
            ));
        }
        let hook = Rc::new(Hook::from_stored(stored).map_err(EngineError::bad_request)?);
        self.hooks
            .borrow_mut()
            .insert(hook.id.clone(), hook.clone());
        if let Err(e) = self.save().await {
            self.hooks.borrow_mut().remove(&hook.id);
            return Err(EngineError::new(
                ErrorCode::WalIoError,
                format!("cannot store the webhook: {e}"),
            ));
        }
        tracing::info!(
            "webhook {} created: {} from offset {}",
            hook.id,
            hook.url,
            hook.cursor.get()
        );
        delivery::start(ctx.clone(), self.clone(), hook.clone());
        Ok(hook.view())
    }

    /// `GET /v1/webhooks`.
    pub fn list(&self) -> Value {
        let hooks = self.hooks.borrow();
        json!({ "webhooks": hooks.values().map(|h| h.view()).collect::<Vec<_>>() })
    }

    /// `GET /v1/webhooks/{id}`.
    pub fn view(&self, id: &str) -> EngineResult<Value> {
        Ok(self.get(id)?.view())
    }

    /// `DELETE /v1/webhooks/{id}`: gone once durable; its task stops (an
    /// attempt in flight ends within its timeout, unanswered or not).
    pub async fn delete(&self, id: &str) -> EngineResult<Value> {
        let hook = self.get(id)?;
        self.hooks.borrow_mut().remove(id);
        if let Err(e) = self.save().await {
            self.hooks.borrow_mut().insert(hook.id.clone(), hook);
            return Err(EngineError::new(
                ErrorCode::WalIoError,
                format!("cannot store the deletion: {e}"),
            ));
        }
        hook.deleted.set(true);
        hook.wake();
        tracing::info!("webhook {id} deleted");
        Ok(json!({ "id": id, "deleted": true }))
    }

    /// `POST /v1/webhooks/{id}/resume`: a paused webhook tries again from
    /// the delivery it stopped at; an active one is left as it is.
    pub async fn resume(&self, id: &str) -> EngineResult<Value> {
        let hook = self.get(id)?;
        let was_paused = {
            let mut s = hook.status.borrow_mut();
            let was = s.paused;
            if was {
                s.paused = false;
                s.consecutive_failures = 0;
            }
            was
        };
        if was_paused {
            if let Err(e) = self.save().await {
                hook.status.borrow_mut().paused = true;
                return Err(EngineError::new(
                    ErrorCode::WalIoError,
                    format!("cannot store the resume: {e}"),
                ));
            }
            tracing::info!("webhook {id} resumed at offset {}", hook.cursor.get());
            hook.wake();
        }
        Ok(hook.view())
    }

    /// Still registered (not deleted)?
    pub fn contains(&self, id: &str) -> bool {
        self.hooks.borrow().contains_key(id)
    }

    /// The `corestate_webhook_*` series.
    pub fn render(&self, out: &mut Exposition) {
        let hooks = self.hooks.borrow();
        out.single(
            "corestate_webhooks",
            "gauge",
            "Webhooks registered.",
            hooks.len() as f64,
        );
        type Read = fn(&Hook) -> f64;
        let series: [(&str, &str, &str, Read); 5] = [
            (
                "corestate_webhook_delivered_total",
                "counter",
                "Deliveries acknowledged with a 2xx since the server started, by webhook.",
                |h| h.status.borrow().delivered as f64,
            ),
            (
                "corestate_webhook_failed_attempts_total",
                "counter",
                "Attempts that failed (non-2xx, timeout, connection error), by webhook.",
                |h| h.status.borrow().failed_attempts as f64,
            ),
            (
                "corestate_webhook_retries_total",
                "counter",
                "Attempts that repeated a delivery after a failure, by webhook.",
                |h| h.status.borrow().retries as f64,
            ),
            (
                "corestate_webhook_paused",
                "gauge",
                "1 while the webhook is paused after repeated failures, else 0.",
                |h| f64::from(u8::from(h.status.borrow().paused)),
            ),
            (
                "corestate_webhook_cursor_offset",
                "gauge",
                "The next wal_offset the webhook has not delivered yet.",
                |h| h.cursor.get() as f64,
            ),
        ];
        for (name, kind, help, read) in series {
            out.header(name, kind, help);
            for hook in hooks.values() {
                out.sample(name, &[("webhook", &hook.id)], read(hook));
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
