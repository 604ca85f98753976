//! Malformed values a parser might take for something else: lone UTF-16
//! surrogates, numbers beyond 64 bits, offsets beyond what can exist,
//! records larger than the log takes.

use serde_json::{json, Value};

use crate::support::{rcpx_frame, Server};

#[test]
fn a_lone_surrogate_is_a_bad_request_not_a_nul_character() {
    let server = Server::start(&[]);
    let mut c = server.raw();
    c.ok(
        "PUT_MACHINE",
        json!({"machine": "m", "version": 1, "definition":
            {"states": ["a"], "initial": "a", "transitions": []}}),
    );
    for escape in [r"\ud800", r"\udfff", r"\ud800x", r"\ud800\u0041"] {
        let text = format!(
            r#"{{"type":"request","id":"s","op":"CREATE_INSTANCE","params":{{"machine":"m","version":1,"instance_id":"{escape}"}}}}"#
        );
        c.send(&rcpx_frame(text.as_bytes()));
        let r = c.read_response();
        assert_eq!(r["id"], "s", "{r}");
        assert_eq!(r["error"]["code"], "BAD_REQUEST", "{escape}: {r}");
    }
    // A real pair is a character, and U+0000 is not taken.
    c.ok(
        "CREATE_INSTANCE",
        json!({"machine": "m", "version": 1, "instance_id": "\u{1F600}"}),
    );
    c.ok(
        "CREATE_INSTANCE",
        json!({"machine": "m", "version": 1, "instance_id": "\u{0}"}),
    );
}

#[test]
fn numbers_beyond_64_bits_are_read_or_refused_under_the_request_id() {
    let server = Server::start(&[]);
    let mut c = server.raw();
    for (id, number, ok) in [
        ("big", "123456789012345678901234567890", true),
        ("huge", "1e400", false),
    ] {
        let text =
            format!(r#"{{"type":"request","id":"{id}","op":"PING","params":{{"n":{number}}}}}"#);
        c.send(&rcpx_frame(text.as_bytes()));
        let r = c.read_response();
        assert_eq!(r["id"], id, "{r}");
        assert_eq!(r["status"] == "ok", ok, "{r}");
        if !ok {
            assert_eq!(r["error"]["code"], "BAD_REQUEST");
        }
    }
    c.assert_alive();
}

#[test]
fn a_record_over_the_log_limit_is_a_bad_request_that_will_not_be_retried() {
    let server = Server::start(&[]);
    let mut c = server.raw();
    c.ok(
        "PUT_MACHINE",
        json!({"machine": "m", "version": 1, "definition":
            {"states": ["a"], "initial": "a", "transitions": []}}),
    );
    // Fits a frame (16 MiB), not a record (16 MiB - 64 KiB).
    let pad = "x".repeat(16 * 1024 * 1024 - 40 * 1024);
    let e = c.err_code(
        "CREATE_INSTANCE",
        json!({"machine": "m", "version": 1, "instance_id": "fat", "initial_ctx": {"pad": pad}}),
        "BAD_REQUEST",
    );
    assert_eq!(e["retryable"], false, "{e}");
    assert!(e["message"].as_str().unwrap().contains("limit"), "{e}");
    c.err_code(
        "GET_INSTANCE",
        json!({"instance_id": "fat"}),
        "INSTANCE_NOT_FOUND",
    );
}

#[test]
fn offsets_beyond_what_can_exist_are_refused_everywhere() {
    let server = Server::start(&[]);
    let mut c = server.raw();
    let too_big = json!(u64::MAX);
    let e = c.err_code("WATCH_ALL", json!({"from_offset": too_big}), "BAD_REQUEST");
    assert!(e["message"].as_str().unwrap().contains("WAL offset"), "{e}");
    c.err_code("WAL_READ", json!({"from_offset": too_big}), "BAD_REQUEST");
    // 2^53 - 1 is the largest offset a client may name.
    c.ok("WATCH_ALL", json!({"from_offset": (1u64 << 53) - 1}));
    // from_offset is an integer: strings are not coerced (the Node client's
    // `fromOffset` alias may still be a numeric string).
    c.err_code("WAL_READ", json!({"from_offset": "0"}), "BAD_REQUEST");
    c.err_code(
        "WAL_READ",
        json!({"from_offset": 0, "limit": "5"}),
        "BAD_REQUEST",
    );
    let r = c.ok("WAL_READ", json!({"fromOffset": "0"}));
    assert!(r["records"].is_array());
    let r: Value = c.ok("WAL_READ", json!({"from_offset": 0, "limit": null}));
    assert!(r["records"].is_array());
}
