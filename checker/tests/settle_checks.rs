//! Settling unknown writes by the committed log (idempotency keys): a
//! logged key makes the write answered with the log's result, by the first
//! op that saw its offset; an unlogged one and unknown reads leave the
//! history; a log that disagrees with the answers is reported.

mod common;

use common::*;
use corestate_checker::{Call, Change, Committed, History, Op, Outcome, Settled};

/// `op` sent with idempotency key `key`.
fn keyed(op: Op, key: &str) -> Op {
    Op {
        key: Some(key.to_string()),
        ..op
    }
}

fn logged(offset: u64, change: Change, key: &str) -> Committed {
    Committed {
        offset,
        instance: "i".into(),
        change,
        key: Some(key.to_string()),
    }
}

fn went(offset: u64, key: &str) -> Committed {
    let change = Change::Apply {
        event: "GO".into(),
        from_state: "idle".into(),
        to_state: "busy".into(),
    };
    logged(offset, change, key)
}

#[test]
fn unknown_writes_become_what_the_log_says_or_leave() {
    let create = Change::Create {
        state: "idle".into(),
    };
    let log = [logged(10, create, "k-create"), went(20, "k-go")];
    let mut history = History {
        ops: vec![
            keyed(op(0, 0, 5, Call::Create, created(10)), "k-create"),
            keyed(op(1, 6, 7, apply("GO"), Outcome::Unknown), "k-go"),
            keyed(op(2, 8, 9, apply("GO"), Outcome::Unknown), "k-lost"),
            op(3, 9, 10, Call::Get, Outcome::Unknown),
            op(3, 50, 60, Call::Get, got("busy", 20)),
            op(4, 40, 70, Call::Get, got("busy", 25)),
        ],
    };
    let settled = history.settle_unknowns_by_log(&log).expect("consistent");
    assert_eq!(
        settled,
        Settled {
            took_effect: 1,
            never_did: 1,
            reads_dropped: 1,
            unkeyed: 0,
        }
    );
    assert_eq!(history.ops.len(), 4);
    let settled_go = &history.ops[1];
    assert_eq!(settled_go.outcome, applied("idle", "busy", 20));
    // The first GET that saw offset 20 completed at 60.
    assert_eq!(settled_go.complete_ns, 60);
}

#[test]
fn the_log_must_agree_with_the_answers() {
    let mut history = History {
        ops: vec![
            keyed(op(0, 0, 5, apply("GO"), applied("idle", "busy", 21)), "k-1"),
            keyed(op(1, 6, 7, apply("GO"), invalid("busy")), "k-2"),
            keyed(op(2, 8, 9, Call::Create, Outcome::Unknown), "k-3"),
        ],
    };
    let log = [went(20, "k-1"), went(30, "k-2"), went(40, "k-3")];
    let err = history.settle_unknowns_by_log(&log).unwrap_err();
    assert!(err.starts_with("3 problem(s)"), "{err}");
    assert!(err.contains("logged as"), "{err}");
    assert!(err.contains("answered a failure"), "{err}");
    assert!(err.contains("its key is logged for"), "{err}");
}
