//! SIGKILL mid-stream: subscriptions survive, delivery resumes from the
//! saved cursor — every acknowledged transition is delivered at least once,
//! in order, and what is delivered twice lies within the window since the
//! last cursor save; after a graceful shutdown, nothing is repeated.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;

use crate::hooks::{assert_well_formed, is_increasing, start};
use crate::receiver::{Mode, Receiver};

/// The server's `WEBHOOK_CURSOR_SAVE_DELIVERIES_MAX`: at most this many
/// deliveries are acknowledged after the last save.
const SAVE_DELIVERIES_MAX: usize = 100;

#[test]
fn after_sigkill_delivery_resumes_from_the_saved_cursor_in_order_losing_nothing() {
    let mut node = start();
    let ids = node.flips("e", 3);
    // Slow enough that the kill lands mid-stream.
    let receiver = Receiver::start(Mode::Accept { delay_ms: 5 });
    let hook = node.webhook(&receiver.url, json!({}));
    let mut expected = node.flip_many(&ids, 150);
    receiver.wait_until(Duration::from_secs(30), "some deliveries", |r| {
        r.accepted().len() >= 40
    });
    node.server.sigkill();
    let delivered_before = receiver.accepted().len();
    assert!(delivered_before < 150, "the kill was not mid-stream");
    node.server.restart();
    crate::client::wait_listening(node.api.addr);
    // The subscription survived, and new transitions follow the old ones.
    assert_eq!(node.status(&hook)["id"], hook.as_str());
    expected.extend(node.flip_many(&ids, 20));
    let wanted: BTreeSet<u64> = expected.iter().copied().collect();
    receiver.wait_until(Duration::from_secs(60), "every transition", |r| {
        let got: BTreeSet<u64> = r.accepted_offsets().into_iter().collect();
        wanted.is_subset(&got)
    });
    std::thread::sleep(Duration::from_millis(300));
    let got = receiver.accepted_offsets();
    for seen in receiver.accepted() {
        assert_well_formed(&seen, &hook);
    }
    // Two runs, each in order: before the kill, and from the saved cursor.
    let split = got
        .windows(2)
        .position(|w| w[1] <= w[0])
        .map_or(got.len(), |i| i + 1);
    let (first, second) = got.split_at(split);
    assert!(is_increasing(first), "{first:?}");
    assert!(is_increasing(second), "{second:?}");
    assert!(first.len() >= delivered_before - 1);
    if let Some(&resumed_at) = second.first() {
        let last = *first.last().unwrap();
        assert!(
            resumed_at <= last + 1 || !wanted.contains(&(last + 1)),
            "no gap"
        );
        let repeated = first.iter().filter(|o| **o >= resumed_at).count();
        assert!(
            repeated <= SAVE_DELIVERIES_MAX,
            "{repeated} deliveries repeated, more than the save window"
        );
        eprintln!(
            "delivered {} before the kill, {} again after it",
            first.len(),
            repeated
        );
    }
    let unique: BTreeSet<u64> = got.iter().copied().collect();
    assert_eq!(unique, wanted, "every transition, nothing else");
}

#[test]
fn after_a_graceful_restart_nothing_is_delivered_twice() {
    let mut node = start();
    let ids = node.flips("g", 2);
    let receiver = Receiver::start(Mode::Accept { delay_ms: 0 });
    let hook = node.webhook(&receiver.url, json!({}));
    let mut expected = node.flip_many(&ids, 30);
    receiver.wait_until(Duration::from_secs(20), "30 deliveries", |r| {
        r.accepted().len() >= 30
    });
    // At once: the shutdown saves the cursor, not only the periodic save.
    node.server.signal(libc::SIGTERM);
    let status = node.server.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    node.server.restart();
    crate::client::wait_listening(node.api.addr);
    assert!(node.status(&hook)["saved_cursor"].as_u64() > expected.last().copied());
    expected.extend(node.flip_many(&ids, 5));
    receiver.wait_until(Duration::from_secs(20), "35 deliveries", |r| {
        r.accepted().len() >= 35
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(receiver.accepted_offsets(), expected, "each once, in order");
}
