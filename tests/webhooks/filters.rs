//! Filters: machine, event and to_state, each optional, all that are given
//! must match.

use std::time::Duration;

use serde_json::json;

use crate::client::order_instance;
use crate::hooks::start;
use crate::receiver::{Mode, Receiver};

#[test]
fn a_webhook_gets_only_the_transitions_its_filters_match() {
    let node = start();
    let flips = node.flips("f", 1);
    order_instance(&node.api, "o-1", 5);
    order_instance(&node.api, "o-2", 5);
    let paid = Receiver::start(Mode::Accept { delay_ms: 0 });
    let ships = Receiver::start(Mode::Accept { delay_ms: 0 });
    let flip_to_b = Receiver::start(Mode::Accept { delay_ms: 0 });
    let everything = Receiver::start(Mode::Accept { delay_ms: 0 });
    node.webhook(&paid.url, json!({"machine": "order", "to_state": "paid"}));
    node.webhook(&ships.url, json!({"event": "SHIP"}));
    node.webhook(&flip_to_b.url, json!({"machine": "flip", "to_state": "b"}));
    node.webhook(&everything.url, json!({}));
    let pay1 = node.apply("o-1", "PAY");
    let flip1 = node.apply(&flips[0], "FLIP"); // a → b
    let ship1 = node.apply("o-1", "SHIP");
    let flip2 = node.apply(&flips[0], "FLIP"); // b → a
    let pay2 = node.apply("o-2", "PAY");
    let flip3 = node.apply(&flips[1], "FLIP"); // a → b
    everything.wait_until(Duration::from_secs(10), "all 6", |r| {
        r.accepted().len() >= 6
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut all = vec![pay1, flip1, ship1, flip2, pay2, flip3];
    all.sort_unstable();
    assert_eq!(everything.accepted_offsets(), all);
    let mut pays = vec![pay1, pay2];
    pays.sort_unstable();
    assert_eq!(paid.accepted_offsets(), pays);
    assert_eq!(ships.accepted_offsets(), vec![ship1]);
    let mut to_b = vec![flip1, flip3];
    to_b.sort_unstable();
    assert_eq!(flip_to_b.accepted_offsets(), to_b);
    let _ = flip2;
}
