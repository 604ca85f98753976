//! What many suites set up the same way: config files, the auth token,
//! where an instance is placed, and the machines they share.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tempfile::TempDir;

use super::raw_client::RawClient;

/// Shards every test server runs with (`--shards`). Instances are placed
/// by `crc32c(instance_id) % SHARDS`.
pub const SHARDS: usize = 2;

/// Token `secret` and its SHA-256 (docs/PROTOCOL.md §3.3).
pub const AUTH_TOKEN: &str = "secret";
pub const AUTH_TOKEN_SHA256: &str =
    "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

/// Write a YAML config file into `dir` and return its path.
pub fn write_config(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("corestate.yaml");
    fs::write(&path, yaml).expect("write config file");
    path
}

/// A temp dir holding a config that requires bearer auth with token `secret`.
pub fn auth_config() -> (TempDir, PathBuf) {
    let dir = TempDir::new().expect("temp dir");
    let path = write_config(
        dir.path(),
        &format!("auth:\n  required: true\n  token_hashes:\n    - \"{AUTH_TOKEN_SHA256}\"\n"),
    );
    (dir, path)
}

/// The shard an instance lives on.
pub fn shard_of(id: &str) -> usize {
    crc32c::crc32c(id.as_bytes()) as usize % SHARDS
}

/// The first `count` ids `{prefix}-{n}` that land on `shard`.
pub fn ids_on_shard(prefix: &str, shard: usize, count: usize) -> Vec<String> {
    (0u64..)
        .map(|n| format!("{prefix}-{n}"))
        .filter(|id| shard_of(id) == shard)
        .take(count)
        .collect()
}

/// PUT_MACHINE `name` version 1; it must succeed.
pub fn put_machine(client: &mut RawClient, name: &str, definition: Value) {
    client.ok(
        "PUT_MACHINE",
        json!({"machine": name, "version": 1, "definition": definition}),
    );
}

/// An order that is created, then paid once (PAY from `paid` is an
/// invalid transition).
pub fn order_definition() -> Value {
    json!({
        "states": ["created", "paid"],
        "initial": "created",
        "transitions": [{"from": "created", "event": "PAY", "to": "paid"}]
    })
}

/// Two states and one event that flips between them: any number of applies
/// in any order succeed, which is what load tests need.
pub fn flip_definition() -> Value {
    json!({
        "states": ["a", "b"],
        "initial": "a",
        "transitions": [
            {"from": "a", "event": "FLIP", "to": "b"},
            {"from": "b", "event": "FLIP", "to": "a"}
        ]
    })
}

/// An object nested `depth` levels deep (the innermost `{}` counted):
/// `{"d":{"d":…{}…}}`, for the tests of the deepest values a client may
/// send.
pub fn nested_object(depth: usize) -> Value {
    (1..depth).fold(json!({}), |inner, _| json!({ "d": inner }))
}
