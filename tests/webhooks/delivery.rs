//! A receiver that accepts gets every matching transition committed after
//! the webhook was created, once, in offset order, signed, with the offset
//! as delivery id.

use std::time::Duration;

use serde_json::json;

use crate::hooks::{assert_well_formed, is_increasing, start};
use crate::receiver::{Mode, Receiver};

#[test]
fn every_transition_is_delivered_once_in_offset_order_signed_with_its_offset_as_id() {
    let node = start();
    let ids = node.flips("a", 3);
    // Committed before the webhook exists: not delivered.
    let before = node.apply(&ids[0], "FLIP");
    let receiver = Receiver::start(Mode::Accept { delay_ms: 0 });
    let hook = node.webhook(&receiver.url, json!({}));
    let expected = node.flip_many(&ids, 40);
    assert!(expected[0] > before);
    receiver.wait_until(Duration::from_secs(20), "40 deliveries", |r| {
        r.accepted().len() >= 40
    });
    // Nothing more arrives (no duplicate while the server runs).
    std::thread::sleep(Duration::from_millis(300));
    let got = receiver.accepted_offsets();
    assert_eq!(got, expected, "each once, in offset order");
    assert!(is_increasing(&got));
    for seen in receiver.accepted() {
        assert_well_formed(&seen, &hook);
        let body = seen.json();
        assert_eq!(body["machine"], "flip");
        assert_eq!(body["event"], "FLIP");
        assert!(body["from_state"].is_string() && body["to_state"].is_string());
    }
    assert_eq!(receiver.attempts().len(), 40, "no retries were needed");
    let status = node.wait_status(&hook, Duration::from_secs(5), |s| {
        s["saved_cursor"].as_u64() > Some(*expected.last().unwrap())
    });
    assert_eq!(status["status"], "active");
    assert_eq!(status["delivered"], 40);
    assert_eq!(status["failed_attempts"], 0);
    assert_eq!(
        node.metric(&format!(
            "corestate_webhook_delivered_total{{webhook=\"{hook}\"}}"
        )),
        Some(40.0)
    );
    assert_eq!(
        node.metric(&format!("corestate_webhook_paused{{webhook=\"{hook}\"}}")),
        Some(0.0)
    );
}
