//! The counter machine, and a server started with a config file, for the
//! storage lifecycle tests.

use serde_json::json;

use crate::support::{write_config, Server};

pub fn put_counter(c: &mut crate::support::RawClient) {
    c.ok(
        "PUT_MACHINE",
        json!({"machine": "ctr", "version": 1, "definition": {
            "states": ["on"], "initial": "on",
            "transitions": [{"from": "on", "event": "TICK", "to": "on"}]}}),
    );
}

/// A server on a fresh data directory with `yaml` as its config file; the
/// temp dir must outlive the server.
pub fn start_with_config(yaml: &str) -> (tempfile::TempDir, std::path::PathBuf, Server) {
    let work = tempfile::tempdir().unwrap();
    let config = write_config(work.path(), yaml);
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let config = config.to_str().unwrap().to_owned();
    let server = Server::start_in(&data, &["--config", &config]);
    (work, data, server)
}
