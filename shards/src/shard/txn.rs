//! Atomic batches on one shard, and this shard's side of a cross-shard
//! atomic batch (two-phase commit; the coordinator lives in the server).
//!
//! `run_atomic` executes a shard's ops in order against the live state,
//! remembering each touched instance as it was; on the first failure every
//! change is undone. The ops' records go into a buffer (`inner`) instead of
//! the log, so the caller can write them as ONE record — a `Batch` (single
//! shard: committed as a unit) or a `Prepare` (cross-shard: undecided until
//! a `Commit` or `Abort`). One record with one checksum is all-or-nothing
//! across a crash by construction.
//!
//! A prepared part keeps its instances *locked*: the shard loop parks any
//! other message that touches them until the decision arrives, so nobody
//! sees staged state and nobody fails because of it.

use std::sync::Arc;

use hashbrown::HashMap;

use super::command::Command;
use super::events::WatchEvent;
use super::state::{LogSink, ShardState};
use crate::error::{EngineError, EngineResult};
use crate::instance::Instance;
use crate::wal::record::{append_record, RecordKind, RecordStamp};

/// A LogSink that collects records into a buffer, taking their stamps
/// (offset, entry count) from the shard's log: the inner records of a Batch
/// or Prepare record.
pub struct BufferSink<'a> {
    pub out: &'a mut Vec<u8>,
    pub reserve: &'a mut dyn FnMut(RecordKind, u64) -> RecordStamp,
}

impl LogSink for BufferSink<'_> {
    fn append(
        &mut self,
        kind: RecordKind,
        time_ms: u64,
        write: &mut dyn FnMut(&mut Vec<u8>),
    ) -> EngineResult<u64> {
        let stamp = (self.reserve)(kind, time_ms);
        append_record(self.out, &stamp, 0, |o| write(o))
            .map_err(|n| EngineError::record_too_large(kind, n))?;
        Ok(stamp.offset)
    }
}

/// How to put the state back as it was before `run_atomic`. It records
/// only what the ops touched, so it stays correct when other work ran on the
/// shard in between (a prepared part aborted later).
#[derive(Debug)]
pub struct Undo {
    saved: Vec<(String, Option<Instance>)>,
    /// Where the ops' events start in `ShardState::events`; `None` once they
    /// were moved out (held by a prepared part).
    events_from: Option<usize>,
}

/// A shard's part of a cross-shard batch that voted yes and awaits the decision.
#[derive(Debug)]
pub struct Prepared {
    pub undo: Undo,
    pub events: Vec<Arc<WatchEvent>>,
    pub locked: Vec<String>,
}

impl Undo {
    /// How the batch found instance `id`: `Some(None)` if it created it.
    pub fn original(&self, id: &str) -> Option<Option<&Instance>> {
        self.saved
            .iter()
            .find(|(saved, _)| saved == id)
            .map(|(_, original)| original.as_ref())
    }
}

impl Prepared {
    /// Lowest offset among the held events: the shard's watermark may not
    /// pass it until they are published.
    pub fn min_event_offset(&self) -> Option<u64> {
        self.events.iter().map(|e| e.offset).min()
    }
}

/// The failing op (index within this shard's ops) and its error.
pub type AtomicFailure = (usize, EngineError);

impl ShardState {
    /// Execute `ops` all-or-nothing. On success returns every op's result and
    /// the undo information; on failure the state is already restored.
    pub fn run_atomic(
        &mut self,
        ops: Vec<Command>,
        now_ms: u64,
        sink: &mut BufferSink<'_>,
    ) -> Result<(Vec<Vec<u8>>, Undo), AtomicFailure> {
        let mut undo = Undo {
            saved: Vec::new(),
            events_from: Some(self.events.len()),
        };
        let mut seen: HashMap<String, ()> = HashMap::new();
        let mut results = Vec::with_capacity(ops.len());
        for (i, cmd) in ops.into_iter().enumerate() {
            let id = cmd.instance_id();
            if !seen.contains_key(id) {
                seen.insert(id.to_owned(), ());
                undo.saved
                    .push((id.to_owned(), self.instances.get(id).cloned()));
            }
            let result = match cmd {
                Command::Create(c) => self.create_instance(c, now_ms, sink),
                Command::Apply(c) => self.apply_event(c, now_ms, sink),
                Command::Delete(c) => self.delete_instance(c, now_ms, sink),
                Command::Get { instance_id } => self.get_instance(&instance_id),
            };
            match result {
                Ok(r) => results.push(r),
                Err(e) => {
                    self.undo(undo);
                    return Err((i, e));
                }
            }
        }
        Ok((results, undo))
    }

    /// Put every touched instance back and forget the events of the ops.
    pub fn undo(&mut self, undo: Undo) {
        let is_active = |i: Option<&Instance>| i.is_some_and(Instance::is_active) as u64;
        for (id, original) in undo.saved.into_iter().rev() {
            let now_active = is_active(self.instances.get(&id));
            let was_active = is_active(original.as_ref());
            self.active_instances = self.active_instances + was_active - now_active;
            match original {
                Some(inst) => {
                    self.instances.insert(id, inst);
                }
                None => {
                    self.instances.remove(&id);
                }
            }
        }
        if let Some(from) = undo.events_from {
            self.events.truncate(from);
        }
    }

    /// Take the events staged since `undo` was made (they are held by a
    /// prepared part until its decision).
    pub fn take_events_since(&mut self, undo: &mut Undo) -> Vec<Arc<WatchEvent>> {
        match undo.events_from.take() {
            Some(from) => self.events.split_off(from.min(self.events.len())),
            None => Vec::new(),
        }
    }

    /// The ids an undo would restore, i.e. every instance the ops touched.
    pub fn touched(undo: &Undo) -> Vec<String> {
        undo.saved.iter().map(|(id, _)| id.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::definition::parse_definition;
    use crate::shard::command::{ApplyEvent, CreateInstance};
    use serde_json::json;

    fn counter_shard() -> ShardState {
        let def = json!({"states":["s"],"initial":"s","transitions":[
            {"from":"s","event":"ADD","to":"s","guard":"ctx.n < 10"}]});
        let mut st = ShardState::new(0, true);
        let mut log = crate::shard::state::test_sink::MemorySink::default();
        st.install_machine(
            Arc::new(parse_definition("c", 1, &def).unwrap()),
            &def,
            1,
            &mut log,
        )
        .unwrap();
        st
    }

    fn add(id: &str, n: i64) -> Command {
        Command::Apply(ApplyEvent {
            instance_id: id.into(),
            event: "ADD".into(),
            payload: json!({ "n": n }),
            expected_state: None,
            expected_wal_offset: None,
            event_id: None,
            idempotency_key: None,
        })
    }

    fn create(id: &str, n: i64) -> Command {
        Command::Create(CreateInstance {
            instance_id: id.into(),
            machine: "c".into(),
            version: 1,
            initial_ctx: json!({ "n": n }),
            idempotency_key: None,
        })
    }

    #[test]
    fn a_failing_op_leaves_no_trace() {
        let mut st = counter_shard();
        let mut next = 0u64;
        let mut offsets = |kind, time_ms| {
            next += 64;
            RecordStamp::new(kind, next, time_ms)
        };
        let mut inner = Vec::new();
        let mut sink = BufferSink {
            out: &mut inner,
            reserve: &mut offsets,
        };
        st.run_atomic(vec![create("a", 1)], 1, &mut sink).unwrap();
        let before_a = st.get_instance("a").unwrap();
        let before_events = st.events.len();
        // create b, bump a to 20, then a guard failure (n < 10 is false now).
        let err = st
            .run_atomic(
                vec![create("b", 0), add("a", 20), add("a", 1)],
                1,
                &mut sink,
            )
            .unwrap_err();
        assert_eq!(err.0, 2);
        assert_eq!(st.get_instance("a").unwrap(), before_a);
        assert!(st.get_instance("b").is_err());
        assert_eq!(st.active_instances, 1);
        assert_eq!(st.events.len(), before_events);
    }

    #[test]
    fn reads_inside_a_batch_see_earlier_ops() {
        let mut st = counter_shard();
        let mut next = 0u64;
        let mut offsets = |kind, time_ms| {
            next += 64;
            RecordStamp::new(kind, next, time_ms)
        };
        let mut inner = Vec::new();
        let mut sink = BufferSink {
            out: &mut inner,
            reserve: &mut offsets,
        };
        let (results, _) = st
            .run_atomic(
                vec![
                    create("a", 1),
                    add("a", 5),
                    Command::Get {
                        instance_id: "a".into(),
                    },
                ],
                1,
                &mut sink,
            )
            .unwrap();
        let got: serde_json::Value = serde_json::from_slice(&results[2]).unwrap();
        assert_eq!(got["ctx"]["n"], 5);
        // Two records (create, apply) were buffered, none went to the log.
        let mut n = 0;
        let mut pos = 0;
        while let Ok((h, _)) = crate::wal::record::decode_record(&inner[pos..]) {
            n += 1;
            pos += h.total_len();
        }
        assert_eq!(n, 2);
    }
}
