//! A process's memory and CPU time, read from /proc.

use std::time::Duration;

/// VmRSS of a process in KiB (`None` once it has exited).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

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

/// User + system CPU time of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// How busy the process is over `window`, in % of one core.
pub fn cpu_percent(pid: u32, window: Duration) -> String {
    let ticks_per_second = 100.0; // USER_HZ on Linux
    match (cpu_ticks(pid), {
        std::thread::sleep(window);
        cpu_ticks(pid)
    }) {
        (Some(a), Some(b)) => format!(
            "{:.0}%",
            (b - a) as f64 / ticks_per_second / window.as_secs_f64() * 100.0
        ),
        _ => "unknown".into(),
    }
}
