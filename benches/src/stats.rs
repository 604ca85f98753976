//! Resource accounting outside the protocol: the server's CPU time (total
//! and per thread) from /proc/<pid>, the harness's own CPU time from
//! getrusage, and facts about the machine the numbers were taken on.

use std::collections::BTreeMap;
use std::fs;

use serde::Serialize;

/// CPU time of a process, in clock ticks, with the per-thread split.
#[derive(Debug, Clone)]
pub struct ProcCpu {
    pub ticks: u64,
    /// Thread id → (thread name, ticks).
    pub threads: BTreeMap<u32, (String, u64)>,
}

/// Clock ticks per second of /proc times (`_SC_CLK_TCK`).
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// (name, utime + stime) from the text of a /proc `stat` file.
fn parse_stat(text: &str) -> Option<(String, u64)> {
    // The name is in parentheses and may itself contain spaces or ')'.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text[open + 1..close].to_string();
    let mut fields = text[close + 1..].split_whitespace();
    // After the name: state is field 3; utime and stime are fields 14, 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((name, utime + stime))
}

/// Samples the CPU time of process `pid` and of each of its threads.
pub fn sample_process(pid: u32) -> Result<ProcCpu, String> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let (_, ticks) = parse_stat(&text).ok_or_else(|| format!("{path}: unexpected format"))?;
    let mut threads = BTreeMap::new();
    if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) {
        for entry in dir.flatten() {
            let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Some(parsed) = fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|t| parse_stat(&t))
            {
                threads.insert(tid, parsed);
            }
        }
    }
    Ok(ProcCpu { ticks, threads })
}

/// Busy and total CPU time of the whole machine, in clock ticks (first
/// line of /proc/stat; idle and iowait count as not busy).
#[derive(Debug, Clone, Copy)]
pub struct SystemCpu {
    pub busy_ticks: u64,
}

pub fn sample_system() -> Option<SystemCpu> {
    let text = fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is inside user).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some(SystemCpu {
        busy_ticks: total.saturating_sub(idle),
    })
}

/// The 1-minute load average.
pub fn load_average_1m() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// CPU seconds of one thread over an interval.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadCpu {
    pub tid: u32,
    pub name: String,
    pub cpu_seconds: f64,
}

/// Per-thread CPU seconds between two samples, busiest first (threads
/// born in between count from zero).
pub fn thread_deltas(before: &ProcCpu, after: &ProcCpu) -> Vec<ThreadCpu> {
    let hz = clock_ticks_per_sec() as f64;
    let mut out: Vec<ThreadCpu> = after
        .threads
        .iter()
        .map(|(&tid, (name, ticks))| {
            let start = before.threads.get(&tid).map_or(0, |(_, t)| *t);
            ThreadCpu {
                tid,
                name: name.clone(),
                cpu_seconds: ticks.saturating_sub(start) as f64 / hz,
            }
        })
        .filter(|t| t.cpu_seconds > 0.0)
        .collect();
    out.sort_by(|a, b| b.cpu_seconds.total_cmp(&a.cpu_seconds));
    out
}

/// User + system CPU seconds of this process so far.
pub fn self_cpu_seconds() -> f64 {
    rusage_cpu_seconds(libc::RUSAGE_SELF)
}

/// User + system CPU seconds of the calling thread so far.
pub fn thread_cpu_seconds() -> f64 {
    rusage_cpu_seconds(libc::RUSAGE_THREAD)
}

fn rusage_cpu_seconds(who: libc::c_int) -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(who, &mut usage) };
    if rc != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Where the numbers were taken.
#[derive(Debug, Clone, Serialize)]
pub struct MachineFacts {
    pub nproc: usize,
    pub kernel: String,
    pub cpu_model: String,
    pub mem_total_kib: u64,
    pub hostname: String,
}

pub fn machine_facts() -> MachineFacts {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let mem_total_kib = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    MachineFacts {
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        cpu_model,
        mem_total_kib,
        hostname: read("/proc/sys/kernel/hostname").trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_in_the_name() {
        let line = "42 (my (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(parse_stat(line), Some(("my (odd) name".into(), 325)));
    }

    #[test]
    fn own_process_is_readable() {
        let cpu = sample_process(std::process::id()).unwrap();
        assert!(!cpu.threads.is_empty());
    }
}
