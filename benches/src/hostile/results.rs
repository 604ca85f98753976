//! What the hostile clients did, as reported (JSON and summary lines).

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::client::Hostile;
use super::{HostileKind, HostileSpec, CLOSE_REASONS_KEPT_MAX};

/// One kind of hostile client over the run.
#[derive(Debug, Clone, Serialize)]
pub struct HostileKindResult {
    pub kind: &'static str,
    pub connections: usize,
    /// Connections the server closed (or reset) before the end.
    pub closed_by_server: usize,
    pub first_close_after_secs: Option<f64>,
    pub close_reasons: Vec<String>,
    pub bytes_sent: u64,
    /// Requests written completely (slowloris: none ever completes).
    pub requests_sent: u64,
    pub bytes_read: u64,
    /// Complete answers read (biglist).
    pub answers_read: u64,
    /// Largest answer payload seen, from its header.
    pub answer_bytes_max: u64,
    /// The start of the first answer read, to show what the server sent.
    pub first_answer_head: Option<String>,
}

/// `--hostile`: what the hostile clients did.
#[derive(Debug, Clone, Serialize)]
pub struct HostileResults {
    pub spec: String,
    /// How long they were held open (from the start of the warm-up to the
    /// end of the drain).
    pub open_secs: f64,
    /// CPU of the hostile thread (included in the harness CPU).
    pub thread_cpu_seconds: f64,
    pub kinds: Vec<HostileKindResult>,
}

impl HostileResults {
    pub(super) fn new(
        spec: &HostileSpec,
        conns: &[Hostile],
        thread_cpu_seconds: f64,
        open: Duration,
    ) -> Self {
        let kinds = HostileKind::ALL
            .iter()
            .filter(|k| spec.count(**k) > 0)
            .map(|&kind| {
                let of_kind: Vec<&Hostile> = conns.iter().filter(|c| c.kind == kind).collect();
                let sum = |f: fn(&Hostile) -> u64| of_kind.iter().map(|c| f(c)).sum::<u64>();
                let closes: Vec<&(Duration, String)> = of_kind
                    .iter()
                    .filter_map(|c| c.tally.closed.as_ref())
                    .collect();
                let mut close_reasons: Vec<String> = Vec::new();
                for (_, why) in &closes {
                    if close_reasons.len() < CLOSE_REASONS_KEPT_MAX && !close_reasons.contains(why)
                    {
                        close_reasons.push(why.clone());
                    }
                }
                HostileKindResult {
                    kind: kind.name(),
                    connections: of_kind.len(),
                    closed_by_server: closes.len(),
                    first_close_after_secs: closes
                        .iter()
                        .map(|(at, _)| at.as_secs_f64())
                        .reduce(f64::min),
                    close_reasons,
                    bytes_sent: sum(|c| c.tally.bytes_sent),
                    requests_sent: sum(|c| c.tally.requests_sent),
                    bytes_read: sum(|c| c.tally.bytes_read),
                    answers_read: sum(|c| c.answers.answers),
                    answer_bytes_max: of_kind
                        .iter()
                        .map(|c| c.answers.answer_bytes_max)
                        .max()
                        .unwrap_or(0),
                    first_answer_head: of_kind
                        .iter()
                        .find(|c| !c.answers.first_head.is_empty())
                        .map(|c| String::from_utf8_lossy(&c.answers.first_head).into_owned()),
                }
            })
            .collect();
        HostileResults {
            spec: spec.describe(),
            open_secs: open.as_secs_f64(),
            thread_cpu_seconds,
            kinds,
        }
    }

    /// The lines of the human summary.
    pub fn summary_lines(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "  hostile         {} held open {:.1} s   (hostile thread CPU {:.2} s, in the harness CPU)",
            self.spec, self.open_secs, self.thread_cpu_seconds
        );
        for k in &self.kinds {
            let closed = match k.first_close_after_secs {
                Some(at) => format!(
                    "{} closed by the server, the first after {at:.1} s ({})",
                    k.closed_by_server,
                    k.close_reasons.join("; ")
                ),
                None => "none closed by the server".into(),
            };
            let _ = writeln!(
                s,
                "    {:<10}    {} connections, {closed}; {} requests, {} bytes sent; \
                 {} answers, {} bytes read (largest answer {} bytes)",
                k.kind,
                k.connections,
                k.requests_sent,
                k.bytes_sent,
                k.answers_read,
                k.bytes_read,
                k.answer_bytes_max
            );
        }
    }
}
