//! The machine the protocol tests create instances of and apply events to.

use serde_json::{json, Value};

/// A machine with one state and a self-transition, for pipelined applies.
pub fn counter_definition() -> Value {
    json!({
        "states": ["s"],
        "initial": "s",
        "transitions": [{"from": "s", "event": "INC", "to": "s"}]
    })
}
