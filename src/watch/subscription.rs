//! Subscriptions: what a watcher asked for (docs/PROTOCOL.md §10) and where it is in the
//! merged stream. A subscription is only a filter and a cursor — the next
//! offset it has not yet seen — so its memory does not grow with traffic.

use std::cell::Cell;
use std::rc::Rc;

use shards::json::canonical::{write_str, write_u64};
use shards::shard::events::WatchEvent;

use crate::protocol::frame::{begin_frame, end_frame, FrameError, OutputMode};

/// Subscriptions one connection may hold at once.
pub const WATCH_SUBSCRIPTIONS_PER_CONNECTION_MAX: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    Instance(String),
    All {
        machines: Vec<String>,
        from_states: Vec<String>,
        to_states: Vec<String>,
        events: Vec<String>,
    },
}

fn allows(list: &[String], value: &str) -> bool {
    list.is_empty() || list.iter().any(|v| v == value)
}

impl Filter {
    pub fn matches(&self, e: &WatchEvent) -> bool {
        match self {
            Filter::Instance(id) => *id == e.instance_id,
            Filter::All {
                machines,
                from_states,
                to_states,
                events,
            } => {
                allows(machines, &e.machine)
                    && allows(from_states, &e.from_state)
                    && allows(to_states, &e.to_state)
                    && allows(events, &e.event)
            }
        }
    }
}

#[derive(Debug)]
pub struct Subscription {
    pub id: String,
    pub filter: Filter,
    pub include_ctx: bool,
    /// The next offset this subscription has not seen.
    pub cursor: u64,
}

/// A connection's subscriptions, shared by its reader (WATCH/UNWATCH) and
/// its writer (delivery). `waker` wakes the writer when events are released.
pub struct ConnWatch {
    pub subs: Vec<Subscription>,
    pub waker: Rc<flume::Sender<()>>,
    pub wake_rx: flume::Receiver<()>,
    /// How events are framed (follows the connection's wire mode).
    pub mode: Cell<OutputMode>,
    pub registered: bool,
}

impl ConnWatch {
    pub fn new(mode: OutputMode) -> Self {
        let (tx, rx) = flume::bounded(1);
        ConnWatch {
            subs: Vec::new(),
            waker: Rc::new(tx),
            wake_rx: rx,
            mode: Cell::new(mode),
            registered: false,
        }
    }

    pub fn remove(&mut self, id: &str) -> bool {
        let before = self.subs.len();
        self.subs.retain(|s| s.id != id);
        self.subs.len() != before
    }
}

pub fn new_subscription_id() -> String {
    format!("sub-{}", uuid::Uuid::new_v4())
}

/// Append one event message (PROTOCOL.md §2.4, keys in its fixed order).
/// Only the subscription id and the context (when asked for) differ between
/// subscribers; the rest is encoded once per event and shared
/// ([`WireCache`](shards::shard::events::WireCache)).
pub fn write_event(
    out: &mut Vec<u8>,
    mode: OutputMode,
    sub: &Subscription,
    e: &WatchEvent,
) -> Result<(), FrameError> {
    let mark = begin_frame(out, mode);
    out.extend_from_slice(br#"{"type":"event","subscription_id":"#);
    write_str(out, &sub.id);
    out.extend_from_slice(e.wire.get_or_init(|| shared_fields(e)));
    if sub.include_ctx {
        out.extend_from_slice(br#","ctx":"#);
        out.extend_from_slice(&e.ctx_json);
    }
    out.push(b'}');
    end_frame(out, mark)
}

/// The keys every subscriber's message carries, from `instance_id` to
/// `payload`, each preceded by its comma.
fn shared_fields(e: &WatchEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(shared_fields_len(e));
    out.extend_from_slice(br#","instance_id":"#);
    write_str(&mut out, &e.instance_id);
    out.extend_from_slice(br#","machine":"#);
    write_str(&mut out, &e.machine);
    out.extend_from_slice(br#","version":"#);
    write_u64(&mut out, u64::from(e.version));
    out.extend_from_slice(br#","wal_offset":"#);
    write_u64(&mut out, e.offset);
    out.extend_from_slice(br#","from_state":"#);
    write_str(&mut out, &e.from_state);
    out.extend_from_slice(br#","to_state":"#);
    write_str(&mut out, &e.to_state);
    out.extend_from_slice(br#","event":"#);
    write_str(&mut out, &e.event);
    out.extend_from_slice(br#","payload":"#);
    out.extend_from_slice(&e.payload_json);
    out
}

/// Bytes of [`shared_fields`] besides its strings and payload: the keys,
/// quotes and two numbers (with room to spare for a few escapes).
const SHARED_FIELDS_OVERHEAD_BYTES: usize = 160;

/// About how many bytes [`shared_fields`] makes of `e` (what an event
/// holds once a subscriber has read it; more only with many escapes).
pub fn shared_fields_len(e: &WatchEvent) -> usize {
    SHARED_FIELDS_OVERHEAD_BYTES + e.strings_len() + e.payload_json.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev() -> WatchEvent {
        WatchEvent {
            offset: 1099,
            instance_id: "order-1".into(),
            machine: "order".into(),
            version: 1,
            from_state: "created".into(),
            to_state: "paid".into(),
            event: "PAY".into(),
            payload_json: br#"{"amount":10}"#.to_vec(),
            ctx_json: br#"{"amount":10,"customer":"ann"}"#.to_vec(),
            wire: Default::default(),
        }
    }

    #[test]
    fn event_message_has_the_spec_shape() {
        let sub = Subscription {
            id: "sub-1".into(),
            filter: Filter::Instance("order-1".into()),
            include_ctx: true,
            cursor: 0,
        };
        let mut out = Vec::new();
        write_event(&mut out, OutputMode::Jsonl, &sub, &ev()).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"type\":\"event\",\"subscription_id\":\"sub-1\",\"instance_id\":\"order-1\",\"machine\":\"order\",\"version\":1,\"wal_offset\":1099,\"from_state\":\"created\",\"to_state\":\"paid\",\"event\":\"PAY\",\"payload\":{\"amount\":10},\"ctx\":{\"amount\":10,\"customer\":\"ann\"}}\n"
        );
    }

    #[test]
    fn subscribers_share_the_encoded_fields_and_keep_their_own_id_and_ctx() {
        let e = ev();
        let sub = |id: &str, include_ctx| Subscription {
            id: id.into(),
            filter: Filter::All {
                machines: vec![],
                from_states: vec![],
                to_states: vec![],
                events: vec![],
            },
            include_ctx,
            cursor: 0,
        };
        assert!(e.wire.is_empty());
        let mut first = Vec::new();
        write_event(&mut first, OutputMode::Jsonl, &sub("sub-1", true), &e).unwrap();
        let cached = e.wire.len();
        assert!(cached > 0, "the first delivery encodes the shared fields");
        let mut second = Vec::new();
        write_event(&mut second, OutputMode::Jsonl, &sub("sub-\"2", false), &e).unwrap();
        assert_eq!(e.wire.len(), cached);
        let mut a: serde_json::Value = serde_json::from_slice(&first).unwrap();
        let mut b: serde_json::Value = serde_json::from_slice(&second).unwrap();
        let (a, b) = (a.as_object_mut().unwrap(), b.as_object_mut().unwrap());
        assert_eq!(a.remove("subscription_id").unwrap(), "sub-1");
        assert_eq!(
            a.remove("ctx").unwrap(),
            serde_json::json!({"amount":10,"customer":"ann"})
        );
        assert_eq!(b.remove("subscription_id").unwrap(), "sub-\"2");
        assert!(b.get("ctx").is_none());
        // Everything else is the shared part, the same for both.
        assert_eq!(a, b);
        assert_eq!(a.len(), 9);
        // A copy of an event (a changed one, say) does not keep the bytes.
        assert!(e.clone().wire.is_empty());
    }

    #[test]
    fn filters_combine_with_and_values_with_or() {
        let all = |m: &[&str], to: &[&str]| Filter::All {
            machines: m.iter().map(|s| s.to_string()).collect(),
            from_states: vec![],
            to_states: to.iter().map(|s| s.to_string()).collect(),
            events: vec![],
        };
        assert!(all(&[], &[]).matches(&ev()));
        assert!(all(&["x", "order"], &["paid"]).matches(&ev()));
        assert!(!all(&["order"], &["shipped"]).matches(&ev()));
        assert!(!Filter::Instance("order-2".into()).matches(&ev()));
    }
}
