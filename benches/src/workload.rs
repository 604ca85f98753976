//! What each connection sends: the bench machine, the mix of operations,
//! which instances a connection owns (spread over the server's shards for
//! batches), and the request renderer. Requests are assembled from
//! pre-rendered byte fragments (instance ids, payload) and patched request
//! ids — no per-request formatting or allocation.

use std::fmt;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::frame;

/// Name of the machine the harness installs.
pub const MACHINE_NAME: &str = "corestate-bench";
/// Version of the machine the harness installs.
pub const MACHINE_VERSION: u32 = 1;
/// Two states and one event that flips between them: every APPLY_EVENT is
/// valid in any state, and the expected `to_state` proves per-instance
/// ordering (an instance is driven by one connection only).
pub const MACHINE_DEFINITION: &str = r#"{"states":["a","b"],"initial":"a","transitions":[{"from":"a","event":"go","to":"b"},{"from":"b","event":"go","to":"a"}]}"#;
/// The event every apply sends.
pub const EVENT_NAME: &str = "go";
/// State names by index (0 = initial).
pub const STATE_NAMES: [&str; 2] = ["a", "b"];
/// Largest `--payload-bytes` accepted (leaves room in a 16 MiB frame).
pub const PAYLOAD_BYTES_MAX: usize = 1024 * 1024;
/// Longest operation schedule built from `--mix` ratios.
pub const MIX_SCHEDULE_LEN_MAX: usize = 1000;
/// Most APPLY_EVENT ops in one BATCH (the RCP limit, docs/PROTOCOL.md §9).
pub const BATCH_OPS_MAX: usize = 100;
/// Number of operation kinds (length of per-kind arrays).
pub const OP_KINDS: usize = 4;

/// Operations the load phase issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OpKind {
    Create,
    Apply,
    Get,
    /// One BATCH (mode atomic) of `--batch-ops` APPLY_EVENTs.
    Batch,
}

impl OpKind {
    pub const ALL: [OpKind; OP_KINDS] = [OpKind::Create, OpKind::Apply, OpKind::Get, OpKind::Batch];
    /// Kinds `--mix` may name. A batch shares its instances with nothing:
    /// mixed with single applies, a connection's pipelined requests could
    /// reach an instance in another order than sent (the batch's shards are
    /// prepared one after another), and states could not be predicted.
    pub const MIXABLE: [OpKind; 3] = [OpKind::Create, OpKind::Apply, OpKind::Get];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Create => "create",
            OpKind::Apply => "apply",
            OpKind::Get => "get",
            OpKind::Batch => "batch",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Relative weights of the operations, e.g. `apply=70,get=30`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    /// Weight per [`OpKind::index`].
    pub weights: [u32; OP_KINDS],
}

impl Mix {
    pub fn only(kind: OpKind) -> Mix {
        let mut weights = [0; OP_KINDS];
        weights[kind.index()] = 1;
        Mix { weights }
    }

    pub fn parse(text: &str) -> Result<Mix, String> {
        let mut weights = [0u32; OP_KINDS];
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}': expected op=weight"))?;
            let kind = OpKind::MIXABLE
                .into_iter()
                .find(|k| k.name() == name.trim())
                .ok_or_else(|| format!("unknown op '{name}' (create, apply, get)"))?;
            weights[kind.index()] = weight
                .trim()
                .parse()
                .map_err(|_| format!("'{part}': weight must be a non-negative integer"))?;
        }
        if weights.iter().all(|&w| w == 0) {
            return Err("every weight is 0".into());
        }
        Ok(Mix { weights })
    }

    pub fn uses(&self, kind: OpKind) -> bool {
        self.weights[kind.index()] > 0
    }

    /// A fixed interleaving of the operations in proportion to the weights
    /// (smooth weighted round robin): deterministic, no random numbers.
    pub fn schedule(&self) -> Vec<OpKind> {
        let gcd = self
            .weights
            .iter()
            .filter(|&&w| w > 0)
            .fold(0u32, |a, &b| gcd(a, b));
        let mut weights = self.weights.map(|w| w / gcd.max(1));
        let mut total: u32 = weights.iter().sum();
        if total as usize > MIX_SCHEDULE_LEN_MAX {
            // Scale down; keep every used op at least once.
            let scale = total as f64 / MIX_SCHEDULE_LEN_MAX as f64;
            weights = weights.map(|w| {
                if w == 0 {
                    0
                } else {
                    ((w as f64 / scale) as u32).max(1)
                }
            });
            total = weights.iter().sum();
        }
        let mut current = [0i64; OP_KINDS];
        let mut schedule = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for i in 0..OP_KINDS {
                current[i] += weights[i] as i64;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total as i64;
            schedule.push(OpKind::ALL[best]);
        }
        schedule
    }

    pub fn describe(&self) -> String {
        OpKind::ALL
            .iter()
            .filter(|k| OpKind::MIXABLE.contains(k) || self.weights[k.index()] > 0)
            .map(|k| format!("{}={}", k.name(), self.weights[k.index()]))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Byte fragments shared by every connection of a run.
pub struct Templates {
    /// Pre-created instance ids (plain ASCII, no JSON escaping needed).
    pub instance_ids: Vec<Box<[u8]>>,
    /// `{"d":"x…"` (the payload object without its closing brace), or empty
    /// when applies carry no payload string.
    payload_head: Vec<u8>,
    /// Every APPLY_EVENT payload carries `"t":<unix ns when rendered>`, for
    /// watch event latency.
    pub stamped: bool,
    /// APPLY_EVENT ops in each BATCH.
    pub batch_ops: usize,
    /// The `initial_ctx` value for creates.
    pub initial_ctx: Vec<u8>,
    /// Prefix of ids of instances created in the load phase; the connection
    /// index, `-` and the request id follow.
    pub create_prefix: String,
    /// Prefix of every pre-created instance id (`bi-<run tag>-`).
    pub instance_prefix: String,
}

/// The shard corestate places an instance on (`shards::shard::
/// shard_for_instance`); other servers have one "shard".
pub fn shard_of(instance_id: &[u8], shards: usize) -> usize {
    (crc32c::crc32c(instance_id) as usize) % shards.max(1)
}

/// Ids for `connections` × `per_connection` instances, ordered so that the
/// ids connection `c` owns (positions `c`, `c + connections`, …) cycle
/// through the shards 0, 1, …, `shards - 1`, 0, …: any `shards` consecutive
/// instances of a connection are on different shards, and a batch of
/// consecutive instances is spread evenly over all of them.
pub fn spread_instance_ids(
    run_tag: &str,
    connections: usize,
    per_connection: usize,
    shards: usize,
) -> Vec<Box<[u8]>> {
    let shards = shards.max(1);
    let total = connections * per_connection;
    let mut buckets: Vec<Vec<Box<[u8]>>> = vec![Vec::new(); shards];
    let wanted = |shard: usize| {
        (0..total)
            .filter(|k| (k / connections.max(1)) % shards == shard)
            .count()
    };
    let wanted: Vec<usize> = (0..shards).map(wanted).collect();
    let mut filled = 0;
    let mut m = 0u64;
    while filled < shards {
        let id = format!("bi-{run_tag}-{m}").into_bytes().into_boxed_slice();
        m += 1;
        let shard = shard_of(&id, shards);
        if buckets[shard].len() < wanted[shard] {
            buckets[shard].push(id);
            if buckets[shard].len() == wanted[shard] {
                filled += 1;
            }
        }
    }
    for bucket in &mut buckets {
        bucket.reverse();
    }
    (0..total)
        .map(|k| {
            let shard = (k / connections.max(1)) % shards;
            buckets[shard]
                .pop()
                .expect("bucket sized for its positions")
        })
        .collect()
}

impl Templates {
    /// `run_tag` makes ids unique per run, so repeated runs against one
    /// server never collide. The payload is an object with one string of
    /// `payload_bytes` characters (none when 0).
    pub fn new(run_tag: &str, instances: usize, payload_bytes: usize) -> Templates {
        let instance_ids = (0..instances)
            .map(|k| format!("bi-{run_tag}-{k}").into_bytes().into_boxed_slice())
            .collect();
        let object = if payload_bytes == 0 {
            None
        } else {
            Some(format!(r#"{{"d":"{}"}}"#, "x".repeat(payload_bytes)))
        };
        Templates {
            instance_ids,
            payload_head: object
                .as_ref()
                .map(|o| o.as_bytes()[..o.len() - 1].to_vec())
                .unwrap_or_default(),
            stamped: false,
            batch_ops: 0,
            initial_ctx: object.unwrap_or_else(|| "{}".into()).into_bytes(),
            create_prefix: format!("bc-{run_tag}-"),
            instance_prefix: format!("bi-{run_tag}-"),
        }
    }

    /// Replaces the instance ids (e.g. with [`spread_instance_ids`]).
    pub fn with_instance_ids(mut self, ids: Vec<Box<[u8]>>) -> Templates {
        self.instance_ids = ids;
        self
    }

    /// Time-stamps every apply payload.
    pub fn stamped(mut self) -> Templates {
        self.stamped = true;
        self
    }

    /// Sets the APPLY_EVENT ops per BATCH.
    pub fn with_batch_ops(mut self, ops: usize) -> Templates {
        debug_assert!(ops <= BATCH_OPS_MAX);
        self.batch_ops = ops;
        self
    }

    /// Appends `,"payload":{…}` (nothing when there is neither a payload
    /// string nor a stamp).
    fn push_apply_payload(&self, buf: &mut Vec<u8>, stamp_ns: Option<u64>) {
        match (self.payload_head.is_empty(), stamp_ns) {
            (true, None) => {}
            (false, None) => {
                buf.extend_from_slice(br#","payload":"#);
                buf.extend_from_slice(&self.payload_head);
                buf.push(b'}');
            }
            (empty, Some(t)) => {
                buf.extend_from_slice(br#","payload":"#);
                if empty {
                    buf.push(b'{');
                } else {
                    buf.extend_from_slice(&self.payload_head);
                    buf.push(b',');
                }
                buf.extend_from_slice(br#""t":"#);
                frame::push_decimal(buf, t);
                buf.push(b'}');
            }
        }
    }

    /// Appends `{"instance_id":"…","event":"go","payload":…}` for instance `k`.
    fn push_apply_params(&self, buf: &mut Vec<u8>, k: usize, stamp_ns: Option<u64>) {
        buf.extend_from_slice(br#"{"instance_id":""#);
        buf.extend_from_slice(&self.instance_ids[k]);
        buf.extend_from_slice(br#"","event":""#);
        buf.extend_from_slice(EVENT_NAME.as_bytes());
        buf.push(b'"');
        self.push_apply_payload(buf, stamp_ns);
        buf.push(b'}');
    }
}

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
                let slot = self.apply_cursor;
                self.apply_cursor = (slot + 1) % self.instances.len();
                let k = self.instances[slot] as usize;
                at = begin_request(buf, id, b"APPLY_EVENT");
                buf.extend_from_slice(br#","params":"#);
                let stamp = self.templates.stamped.then(unix_nanos);
                self.stamp_ns = stamp.unwrap_or(0);
                self.templates.push_apply_params(buf, k, stamp);
                buf.push(b'}');
                self.states[slot] ^= 1;
                Expect::Applied(self.exclusive.then_some(self.states[slot]))
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
                    let slot = self.apply_cursor;
                    self.apply_cursor = (slot + 1) % self.instances.len();
                    let k = self.instances[slot] as usize;
                    buf.extend_from_slice(br#"{"op":"APPLY_EVENT","params":"#);
                    self.templates.push_apply_params(buf, k, None);
                    buf.push(b'}');
                    self.states[slot] ^= 1;
                    to_states |= u128::from(self.states[slot]) << i;
                }
                buf.extend_from_slice(b"]}}");
                Expect::Batched {
                    ops: ops as u8,
                    to_states: self.exclusive.then_some(to_states),
                }
            }
            OpKind::Get => {
                let slot = self.get_cursor;
                self.get_cursor = (slot + 1) % self.instances.len();
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
    use serde_json::Value;

    fn payload_json(buf: &[u8]) -> Value {
        let d = frame::decode(buf).unwrap().unwrap();
        assert_eq!(d.payload_end, buf.len());
        serde_json::from_slice(&buf[d.payload_start..d.payload_end]).unwrap()
    }

    #[test]
    fn mix_schedule_follows_the_weights() {
        let mix = Mix::parse("apply=70,get=30,create=0").unwrap();
        let s = mix.schedule();
        assert_eq!(s.len(), 10);
        assert_eq!(s.iter().filter(|&&k| k == OpKind::Apply).count(), 7);
        assert_eq!(s.iter().filter(|&&k| k == OpKind::Get).count(), 3);
        assert!(Mix::parse("apply=0").is_err());
        assert!(Mix::parse("put=1").is_err());
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
    fn spread_ids_cycle_through_the_shards_per_connection() {
        let (connections, per_connection, shards) = (3, 8, 4);
        let ids = spread_instance_ids("t", connections, per_connection, shards);
        assert_eq!(ids.len(), connections * per_connection);
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "ids are distinct");
        for c in 0..connections {
            let owned: Vec<usize> = (c..ids.len())
                .step_by(connections)
                .map(|k| shard_of(&ids[k], shards))
                .collect();
            assert_eq!(owned, vec![0, 1, 2, 3, 0, 1, 2, 3], "connection {c}");
        }
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
    fn batches_cannot_be_mixed() {
        assert!(Mix::parse("apply=1,batch=1").is_err());
        assert_eq!(
            Mix::only(OpKind::Batch).describe(),
            "create=0,apply=0,get=0,batch=1"
        );
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
