//! One connection's request generator: renders the next request of its
//! schedule (or of the pre-create list) into the write buffer and says
//! what the answer must show ([`Expect`]).

use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{OpKind, Templates, BATCH_OPS_MAX, MACHINE_NAME, MACHINE_VERSION};
use crate::frame;

/// Wall-clock time in nanoseconds since the Unix epoch (the stamp in
/// watched applies; subscribers on the same machine subtract it).
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// What a response must show, decided when its request was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A create of a pre-created instance (index into the templates).
    CreatedListed(u32),
    /// A load-phase create: the id is the create prefix, the connection
    /// index, `-`, then the request id.
    CreatedUnique,
    /// An apply; the `to_state` index when this connection owns the instance.
    Applied(Option<u8>),
    /// A get; the `state` index when this connection owns the instance.
    Got(Option<u8>),
    /// An atomic BATCH of `ops` applies; bit `i` of `to_states` is the
    /// `to_state` index op `i` must report (when this connection owns the
    /// instances).
    Batched { ops: u8, to_states: Option<u128> },
}

impl Expect {
    pub fn kind(self) -> OpKind {
        match self {
            Expect::CreatedListed(_) | Expect::CreatedUnique => OpKind::Create,
            Expect::Applied(_) => OpKind::Apply,
            Expect::Got(_) => OpKind::Get,
            Expect::Batched { .. } => OpKind::Batch,
        }
    }
}

/// Where a connection's requests come from.
enum Source {
    /// Cycle through the mix schedule forever.
    Mix {
        schedule: Rc<[OpKind]>,
        position: usize,
    },
    /// Create these listed instances once each, then stop.
    Precreate { next: usize },
}

/// One connection's request generator.
pub struct Generator {
    templates: Rc<Templates>,
    source: Source,
    /// Instance indices this connection drives.
    instances: Vec<u32>,
    /// Current state index per entry of `instances`, as of the last request
    /// sent (the server applies one connection's requests in order).
    states: Vec<u8>,
    /// True when no other connection touches `instances`.
    exclusive: bool,
    apply_cursor: usize,
    get_cursor: usize,
    /// `<create prefix><connection index>-`.
    create_prefix: Vec<u8>,
    /// The stamp of the last request rendered (0: not stamped).
    stamp_ns: u64,
}

impl Generator {
    /// A load generator for connection `index` of `connections`. With at
    /// least as many instances as connections each connection owns the
    /// instances `k` with `k % connections == index`; otherwise connections
    /// share instances and states cannot be predicted.
    pub fn load(
        templates: Rc<Templates>,
        schedule: Rc<[OpKind]>,
        index: usize,
        connections: usize,
    ) -> Generator {
        let total = templates.instance_ids.len();
        let (instances, exclusive): (Vec<u32>, bool) = if total == 0 {
            (Vec::new(), true)
        } else if total >= connections {
            (
                (index..total)
                    .step_by(connections)
                    .map(|k| k as u32)
                    .collect(),
                true,
            )
        } else {
            (vec![(index % total) as u32], false)
        };
        let position = (index * 7) % schedule.len().max(1);
        Generator::new(
            templates,
            Source::Mix { schedule, position },
            instances,
            exclusive,
            index,
        )
    }

    /// A setup generator creating the listed instances.
    pub fn precreate(templates: Rc<Templates>, instances: Vec<u32>, index: usize) -> Generator {
        Generator::new(
            templates,
            Source::Precreate { next: 0 },
            instances,
            true,
            index,
        )
    }

    fn new(
        templates: Rc<Templates>,
        source: Source,
        instances: Vec<u32>,
        exclusive: bool,
        index: usize,
    ) -> Generator {
        let mut create_prefix = templates.create_prefix.clone().into_bytes();
        frame::push_decimal(&mut create_prefix, index as u64);
        create_prefix.push(b'-');
        Generator {
            templates,
            source,
            states: vec![0; instances.len()],
            instances,
            exclusive,
            apply_cursor: 0,
            get_cursor: 0,
            create_prefix,
            stamp_ns: 0,
        }
    }

    /// False once a finite source is used up.
    pub fn has_next(&self) -> bool {
        match self.source {
            Source::Mix { .. } => true,
            Source::Precreate { next } => next < self.instances.len(),
        }
    }

    pub fn create_prefix(&self) -> &[u8] {
        &self.create_prefix
    }

    pub fn templates(&self) -> &Templates {
        &self.templates
    }

    /// The `"t"` stamp of the request rendered last; 0 when it had none.
    pub fn stamp_ns(&self) -> u64 {
        self.stamp_ns
    }

    /// Appends the frame of request `id` to `buf`.
    pub fn render_next(&mut self, id: u64, buf: &mut Vec<u8>) -> Expect {
        self.stamp_ns = 0;
        let kind = match &mut self.source {
            Source::Mix { schedule, position } => {
                let kind = schedule[*position];
                *position = (*position + 1) % schedule.len();
                kind
            }
            Source::Precreate { next } => {
                let k = self.instances[*next];
                *next += 1;
                let at = begin_request(buf, id, b"CREATE_INSTANCE");
                push_create_params(buf, &self.templates, |buf| {
                    buf.extend_from_slice(&self.templates.instance_ids[k as usize])
                });
                frame::finish(buf, at);
                return Expect::CreatedListed(k);
            }
        };
        // An apply or get with no instance to act on cannot happen: the
        // orchestrator pre-creates instances whenever the mix uses them.
        debug_assert!(kind == OpKind::Create || !self.instances.is_empty());
        let at;
        let expect = match kind {
            OpKind::Create => {
                at = begin_request(buf, id, b"CREATE_INSTANCE");
                let prefix = &self.create_prefix;
                push_create_params(buf, &self.templates, |buf| {
                    buf.extend_from_slice(prefix);
                    frame::push_decimal(buf, id);
                });
                Expect::CreatedUnique
            }
            OpKind::Apply => {
                at = begin_request(buf, id, b"APPLY_EVENT");
                buf.extend_from_slice(br#","params":"#);
                let stamp = self.templates.stamped.then(unix_nanos);
                self.stamp_ns = stamp.unwrap_or(0);
                let to_state = self.push_next_apply(buf, stamp);
                buf.push(b'}');
                Expect::Applied(self.exclusive.then_some(to_state))
            }
            OpKind::Batch => {
                // Consecutive instances of this connection: spread over the
                // shards by construction (`spread_instance_ids`), distinct
                // while batch_ops <= instances.
                let ops = self.templates.batch_ops;
                debug_assert!((1..=BATCH_OPS_MAX).contains(&ops));
                at = begin_request(buf, id, b"BATCH");
                buf.extend_from_slice(br#","params":{"mode":"atomic","ops":["#);
                let mut to_states = 0u128;
                for i in 0..ops {
                    if i > 0 {
                        buf.push(b',');
                    }
                    buf.extend_from_slice(br#"{"op":"APPLY_EVENT","params":"#);
                    let to_state = self.push_next_apply(buf, None);
                    buf.push(b'}');
                    to_states |= u128::from(to_state) << i;
                }
                buf.extend_from_slice(b"]}}");
                Expect::Batched {
                    ops: ops as u8,
                    to_states: self.exclusive.then_some(to_states),
                }
            }
            OpKind::Get => {
                let slot = next_slot(&mut self.get_cursor, self.instances.len());
                let k = self.instances[slot] as usize;
                at = begin_request(buf, id, b"GET_INSTANCE");
                buf.extend_from_slice(br#","params":{"instance_id":""#);
                buf.extend_from_slice(&self.templates.instance_ids[k]);
                buf.extend_from_slice(br#""}}"#);
                Expect::Got(self.exclusive.then_some(self.states[slot]))
            }
        };
        frame::finish(buf, at);
        expect
    }
}

impl Generator {
    /// Appends the params of an APPLY_EVENT to the next instance in turn
    /// and returns the state index it moves that instance to.
    fn push_next_apply(&mut self, buf: &mut Vec<u8>, stamp_ns: Option<u64>) -> u8 {
        let slot = next_slot(&mut self.apply_cursor, self.instances.len());
        let k = self.instances[slot] as usize;
        self.templates.push_apply_params(buf, k, stamp_ns);
        self.states[slot] ^= 1;
        self.states[slot]
    }
}

/// The slot `cursor` points at; moves the cursor on, wrapping at `len`.
fn next_slot(cursor: &mut usize, len: usize) -> usize {
    let slot = *cursor;
    *cursor = (slot + 1) % len;
    slot
}

/// Starts a frame and writes `{"type":"request","id":"<id>","op":"<op>"`.
fn begin_request(buf: &mut Vec<u8>, id: u64, op: &[u8]) -> usize {
    let at = frame::begin(buf);
    buf.extend_from_slice(br#"{"type":"request","id":""#);
    frame::push_decimal(buf, id);
    buf.extend_from_slice(br#"","op":""#);
    buf.extend_from_slice(op);
    buf.push(b'"');
    at
}

fn push_create_params(
    buf: &mut Vec<u8>,
    templates: &Templates,
    push_id: impl FnOnce(&mut Vec<u8>),
) {
    buf.extend_from_slice(br#","params":{"machine":""#);
    buf.extend_from_slice(MACHINE_NAME.as_bytes());
    buf.extend_from_slice(br#"","version":"#);
    frame::push_decimal(buf, MACHINE_VERSION as u64);
    buf.extend_from_slice(br#","instance_id":""#);
    push_id(buf);
    buf.extend_from_slice(br#"","initial_ctx":"#);
    buf.extend_from_slice(&templates.initial_ctx);
    buf.extend_from_slice(b"}}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{shard_of, spread_instance_ids};
    use serde_json::Value;

    fn payload_json(buf: &[u8]) -> Value {
        let d = frame::decode(buf).unwrap().unwrap();
        assert_eq!(d.payload_end, buf.len());
        serde_json::from_slice(&buf[d.payload_start..d.payload_end]).unwrap()
    }

    #[test]
    fn rendered_requests_are_valid_json() {
        let templates = Rc::new(Templates::new("t1", 4, 5));
        let schedule: Rc<[OpKind]> = Rc::from(vec![OpKind::Create, OpKind::Apply, OpKind::Get]);
        let mut gen = Generator::load(templates.clone(), schedule, 0, 2);
        let mut buf = Vec::new();
        assert_eq!(gen.render_next(41, &mut buf), Expect::CreatedUnique);
        let v = payload_json(&buf);
        assert_eq!(v["id"], "41");
        assert_eq!(v["params"]["instance_id"], "bc-t1-0-41");
        assert_eq!(v["params"]["initial_ctx"]["d"], "xxxxx");
        buf.clear();
        assert_eq!(gen.render_next(42, &mut buf), Expect::Applied(Some(1)));
        let v = payload_json(&buf);
        assert_eq!(v["op"], "APPLY_EVENT");
        assert_eq!(v["params"]["instance_id"], "bi-t1-0");
        assert_eq!(v["params"]["payload"]["d"], "xxxxx");
        buf.clear();
        assert_eq!(gen.render_next(43, &mut buf), Expect::Got(Some(1)));
        assert_eq!(payload_json(&buf)["params"]["instance_id"], "bi-t1-0");

        let mut pre = Generator::precreate(templates, vec![2, 3], 0);
        buf.clear();
        assert_eq!(pre.render_next(1, &mut buf), Expect::CreatedListed(2));
        assert_eq!(payload_json(&buf)["params"]["instance_id"], "bi-t1-2");
        buf.clear();
        pre.render_next(2, &mut buf);
        assert!(!pre.has_next());
    }

    #[test]
    fn a_batch_applies_to_consecutive_owned_instances() {
        let templates = Rc::new(
            Templates::new("t", 0, 3)
                .with_instance_ids(spread_instance_ids("t", 2, 6, 2))
                .with_batch_ops(4),
        );
        let schedule: Rc<[OpKind]> = Rc::from(vec![OpKind::Batch]);
        let mut gen = Generator::load(templates.clone(), schedule, 1, 2);
        let mut buf = Vec::new();
        let expect = gen.render_next(9, &mut buf);
        assert_eq!(
            expect,
            Expect::Batched {
                ops: 4,
                to_states: Some(0b1111)
            }
        );
        let v = payload_json(&buf);
        assert_eq!(v["op"], "BATCH");
        assert_eq!(v["params"]["mode"], "atomic");
        let ops = v["params"]["ops"].as_array().unwrap();
        let ids: Vec<&str> = ops
            .iter()
            .map(|op| {
                assert_eq!(op["op"], "APPLY_EVENT");
                assert_eq!(op["params"]["event"], "go");
                assert_eq!(op["params"]["payload"]["d"], "xxx");
                op["params"]["instance_id"].as_str().unwrap()
            })
            .collect();
        let owned: Vec<String> = (1..12)
            .step_by(2)
            .map(|k| String::from_utf8(templates.instance_ids[k].to_vec()).unwrap())
            .collect();
        assert_eq!(
            ids,
            owned[..4].iter().map(String::as_str).collect::<Vec<_>>()
        );
        let shards: Vec<usize> = ids.iter().map(|id| shard_of(id.as_bytes(), 2)).collect();
        assert_eq!(shards, vec![0, 1, 0, 1]);
        // The next batch wraps around the six owned instances: the first
        // two are applied a second time and flip back.
        buf.clear();
        assert_eq!(
            gen.render_next(10, &mut buf),
            Expect::Batched {
                ops: 4,
                to_states: Some(0b0011)
            }
        );
    }

    #[test]
    fn watched_applies_carry_a_time_stamp() {
        for payload_bytes in [0, 2] {
            let templates = Rc::new(Templates::new("t", 2, payload_bytes).stamped());
            let schedule: Rc<[OpKind]> = Rc::from(vec![OpKind::Apply]);
            let mut gen = Generator::load(templates, schedule, 0, 1);
            let mut buf = Vec::new();
            let before = unix_nanos();
            gen.render_next(1, &mut buf);
            let t = payload_json(&buf)["params"]["payload"]["t"]
                .as_u64()
                .unwrap();
            assert_eq!(gen.stamp_ns(), t);
            assert!(t >= before && t <= unix_nanos());
        }
    }

    #[test]
    fn shared_instances_have_no_expected_state() {
        let templates = Rc::new(Templates::new("t", 1, 0));
        let schedule: Rc<[OpKind]> = Rc::from(vec![OpKind::Apply]);
        let mut gen = Generator::load(templates, schedule, 3, 4);
        let mut buf = Vec::new();
        assert_eq!(gen.render_next(1, &mut buf), Expect::Applied(None));
        assert!(!payload_json(&buf)["params"]
            .as_object()
            .unwrap()
            .contains_key("payload"));
    }
}
