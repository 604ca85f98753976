//! The checker on histories written by hand and generated at random:
//! linearizable ones are accepted, and each kind of anomaly a database can
//! show — a stale read, a lost acknowledged write, two winners of one
//! transition, an offset going backwards — is rejected.

mod common;

use std::time::{Duration, Instant};

use common::*;
use corestate_checker::{check_history, Call, Failure, Outcome, Verdict};

fn assert_linearizable(ops: Vec<corestate_checker::Op>) {
    let report = check_history(&job(), &history(ops));
    assert!(report.is_linearizable(), "{}", report.failures());
}

fn assert_rejected(ops: Vec<corestate_checker::Op>) -> String {
    let report = check_history(&job(), &history(ops));
    assert!(
        report
            .instances
            .iter()
            .any(|r| matches!(r.verdict, Verdict::NotLinearizable { .. })),
        "must be rejected: {report:?}"
    );
    report.failures()
}

#[test]
fn a_sequential_history_is_linearizable() {
    assert_linearizable(vec![
        op(
            0,
            0,
            10,
            Call::Get,
            Outcome::Fail(Failure::InstanceNotFound),
        ),
        op(0, 20, 30, Call::Create, created(100)),
        op(1, 40, 50, apply("GO"), applied("idle", "busy", 200)),
        op(0, 60, 70, Call::Get, got("busy", 200)),
        op(1, 80, 90, apply("GO"), invalid("busy")),
        op(0, 100, 110, apply("DONE"), applied("busy", "idle", 300)),
        op(
            1,
            120,
            130,
            Call::Create,
            Outcome::Fail(Failure::InstanceExists),
        ),
        op(0, 140, 150, Call::Get, got("idle", 300)),
    ]);
}

#[test]
fn of_two_concurrent_applies_from_one_state_one_wins() {
    assert_linearizable(vec![
        op(0, 0, 10, Call::Create, created(100)),
        op(1, 20, 60, apply("GO"), invalid("busy")),
        op(2, 25, 50, apply("GO"), applied("idle", "busy", 200)),
        op(
            3,
            30,
            70,
            apply_expecting("FAIL", "idle"),
            Outcome::Fail(Failure::Conflict {
                actual: Some("busy".into()),
            }),
        ),
    ]);
}

#[test]
fn reads_concurrent_with_an_apply_may_see_before_or_after() {
    assert_linearizable(vec![
        op(0, 0, 10, Call::Create, created(100)),
        op(1, 20, 100, apply("GO"), applied("idle", "busy", 200)),
        // Overlapping reads: the later-finishing one sees the old value,
        // which is fine as long as neither read starts after the other ended.
        op(2, 30, 90, Call::Get, got("idle", 100)),
        op(3, 40, 60, Call::Get, got("busy", 200)),
    ]);
}

#[test]
fn an_unknown_write_may_take_effect_late_or_never() {
    // Took effect, long after the client gave up.
    assert_linearizable(vec![
        op(0, 0, 10, Call::Create, created(100)),
        op(1, 20, 30, apply("GO"), Outcome::Unknown),
        op(0, 40, 50, Call::Get, got("idle", 100)),
        op(0, 60, 70, Call::Get, got("busy", 170)),
        op(0, 80, 90, apply("DONE"), applied("busy", "idle", 300)),
    ]);
    // Never took effect.
    assert_linearizable(vec![
        op(0, 0, 10, Call::Create, created(100)),
        op(1, 20, 30, apply("GO"), Outcome::Unknown),
        op(0, 40, 50, Call::Get, got("idle", 100)),
        op(0, 900, 950, Call::Get, got("idle", 100)),
    ]);
    // An unknown create.
    assert_linearizable(vec![
        op(0, 0, 10, Call::Create, Outcome::Unknown),
        op(
            1,
            20,
            30,
            Call::Get,
            Outcome::Fail(Failure::InstanceNotFound),
        ),
        op(1, 40, 50, apply("GO"), applied("idle", "busy", 200)),
    ]);
}

#[test]
fn a_stale_read_after_an_acknowledged_apply_is_rejected() {
    let account = assert_rejected(vec![
        op(0, 0, 10, Call::Create, created(100)),
        op(1, 20, 30, apply("GO"), applied("idle", "busy", 200)),
        op(2, 40, 50, Call::Get, got("idle", 100)),
    ]);
    assert!(account.contains("GET -> ok idle @100"), "{account}");
}

#[test]
fn a_read_of_an_older_visit_to_the_same_state_is_rejected() {
    // idle -> busy -> idle, then a read that shows the first idle: the
    // state name is right, the offset gives it away.
    assert_rejected(vec![
        op(0, 0, 10, Call::Create, created(100)),
        op(0, 20, 30, apply("GO"), applied("idle", "busy", 200)),
        op(0, 40, 50, apply("DONE"), applied("busy", "idle", 300)),
        op(1, 60, 70, Call::Get, got("idle", 100)),
    ]);
}

#[test]
fn a_lost_acknowledged_write_is_rejected() {
    // GO was acknowledged; after it the server behaves as if it never was
    // (DONE is refused as invalid in idle, the final read shows idle).
    assert_rejected(vec![
        op(0, 0, 10, Call::Create, created(100)),
        op(0, 20, 30, apply("GO"), applied("idle", "busy", 200)),
        op(1, 1_000, 1_010, apply("DONE"), invalid("idle")),
    ]);
    assert_rejected(vec![
        op(0, 0, 10, Call::Create, created(100)),
        op(0, 20, 30, apply("GO"), applied("idle", "busy", 200)),
        op(9, 1_000, 1_010, Call::Get, got("idle", 100)),
    ]);
    // A lost create.
    assert_rejected(vec![
        op(0, 0, 10, Call::Create, created(100)),
        op(
            9,
            1_000,
            1_010,
            Call::Get,
            Outcome::Fail(Failure::InstanceNotFound),
        ),
    ]);
}

#[test]
fn two_applies_from_one_state_both_succeeding_are_rejected() {
    assert_rejected(vec![
        op(0, 0, 10, Call::Create, created(100)),
        op(1, 20, 60, apply("GO"), applied("idle", "busy", 200)),
        op(2, 25, 65, apply("GO"), applied("idle", "busy", 210)),
    ]);
    // Both leave busy, for different targets.
    assert_rejected(vec![
        op(0, 0, 10, Call::Create, created(100)),
        op(0, 15, 18, apply("GO"), applied("idle", "busy", 150)),
        op(1, 20, 60, apply("DONE"), applied("busy", "idle", 200)),
        op(2, 25, 65, apply("FAIL"), applied("busy", "failed", 210)),
    ]);
}

#[test]
fn an_offset_going_backwards_is_rejected() {
    assert_rejected(vec![
        op(0, 0, 10, Call::Create, created(100)),
        op(0, 20, 30, apply("GO"), applied("idle", "busy", 300)),
        op(0, 40, 50, apply("DONE"), applied("busy", "idle", 250)),
    ]);
    // Concurrent applies whose offsets contradict the only possible order.
    assert_rejected(vec![
        op(0, 0, 10, Call::Create, created(100)),
        op(1, 20, 60, apply("GO"), applied("idle", "busy", 300)),
        op(2, 25, 65, apply("DONE"), applied("busy", "idle", 250)),
    ]);
}

#[test]
fn an_error_naming_the_wrong_current_state_is_rejected() {
    assert_rejected(vec![
        op(0, 0, 10, Call::Create, created(100)),
        op(1, 20, 30, apply("DONE"), invalid("failed")),
    ]);
    assert_rejected(vec![
        op(0, 0, 10, Call::Create, created(100)),
        op(
            1,
            20,
            30,
            apply_expecting("GO", "busy"),
            Outcome::Fail(Failure::Conflict {
                actual: Some("failed".into()),
            }),
        ),
    ]);
}

#[test]
fn a_reply_that_does_not_belong_to_its_call_is_malformed() {
    let report = check_history(
        &job(),
        &history(vec![op(0, 0, 10, Call::Get, created(100))]),
    );
    assert!(
        matches!(report.instances[0].verdict, Verdict::Malformed { .. }),
        "{report:?}"
    );
}

/// Wall-clock bound on checking the large random history below (its
/// check takes milliseconds; the bound only catches an exponential blow-up).
const LARGE_HISTORY_CHECK_MAX: Duration = Duration::from_secs(20);

#[test]
fn random_linearizable_histories_are_accepted() {
    for seed in 1..=200u64 {
        let h = random_linearizable(seed, 4, 30, 2, 8);
        let report = check_history(&job(), &h);
        assert!(
            report.is_linearizable(),
            "seed {seed}: {}",
            report.failures()
        );
    }
}

#[test]
fn a_large_contended_history_is_checked_quickly() {
    let h = random_linearizable(42, 8, 1_500, 3, 50);
    let started = Instant::now();
    let report = check_history(&job(), &h);
    let elapsed = started.elapsed();
    assert!(report.is_linearizable(), "{}", report.failures());
    eprintln!(
        "{} ops on {} instances checked in {elapsed:?}, {} steps",
        h.ops.len(),
        report.instances.len(),
        report.steps()
    );
    assert!(elapsed < LARGE_HISTORY_CHECK_MAX, "took {elapsed:?}");
}

#[test]
fn a_large_history_with_one_offset_broken_is_rejected() {
    let mut h = random_linearizable(7, 8, 400, 3, 0);
    // The last acknowledged apply of some instance claims an offset below
    // its instance's create: no order can explain it.
    let victim = h
        .ops
        .iter()
        .rposition(|op| {
            matches!(
                op.outcome,
                Outcome::Ok(corestate_checker::Reply::Applied { .. })
            )
        })
        .expect("an acknowledged apply");
    if let Outcome::Ok(corestate_checker::Reply::Applied { wal_offset, .. }) =
        &mut h.ops[victim].outcome
    {
        *wal_offset = 1;
    }
    let report = check_history(&job(), &h);
    assert!(!report.is_linearizable(), "must be rejected");
    eprintln!("{}", report.failures());
}

#[test]
fn an_unknown_write_bounded_by_a_server_death_cannot_take_effect_after_it() {
    let ops = |effect_by_ns| {
        let mut lost = op(1, 20, 30, apply("GO"), Outcome::Unknown);
        lost.effect_by_ns = effect_by_ns;
        vec![
            op(0, 0, 10, Call::Create, created(100)),
            lost,
            // Read after the death: the GO is not there yet ...
            op(0, 40, 50, Call::Get, got("idle", 100)),
            // ... and later it is.
            op(0, 60, 70, Call::Get, got("busy", 170)),
        ]
    };
    assert_linearizable(ops(None));
    assert_rejected(ops(Some(35)));
}
