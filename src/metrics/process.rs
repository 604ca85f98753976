//! The standard `process_*` metrics, read from `/proc/self` (Linux) at
//! scrape time.

use super::Exposition;

/// What `/proc` says about this process; fields it could not read are `None`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: Option<f64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub virtual_memory_bytes: Option<u64>,
    pub resident_memory_bytes: Option<u64>,
    pub start_time_seconds: Option<f64>,
    pub threads: Option<u64>,
}

/// Fields of `/proc/self/stat` after the command name, numbered as in
/// proc(5) (field 3 is the state).
struct StatFields<'a>(Vec<&'a str>);

impl<'a> StatFields<'a> {
    fn parse(text: &'a str) -> Option<Self> {
        // The command name is in parentheses and may itself contain spaces
        // or parentheses: the fields start after the last ')'.
        let rest = &text[text.rfind(')')? + 1..];
        Some(StatFields(rest.split_whitespace().collect()))
    }

    fn get(&self, field: usize) -> Option<u64> {
        self.0.get(field.checked_sub(3)?)?.parse().ok()
    }
}

fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf only reads a configuration value.
    let v = unsafe { libc::sysconf(name) };
    (v > 0).then_some(v as u64)
}

fn boot_time_seconds() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn max_open_files() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a valid local struct.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    (ok && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

impl ProcessStats {
    pub fn read() -> Self {
        let mut stats = ProcessStats {
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|d| d.count() as u64),
            max_fds: max_open_files(),
            ..ProcessStats::default()
        };
        let Ok(text) = std::fs::read_to_string("/proc/self/stat") else {
            return stats;
        };
        let Some(f) = StatFields::parse(&text) else {
            return stats;
        };
        let ticks = sysconf(libc::_SC_CLK_TCK);
        let page = sysconf(libc::_SC_PAGESIZE);
        if let (Some(utime), Some(stime), Some(hz)) = (f.get(14), f.get(15), ticks) {
            stats.cpu_seconds = Some((utime + stime) as f64 / hz as f64);
        }
        stats.threads = f.get(20);
        if let (Some(start), Some(hz), Some(boot)) = (f.get(22), ticks, boot_time_seconds()) {
            stats.start_time_seconds = Some(boot as f64 + start as f64 / hz as f64);
        }
        stats.virtual_memory_bytes = f.get(23);
        if let (Some(pages), Some(page)) = (f.get(24), page) {
            stats.resident_memory_bytes = Some(pages * page);
        }
        stats
    }

    pub fn render(&self, out: &mut Exposition) {
        let rows: [(&str, &str, &str, Option<f64>); 7] = [
            (
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
                self.cpu_seconds,
            ),
            (
                "process_open_fds",
                "gauge",
                "Number of open file descriptors.",
                self.open_fds.map(|v| v as f64),
            ),
            (
                "process_max_fds",
                "gauge",
                "Maximum number of open file descriptors.",
                self.max_fds.map(|v| v as f64),
            ),
            (
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory size in bytes.",
                self.virtual_memory_bytes.map(|v| v as f64),
            ),
            (
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                self.resident_memory_bytes.map(|v| v as f64),
            ),
            (
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
                self.start_time_seconds,
            ),
            (
                "process_threads",
                "gauge",
                "Number of OS threads in the process.",
                self.threads.map(|v| v as f64),
            ),
        ];
        for (name, kind, help, value) in rows {
            if let Some(value) = value {
                out.single(name, kind, help, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_survive_odd_command_names() {
        let text = "42 (a) b (c) S 1 2 3 4 5 6 7 8 9 10 100 50 0 0 20 0 7 0 12345 4096 10 18446744073709551615";
        let f = StatFields::parse(text).unwrap();
        assert_eq!(f.get(14), Some(100));
        assert_eq!(f.get(15), Some(50));
        assert_eq!(f.get(20), Some(7));
        assert_eq!(f.get(22), Some(12345));
        assert_eq!(f.get(23), Some(4096));
        assert_eq!(f.get(24), Some(10));
    }

    #[test]
    fn this_process_reports_memory_threads_and_fds() {
        let s = ProcessStats::read();
        assert!(s.resident_memory_bytes.unwrap() > 0);
        assert!(s.threads.unwrap() >= 1);
        assert!(s.open_fds.unwrap() >= 1);
        assert!(s.cpu_seconds.is_some());
        assert!(s.start_time_seconds.unwrap() > 1.0e9);
    }
}
