//! The server's memory over a run (`--server-pid`): VmRSS read from
//! /proc/PID/status on a thread of its own every [`RSS_SAMPLE_INTERVAL`]
//! from just before the load starts until it has drained, and VmHWM — the
//! kernel's high-water mark of the resident set since the process started,
//! which also catches peaks between two samples — at the end.

use std::fmt::Write as _;
use std::fs;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Time between two VmRSS samples.
pub const RSS_SAMPLE_INTERVAL: Duration = Duration::from_millis(200);
/// Bytes in a KiB (the unit of /proc/PID/status).
const KIB_BYTES: f64 = 1024.0;

/// The resident set of a process at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcMemory {
    /// VmRSS: resident now.
    pub rss_kib: u64,
    /// VmHWM: the most that was ever resident.
    pub hwm_kib: u64,
}

/// VmRSS and VmHWM from the text of a /proc/PID/status file.
fn parse_status(text: &str) -> Option<ProcMemory> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(ProcMemory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// Reads the memory of process `pid` now.
pub fn sample(pid: u32) -> Result<ProcMemory, String> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    parse_status(&text).ok_or_else(|| format!("{path}: no VmRSS/VmHWM"))
}

/// The server's memory over the run, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct ServerMemory {
    pub sample_interval_ms: u64,
    pub samples: usize,
    /// The first sample: after setup, before any hostile client or load.
    pub rss_start_kib: u64,
    /// The largest VmRSS sampled while the load ran (warm-up, measured
    /// window and drain).
    pub rss_peak_kib: u64,
    /// When that was, in seconds after the first sample.
    pub rss_peak_at_secs: f64,
    pub rss_end_kib: u64,
    /// VmHWM at the end: the peak over the server's whole life (setup
    /// included), between samples too.
    pub vm_hwm_kib: u64,
    /// Every VmRSS sample, [`RSS_SAMPLE_INTERVAL`] apart.
    pub rss_timeline_kib: Vec<u64>,
}

impl ServerMemory {
    fn from_samples(samples: &[(Duration, ProcMemory)]) -> Option<ServerMemory> {
        let (_, first) = samples.first()?;
        let (_, last) = samples.last()?;
        let (peak_at, peak) = samples
            .iter()
            .max_by_key(|(_, m)| m.rss_kib)
            .expect("not empty");
        Some(ServerMemory {
            sample_interval_ms: RSS_SAMPLE_INTERVAL.as_millis() as u64,
            samples: samples.len(),
            rss_start_kib: first.rss_kib,
            rss_peak_kib: peak.rss_kib,
            rss_peak_at_secs: peak_at.as_secs_f64(),
            rss_end_kib: last.rss_kib,
            vm_hwm_kib: samples.iter().map(|(_, m)| m.hwm_kib).max().unwrap_or(0),
            rss_timeline_kib: samples.iter().map(|(_, m)| m.rss_kib).collect(),
        })
    }

    /// The line of the human summary.
    pub fn summary_line(&self, s: &mut String) {
        let mib = |kib: u64| kib as f64 / KIB_BYTES;
        let _ = writeln!(
            s,
            "  server memory   peak RSS {:.1} MiB at {:.1} s   (start {:.1} MiB, end {:.1} MiB; \
             VmRSS every {} ms; VmHWM {:.1} MiB)",
            mib(self.rss_peak_kib),
            self.rss_peak_at_secs,
            mib(self.rss_start_kib),
            mib(self.rss_end_kib),
            self.sample_interval_ms,
            mib(self.vm_hwm_kib)
        );
    }
}

/// Samples a process's memory until [`RssSampler::finish`].
pub struct RssSampler {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<Result<Vec<(Duration, ProcMemory)>, String>>,
}

impl RssSampler {
    /// Takes the first sample at once, then one every interval.
    pub fn start(pid: u32) -> RssSampler {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut samples = Vec::new();
            loop {
                samples.push((started.elapsed(), sample(pid)?));
                match stopped.recv_timeout(RSS_SAMPLE_INTERVAL) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            samples.push((started.elapsed(), sample(pid)?));
            Ok(samples)
        });
        RssSampler { stop, thread }
    }

    /// Takes a last sample and stops; `Err` says why there are no numbers.
    pub fn finish(self) -> Result<ServerMemory, String> {
        // The sampler may have ended already (its process is gone): then
        // nobody listens, which is fine.
        let _ = self.stop.send(());
        let samples = self
            .thread
            .join()
            .map_err(|_| "memory sampler panicked".to_string())??;
        ServerMemory::from_samples(&samples).ok_or_else(|| "no memory sample".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read_in_kib() {
        let text = "Name:\tcorestate\nVmPeak:\t  900000 kB\nVmHWM:\t   51234 kB\n\
                    VmRSS:\t   40960 kB\nThreads:\t4\n";
        assert_eq!(
            parse_status(text),
            Some(ProcMemory {
                rss_kib: 40960,
                hwm_kib: 51234
            })
        );
        assert_eq!(parse_status("Name:\tx\nVmRSS:\t1 kB\n"), None);
    }

    #[test]
    fn the_peak_is_the_largest_sample_and_hwm_the_latest_high_water_mark() {
        let at = |ms: u64, rss_kib: u64, hwm_kib: u64| {
            (Duration::from_millis(ms), ProcMemory { rss_kib, hwm_kib })
        };
        let m =
            ServerMemory::from_samples(&[at(0, 100, 300), at(200, 250, 300), at(400, 120, 310)])
                .unwrap();
        assert_eq!(
            (m.rss_start_kib, m.rss_peak_kib, m.rss_end_kib, m.vm_hwm_kib),
            (100, 250, 120, 310)
        );
        assert_eq!(m.rss_peak_at_secs, 0.2);
        assert_eq!(m.rss_timeline_kib, vec![100, 250, 120]);
        assert!(ServerMemory::from_samples(&[]).is_none());
    }

    #[test]
    fn own_process_is_sampled_until_finished() {
        let sampler = RssSampler::start(std::process::id());
        std::thread::sleep(RSS_SAMPLE_INTERVAL + RSS_SAMPLE_INTERVAL / 2);
        let m = sampler.finish().unwrap();
        assert!(m.samples >= 3, "{} samples", m.samples);
        assert!(m.rss_peak_kib > 0 && m.vm_hwm_kib >= m.rss_peak_kib);
    }

    #[test]
    fn a_missing_process_gives_a_reason() {
        let err = RssSampler::start(u32::MAX).finish().unwrap_err();
        assert!(err.contains("/proc/"), "{err}");
    }
}
