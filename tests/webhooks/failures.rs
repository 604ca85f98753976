//! Receivers that fail, stall or keep failing: retries with backoff keep
//! order and lose nothing; a stalled receiver slows neither writers nor
//! other webhooks; repeated failure pauses the webhook until resumed.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::hooks::{assert_well_formed, is_increasing, start};
use crate::receiver::{Mode, Receiver};

/// The server's `WEBHOOK_REQUEST_TIMEOUT_MS`.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(5_000);
/// The server's `WEBHOOK_FAILED_ATTEMPTS_BEFORE_PAUSE`.
const ATTEMPTS_BEFORE_PAUSE: usize = 6;

#[test]
fn a_receiver_that_fails_for_a_while_then_recovers_gets_everything_in_order() {
    let node = start();
    let ids = node.flips("b", 2);
    let receiver = Receiver::start(Mode::FailTimes {
        status: 500,
        times: 4,
    });
    let hook = node.webhook(&receiver.url, json!({}));
    let expected = node.flip_many(&ids, 12);
    receiver.wait_until(Duration::from_secs(20), "12 deliveries", |r| {
        r.accepted().len() >= 12
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(receiver.accepted_offsets(), expected);
    let attempts = receiver.attempts();
    assert_eq!(attempts.len(), 16, "4 failed attempts, then one each");
    // The failed attempts were of the first event, retried with backoff.
    for seen in &attempts[..5] {
        assert_eq!(seen.offset(), expected[0]);
        assert_well_formed(seen, &hook);
    }
    let gaps: Vec<Duration> = attempts[..5]
        .windows(2)
        .map(|w| w[1].at - w[0].at)
        .collect();
    assert!(gaps[3] > gaps[0], "backoff grows: {gaps:?}");
    let status = node.status(&hook);
    assert_eq!(status["status"], "active");
    assert_eq!(status["failed_attempts"], 4);
    assert_eq!(status["retries"], 4);
    assert_eq!(status["consecutive_failures"], 0);
    assert!(status["last_error"].as_str().unwrap().contains("500"));
    assert_eq!(
        node.metric(&format!(
            "corestate_webhook_retries_total{{webhook=\"{hook}\"}}"
        )),
        Some(4.0)
    );
}

#[test]
fn a_stalled_receiver_slows_neither_writers_nor_another_webhook_and_is_retried_after_the_timeout() {
    let node = start();
    let ids = node.flips("c", 2);
    let stalled = Receiver::start(Mode::Stall);
    let healthy = Receiver::start(Mode::Accept { delay_ms: 0 });
    let stalled_hook = node.webhook(&stalled.url, json!({}));
    node.webhook(&healthy.url, json!({}));
    let started = Instant::now();
    let mut expected = Vec::new();
    for i in 0..30 {
        let t = Instant::now();
        expected.push(node.apply(&ids[i % ids.len()], "FLIP"));
        // Well under the stall's request timeout, even on a loaded machine.
        assert!(
            t.elapsed() < REQUEST_TIMEOUT / 2,
            "a write waited {:?} behind a stalled webhook",
            t.elapsed()
        );
    }
    expected.sort_unstable();
    healthy.wait_until(Duration::from_secs(5), "the healthy webhook's 30", |r| {
        r.accepted().len() >= 30
    });
    assert!(
        started.elapsed() < REQUEST_TIMEOUT,
        "the healthy webhook was held up"
    );
    assert_eq!(healthy.accepted_offsets(), expected);
    // The stalled one: its first attempt hangs, and only after the timeout
    // (and a backoff) is it tried again — one request at a time.
    stalled.wait_until(Duration::from_secs(15), "a retry", |r| {
        r.attempts().len() >= 2
    });
    let attempts = stalled.attempts();
    assert_eq!(attempts[0].offset(), expected[0]);
    assert_eq!(attempts[1].offset(), expected[0]);
    let gap = attempts[1].at - attempts[0].at;
    assert!(
        gap >= REQUEST_TIMEOUT - Duration::from_millis(100),
        "{gap:?}"
    );
    let status = node.status(&stalled_hook);
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("no answer within"),
        "{status}"
    );
    // It recovers: everything, in order.
    stalled.set_mode(Mode::Accept { delay_ms: 0 });
    stalled.wait_until(Duration::from_secs(20), "the stalled webhook's 30", |r| {
        r.accepted().len() >= 30
    });
    assert_eq!(stalled.accepted_offsets(), expected);
}

#[test]
fn a_receiver_that_keeps_failing_pauses_the_webhook_until_it_is_resumed() {
    let node = start();
    let ids = node.flips("d", 1);
    let receiver = Receiver::start(Mode::Fail { status: 503 });
    let hook = node.webhook(&receiver.url, json!({}));
    let first = node.apply(&ids[0], "FLIP");
    let status = node.wait_status(&hook, Duration::from_secs(15), |s| s["status"] == "paused");
    assert_eq!(status["consecutive_failures"], ATTEMPTS_BEFORE_PAUSE as u64);
    assert_eq!(status["failed_attempts"], ATTEMPTS_BEFORE_PAUSE as u64);
    assert_eq!(status["cursor"], first, "paused on the undelivered event");
    assert!(
        status["last_error"].as_str().unwrap().contains("503"),
        "{status}"
    );
    assert_eq!(
        node.metric(&format!("corestate_webhook_paused{{webhook=\"{hook}\"}}")),
        Some(1.0)
    );
    assert!(
        node.server
            .stderr()
            .contains(&format!("webhook {hook} paused after 6 failed attempts")),
        "a warning says so"
    );
    // While paused nothing is sent, also not for new transitions.
    let second = node.apply(&ids[0], "FLIP");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(receiver.attempts().len(), ATTEMPTS_BEFORE_PAUSE);
    // Resumed: from the event it stopped at, in order.
    receiver.set_mode(Mode::Accept { delay_ms: 0 });
    let resumed = node
        .api
        .post(&format!("/v1/webhooks/{hook}/resume"), &json!({}))
        .expect(200)
        .json();
    assert_eq!(resumed["status"], "active");
    receiver.wait_until(Duration::from_secs(10), "both deliveries", |r| {
        r.accepted().len() >= 2
    });
    assert_eq!(receiver.accepted_offsets(), vec![first, second]);
    assert!(is_increasing(&receiver.accepted_offsets()));
    assert_eq!(
        node.metric(&format!("corestate_webhook_paused{{webhook=\"{hook}\"}}")),
        Some(0.0)
    );
}
