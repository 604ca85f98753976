//! Criterion micro-benchmarks of the per-request hot path, one group per
//! stage: frame codec, request parsing, guard evaluation, WAL record
//! encode/decode. Inputs are fixed, realistic APPLY_EVENT traffic; every
//! input is checked once before it is measured, so a bench never times an
//! error path by accident.
//!
//! Run: `cargo bench --bench micro -- --warm-up-time 1 --measurement-time 2`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_json::{json, Value};

use corestate::protocol::frame::{begin_frame, encode_frame, end_frame, FrameDecoder, OutputMode};
use corestate::protocol::op::Op;
use corestate::protocol::request::parse_request;
use shards::json::canonical;
use shards::machine::guard;
use shards::shard::replay::{Publish, ReplayCounts, TxnLog};
use shards::shard::ShardState;
use shards::wal::entry::{
    write_apply_event, write_create_instance, write_put_machine, ApplyFields, CreateFields, Entry,
};
use shards::wal::record::{append_record, decode_record, RecordHeader, RecordKind, RecordStamp};

/// Frames a client typically keeps in flight on one connection.
const PIPELINE_DEPTH_FRAMES: usize = 64;

/// A typical APPLY_EVENT request envelope (238 bytes; 256 as an RCPX frame).
const APPLY_EVENT_REQUEST: &[u8] = br#"{"type":"request","id":"req-000123","op":"APPLY_EVENT","params":{"instance_id":"order-000042","event":"approve","payload":{"amount":250,"approver":"alice","note":"within limit"},"expected_state":"pending","idempotency_key":"idem-7f3a9c"}}"#;

/// The `result` of a typical APPLY_EVENT response; with its envelope the
/// payload is 165 bytes (183 as an RCPX frame).
const APPLY_EVENT_RESULT: &[u8] =
    br#"{"from_state":"pending","to_state":"approved","ctx":{"amount":250,"status":"open"},"wal_offset":1048576}"#;
const RESPONSE_ID_JSON: &[u8] = br#""req-000123""#;

/// An instance context (115 bytes canonical) that the guards below read.
fn instance_ctx() -> Value {
    json!({
        "amount": 250,
        "status": "open",
        "blocked": false,
        "customer": {"id": "c-1042", "tier": "gold"},
        "a": {"b": {"c": 3}},
        "items": 3
    })
}

fn rcpx_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(&mut out, OutputMode::Rcpx, payload).expect("bench payload fits a frame");
    out
}

fn frame_codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame");

    let one = rcpx_frame(APPLY_EVENT_REQUEST);
    let mut decoder = FrameDecoder::new();
    let decoded = decoder
        .decode(&one)
        .expect("valid frame")
        .expect("complete");
    assert_eq!(&one[decoded.payload], APPLY_EVENT_REQUEST);
    group.throughput(Throughput::Bytes(one.len() as u64));
    group.bench_function("decode_apply_event", |b| {
        b.iter(|| decoder.decode(black_box(&one)))
    });

    let pipelined = one.repeat(PIPELINE_DEPTH_FRAMES);
    let decode_all = |decoder: &mut FrameDecoder, input: &[u8]| {
        let (mut at, mut frames) = (0, 0usize);
        while let Ok(Some(d)) = decoder.decode(&input[at..]) {
            at += d.consumed;
            frames += 1;
        }
        frames
    };
    assert_eq!(decode_all(&mut decoder, &pipelined), PIPELINE_DEPTH_FRAMES);
    group.throughput(Throughput::Elements(PIPELINE_DEPTH_FRAMES as u64));
    group.bench_function("decode_64_pipelined", |b| {
        b.iter(|| decode_all(&mut decoder, black_box(&pipelined)))
    });

    let mut out = Vec::with_capacity(1024);
    let encode = |out: &mut Vec<u8>| {
        out.clear();
        let mark = begin_frame(out, OutputMode::Rcpx);
        out.extend_from_slice(br#"{"type":"response","id":"#);
        out.extend_from_slice(RESPONSE_ID_JSON);
        out.extend_from_slice(br#","status":"ok","result":"#);
        out.extend_from_slice(black_box(APPLY_EVENT_RESULT));
        out.push(b'}');
        end_frame(out, mark)
    };
    encode(&mut out).expect("response fits a frame");
    assert!(decoder.decode(&out).expect("valid frame").is_some());
    group.throughput(Throughput::Bytes(out.len() as u64));
    group.bench_function("encode_response", |b| b.iter(|| encode(&mut out)));

    group.finish();
}

fn request_parsing(c: &mut Criterion) {
    let mut group = c.benchmark_group("request");
    let request = parse_request(&mut APPLY_EVENT_REQUEST.to_vec())
        .ok()
        .expect("bench request is valid");
    assert_eq!(request.op, Op::ApplyEvent);
    group.throughput(Throughput::Bytes(APPLY_EVENT_REQUEST.len() as u64));
    group.bench_function("parse_apply_event", |b| {
        b.iter_batched(
            || APPLY_EVENT_REQUEST.to_vec(),
            |mut payload| parse_request(&mut payload).ok(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn guard_evaluation(c: &mut Criterion) {
    let mut group = c.benchmark_group("guard");
    let ctx = instance_ctx();
    let cases = [
        (
            "and_or_not",
            r#"ctx.amount > 100 && ctx.status == "open" || !ctx.blocked"#,
        ),
        // The first `&&` operand fails, so `||` evaluates its right side too.
        (
            "and_or_not_fallthrough",
            r#"ctx.amount > 1000 && ctx.status == "open" || !ctx.blocked"#,
        ),
        ("nested_field", "ctx.a.b.c == 3"),
    ];
    for (name, text) in cases {
        group.bench_function(format!("parse/{name}"), |b| {
            b.iter(|| guard::parse(black_box(text)))
        });
        let compiled = guard::parse(text).expect("bench guard is valid");
        assert!(compiled.eval(&ctx), "bench guard {name} passes on ctx");
        group.bench_function(format!("eval/{name}"), |b| {
            b.iter(|| compiled.eval(black_box(&ctx)))
        });
    }
    group.finish();
}

/// A shard state holding machine `order` v3 and its instance
/// `order-000042` in `pending`, built by replaying their entries.
fn state_holding_the_instance() -> ShardState {
    let definition = json!({
        "states": ["pending", "approved"],
        "initial": "pending",
        "transitions": [{"from": "pending", "event": "approve", "to": "approved"}]
    });
    let mut machine = Vec::new();
    write_put_machine(&mut machine, "order", 3, "bench", &definition);
    let mut create = Vec::new();
    write_create_instance(
        &mut create,
        &CreateFields {
            instance_id: "order-000042",
            machine: "order",
            version: 3,
            initial_state: "pending",
            initial_ctx_json: b"{}",
            idempotency_key: None,
        },
    );
    let mut state = ShardState::new(0, false);
    for (kind, offset, entry) in [
        (RecordKind::PutMachine, 1, machine),
        (RecordKind::CreateInstance, 2, create),
    ] {
        let mut record = Vec::new();
        let stamp = RecordStamp::new(kind, offset, 1_795_000_000_000);
        append_record(&mut record, &stamp, 0, |o| o.extend_from_slice(&entry))
            .expect("entry fits a record");
        let (header, payload) = decode_record(&record).expect("record decodes");
        replay_one(&mut state, &header, payload, Publish::No);
    }
    state
}

/// Replay one record into `state`, as recovery (`Publish::No`) or a group
/// member (`Publish::Events`) does.
fn replay_one(state: &mut ShardState, header: &RecordHeader, payload: &[u8], publish: Publish) {
    state
        .replay_any_as(
            header,
            payload,
            &mut ReplayCounts::default(),
            &mut TxnLog::default(),
            publish,
        )
        .expect("the record replays");
}

fn wal_record(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal");
    let ctx = instance_ctx();
    let ctx_json = canonical::to_vec(&ctx);
    let payload_json = br#"{"amount":250,"approver":"alice","note":"within limit"}"#;
    let fields = ApplyFields {
        instance_id: "order-000042",
        machine: "order",
        version: 3,
        event: "approve",
        from_state: "pending",
        to_state: "approved",
        payload_json,
        ctx_json: &ctx_json,
        event_id: Some("evt-000123"),
        idempotency_key: Some("idem-7f3a9c"),
    };
    let append = |out: &mut Vec<u8>| {
        out.clear();
        let stamp = RecordStamp::new(RecordKind::ApplyEvent, 1_048_576, 1_795_000_000_000);
        append_record(out, &stamp, 0, |o| write_apply_event(o, black_box(&fields)))
    };

    let mut record = Vec::with_capacity(1024);
    let record_bytes = append(&mut record).expect("entry fits a record");
    group.throughput(Throughput::Bytes(record_bytes as u64));
    group.bench_function("append_apply_event", |b| b.iter(|| append(&mut record)));

    let (header, payload) = decode_record(&record).expect("record decodes");
    assert_eq!(header.kind, RecordKind::ApplyEvent);
    assert!(matches!(Entry::decode(payload), Ok(Entry::ApplyEvent(_))));
    group.bench_function("decode_apply_event", |b| {
        b.iter(|| {
            let (_, payload) = decode_record(black_box(&record)).ok()?;
            Entry::decode(payload).ok()
        })
    });

    // What a cluster follower does with each committed apply: decode it,
    // update the instance, queue its watch event.
    let mut state = state_holding_the_instance();
    let replay = |state: &mut ShardState| {
        replay_one(state, &header, payload, Publish::Events);
        state.events.clear();
    };
    replay(&mut state);
    let inst = state.instances.get("order-000042").expect("instance kept");
    assert_eq!(&*inst.state, "approved");
    assert_eq!(inst.ctx, ctx);
    group.bench_function("replay_apply_event", |b| b.iter(|| replay(&mut state)));

    let mut out = Vec::with_capacity(256);
    group.throughput(Throughput::Bytes(ctx_json.len() as u64));
    group.bench_function("canonical_write_ctx", |b| {
        b.iter(|| {
            out.clear();
            canonical::write_value(&mut out, black_box(&ctx));
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    frame_codec,
    request_parsing,
    guard_evaluation,
    wal_record
);
criterion_main!(benches);
