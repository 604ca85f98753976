//! WAL records as a shard group leader's turn stages them (real record
//! framing and entry payloads), for the shard group tests.

#![allow(dead_code)]

use corestate_raft::shard_group::TurnRecords;
use serde_json::{json, Value};
use shards::wal::entry::{
    write_apply_event, write_create_instance, write_put_machine, ApplyFields, CreateFields,
};
use shards::wal::record::{append_record, RecordKind, RecordStamp};

/// The shard the records belong to (in their offsets).
pub const SHARD: usize = 1;

pub fn order_machine() -> Value {
    json!({
        "states": ["created", "paid"],
        "initial": "created",
        "transitions": [{"from": "created", "event": "PAY", "to": "paid"}]
    })
}

/// Records as a leader's turn stages them, with offsets of shard `SHARD`.
pub struct Turn {
    bytes: Vec<u8>,
    next_tick: u64,
}

impl Turn {
    pub fn new(first_tick: u64) -> Turn {
        Turn {
            bytes: Vec::new(),
            next_tick: first_tick,
        }
    }

    pub fn record(&mut self, kind: RecordKind, write: impl FnOnce(&mut Vec<u8>)) -> &mut Turn {
        let offset = (self.next_tick << 6) | SHARD as u64;
        self.next_tick += 1;
        append_record(
            &mut self.bytes,
            &RecordStamp::new(kind, offset, 1_700_000_000_000),
            0,
            write,
        )
        .expect("record fits");
        self
    }

    pub fn put_machine(&mut self) -> &mut Turn {
        self.record(RecordKind::PutMachine, |out| {
            write_put_machine(out, "order", 1, "00000000", &order_machine())
        })
    }

    pub fn create(&mut self, id: &str) -> &mut Turn {
        let ctx = br#"{"amount":10}"#;
        self.record(RecordKind::CreateInstance, |out| {
            write_create_instance(
                out,
                &CreateFields {
                    instance_id: id,
                    machine: "order",
                    version: 1,
                    initial_state: "created",
                    initial_ctx_json: ctx,
                    idempotency_key: None,
                },
            )
        })
    }

    pub fn pay(&mut self, id: &str) -> &mut Turn {
        self.record(RecordKind::ApplyEvent, |out| {
            write_apply_event(out, &pay_fields(id))
        })
    }

    pub fn take(&mut self) -> TurnRecords {
        TurnRecords(std::mem::take(&mut self.bytes))
    }
}

pub fn pay_fields(id: &str) -> ApplyFields<'_> {
    ApplyFields {
        instance_id: id,
        machine: "order",
        version: 1,
        event: "PAY",
        from_state: "created",
        to_state: "paid",
        payload_json: b"{}",
        ctx_json: br#"{"amount":10}"#,
        event_id: None,
        idempotency_key: None,
    }
}
