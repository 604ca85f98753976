//! Reading a process's memory from /proc, and pipelining raw requests.

use std::io::Write;
use std::net::TcpStream;

use serde_json::Value;

use crate::common::{rcpx_json, request};

/// Resident memory of `pid` now and at its peak (VmRSS, VmHWM), in MiB.
pub fn rss_mib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Write `count` copies of one request (ids `{prefix}{i}`) to `stream`
/// without reading anything.
pub fn pipeline(stream: &mut TcpStream, prefix: &str, count: usize, op: &str, params: &Value) {
    let mut out = Vec::new();
    for i in 0..count {
        out.extend_from_slice(&rcpx_json(&request(
            &format!("{prefix}{i}"),
            op,
            params.clone(),
        )));
    }
    stream.write_all(&out).expect("write pipelined requests");
}
