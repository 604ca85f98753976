//! The committed-log and watch-stream checks on hand-written logs: a
//! faithful log passes; a lost acknowledged write, a phantom write, a
//! final read behind the log, a stream with a gap, a duplicate or a
//! reordering each fail.

mod common;

use std::collections::BTreeMap;

use common::*;
use corestate_checker::{
    check_committed_log, check_watch_stream, Call, Change, Committed, FinalRead, Outcome,
    StreamEvent,
};

fn create_entry(offset: u64) -> Committed {
    Committed {
        offset,
        instance: "i".into(),
        change: Change::Create {
            state: "idle".into(),
        },
        key: None,
    }
}

fn apply_entry(offset: u64, event: &str, from: &str, to: &str) -> Committed {
    Committed {
        offset,
        instance: "i".into(),
        change: Change::Apply {
            event: event.into(),
            from_state: from.into(),
            to_state: to.into(),
        },
        key: None,
    }
}

fn stream_event(offset: u64, event: &str, from: &str, to: &str) -> StreamEvent {
    StreamEvent {
        offset,
        instance: "i".into(),
        event: event.into(),
        from_state: from.into(),
        to_state: to.into(),
    }
}

fn final_read(state: &str, offset: u64) -> BTreeMap<String, FinalRead> {
    BTreeMap::from([(
        "i".to_string(),
        FinalRead {
            state: state.into(),
            last_wal_offset: offset,
        },
    )])
}

/// Create, GO acknowledged, DONE unknown (its answer lost).
fn acked_history() -> corestate_checker::History {
    history(vec![
        op(0, 0, 10, Call::Create, created(100)),
        op(0, 20, 30, apply("GO"), applied("idle", "busy", 200)),
        op(1, 40, 50, apply("DONE"), Outcome::Unknown),
    ])
}

#[test]
fn a_log_holding_every_acknowledged_write_passes() {
    let log = vec![
        create_entry(100),
        apply_entry(200, "GO", "idle", "busy"),
        // The unknown DONE took effect.
        apply_entry(300, "DONE", "busy", "idle"),
    ];
    let stats = check_committed_log(&job(), &acked_history(), &log, &final_read("idle", 300))
        .expect("consistent");
    assert_eq!(stats.acknowledged_writes, 2);
    assert_eq!(stats.unacknowledged_committed, 1);
    // ... and so does one where the unknown DONE never happened.
    check_committed_log(
        &job(),
        &acked_history(),
        &log[..2],
        &final_read("busy", 200),
    )
    .expect("consistent");
}

#[test]
fn a_lost_acknowledged_write_fails() {
    let log = vec![create_entry(100)];
    let err =
        check_committed_log(&job(), &acked_history(), &log, &final_read("idle", 100)).unwrap_err();
    assert!(err.contains("LOST"), "{err}");
}

#[test]
fn a_phantom_write_fails() {
    let log = vec![
        create_entry(100),
        apply_entry(200, "GO", "idle", "busy"),
        apply_entry(300, "FAIL", "busy", "failed"),
    ];
    let err = check_committed_log(&job(), &acked_history(), &log, &final_read("failed", 300))
        .unwrap_err();
    assert!(err.contains("PHANTOM"), "{err}");
}

#[test]
fn a_log_that_is_no_execution_of_the_machine_fails() {
    let log = vec![
        create_entry(100),
        apply_entry(200, "GO", "idle", "busy"),
        apply_entry(300, "RETRY", "busy", "idle"),
    ];
    let err =
        check_committed_log(&job(), &acked_history(), &log, &final_read("idle", 300)).unwrap_err();
    assert!(err.contains("log applies RETRY"), "{err}");
}

#[test]
fn a_final_read_behind_the_log_fails() {
    let log = vec![create_entry(100), apply_entry(200, "GO", "idle", "busy")];
    let err =
        check_committed_log(&job(), &acked_history(), &log, &final_read("idle", 100)).unwrap_err();
    assert!(err.contains("final GET"), "{err}");
}

fn log_of_three() -> Vec<Committed> {
    vec![
        create_entry(100),
        apply_entry(200, "GO", "idle", "busy"),
        apply_entry(300, "DONE", "busy", "idle"),
        apply_entry(400, "GO", "idle", "busy"),
    ]
}

#[test]
fn a_stream_equal_to_the_log_passes() {
    let stream = vec![
        stream_event(200, "GO", "idle", "busy"),
        stream_event(300, "DONE", "busy", "idle"),
        stream_event(400, "GO", "idle", "busy"),
    ];
    assert_eq!(check_watch_stream(&stream, &log_of_three(), 0), Ok(3));
    assert_eq!(
        check_watch_stream(&stream[1..], &log_of_three(), 250),
        Ok(2)
    );
}

#[test]
fn a_stream_with_a_gap_fails() {
    let stream = vec![
        stream_event(200, "GO", "idle", "busy"),
        stream_event(400, "GO", "idle", "busy"),
    ];
    let err = check_watch_stream(&stream, &log_of_three(), 0).unwrap_err();
    assert!(err.contains("GAP"), "{err}");
}

#[test]
fn a_stream_with_a_duplicate_fails() {
    let stream = vec![
        stream_event(200, "GO", "idle", "busy"),
        stream_event(300, "DONE", "busy", "idle"),
        stream_event(300, "DONE", "busy", "idle"),
        stream_event(400, "GO", "idle", "busy"),
    ];
    let err = check_watch_stream(&stream, &log_of_three(), 0).unwrap_err();
    assert!(err.contains("DUPLICATE"), "{err}");
}

#[test]
fn a_reordered_or_invented_stream_fails() {
    let reordered = vec![
        stream_event(300, "DONE", "busy", "idle"),
        stream_event(200, "GO", "idle", "busy"),
        stream_event(400, "GO", "idle", "busy"),
    ];
    let err = check_watch_stream(&reordered, &log_of_three(), 0).unwrap_err();
    assert!(err.contains("out of order"), "{err}");
    let invented = vec![
        stream_event(200, "GO", "idle", "busy"),
        stream_event(300, "DONE", "busy", "idle"),
        stream_event(350, "GO", "idle", "busy"),
        stream_event(400, "GO", "idle", "busy"),
    ];
    let err = check_watch_stream(&invented, &log_of_three(), 0).unwrap_err();
    assert!(err.contains("not in the log"), "{err}");
}
