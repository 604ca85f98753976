//! The byte fragments every connection of a run shares: instance ids
//! (spread over the server's shards for batches), the payload, the
//! `initial_ctx` of creates, and the rendering of an APPLY_EVENT's params.

use super::{BATCH_OPS_MAX, EVENT_NAME};
use crate::frame;

/// Largest `--payload-bytes` accepted (leaves room in a 16 MiB frame).
pub const PAYLOAD_BYTES_MAX: usize = 1024 * 1024;

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

/// Prefix of every pre-created instance id of the run tagged `run_tag`.
fn instance_prefix(run_tag: &str) -> String {
    format!("bi-{run_tag}-")
}

/// Pre-created instance id number `k`: the instance prefix, then `k`.
fn instance_id(run_tag: &str, k: u64) -> Box<[u8]> {
    format!("{}{k}", instance_prefix(run_tag))
        .into_bytes()
        .into_boxed_slice()
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
        let id = instance_id(run_tag, m);
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
            .map(|k| instance_id(run_tag, k as u64))
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
            instance_prefix: instance_prefix(run_tag),
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
    pub(super) fn push_apply_params(&self, buf: &mut Vec<u8>, k: usize, stamp_ns: Option<u64>) {
        buf.extend_from_slice(br#"{"instance_id":""#);
        buf.extend_from_slice(&self.instance_ids[k]);
        buf.extend_from_slice(br#"","event":""#);
        buf.extend_from_slice(EVENT_NAME.as_bytes());
        buf.push(b'"');
        self.push_apply_payload(buf, stamp_ns);
        buf.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
