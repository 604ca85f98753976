//! HELLO negotiates the wire mode and version; INFO reports the limits.

use serde_json::{json, Value};

use crate::support::{Server, MAX_PAYLOAD_BYTES};

#[test]
fn hello_negotiates_binary_and_info_reports_limits() {
    let server = Server::start(&[]);
    let mut client = server.raw();
    let hello = client.ok(
        "HELLO",
        json!({"protocol_version": 1, "client_name": "raw", "wire_modes": ["binary_json"],
               "features": ["idempotency", "batch"]}),
    );
    assert_eq!(hello["protocol_version"], 1, "{hello}");
    assert_eq!(hello["wire_mode"], "binary_json", "{hello}");
    assert!(hello["features"].is_array(), "{hello}");
    assert!(hello["server_name"].is_string(), "{hello}");
    assert!(hello["server_version"].is_string(), "{hello}");

    let bad = client.err_code("HELLO", json!({"protocol_version": 2}), "BAD_REQUEST");
    assert_eq!(bad["retryable"], false, "{bad}");

    let info = client.ok("INFO", Value::Null);
    assert_eq!(info["protocol_version"], 1, "{info}");
    assert_eq!(info["max_frame_bytes"], MAX_PAYLOAD_BYTES, "{info}");
    assert_eq!(info["max_payload_bytes"], MAX_PAYLOAD_BYTES, "{info}");
    assert_eq!(info["auth_required"], false, "{info}");
    assert_eq!(info["shards"], 2, "{info}");
    assert!(info["max_batch_ops"].is_u64(), "{info}");
    assert!(info["features"].is_array(), "{info}");
    assert!(info["server_name"].is_string(), "{info}");
    assert!(info["server_version"].is_string(), "{info}");
    client.assert_alive();
}
