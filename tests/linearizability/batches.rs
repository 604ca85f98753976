//! Atomic batches across shards beside the linearizability load: one
//! client sends, one at a time, BATCH requests in atomic mode that create
//! two fresh instances — one on each shard, so the batch is a two-phase
//! commit — and START both; every `FAILING_EVERY`-th batch ends with an
//! event its instance's state refuses, so it must leave nothing. The
//! server is killed (on a cluster: each group's leader in turn) and cut
//! off meanwhile, as for the other clients.
//!
//! After the run, from the committed log: every batch is whole (both
//! creates and both transitions) or absent; an acknowledged batch is
//! whole, with the offsets its answer gave; a batch refused as not applied
//! (an op failed, or the failover error saying so) is absent; a batch
//! meant to fail is never acknowledged. An unanswered batch may be either.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use corestate_checker::{Change, Committed};
use serde_json::{json, Value};

use crate::support::ids_on_shard;
use crate::workload::{connect, Rng, Target, MACHINE, RETRY_PAUSE};

/// Every how many batches one is built to fail (its last op).
const FAILING_EVERY: u64 = 4;
/// The transition each batch applies to both of its instances.
const BATCH_EVENT: &str = "START";
/// An event the state after `BATCH_EVENT` (busy) refuses.
const REFUSED_EVENT: &str = "RESUME";

/// What a batch's answer said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Acknowledged: the offsets of its four ops' records.
    Applied(Vec<u64>),
    /// Refused with nothing applied.
    NotApplied(String),
    /// No answer, or one that leaves the outcome open.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct SentBatch {
    /// The instance on shard 0 and the one on shard 1.
    pub ids: [String; 2],
    pub meant_to_fail: bool,
    pub answer: Answer,
}

fn batch_params(ids: &[String; 2], meant_to_fail: bool) -> Value {
    let mut ops: Vec<Value> = Vec::new();
    for id in ids {
        ops.push(json!({"op": "CREATE_INSTANCE",
                        "params": {"machine": MACHINE, "version": 1, "instance_id": id}}));
        ops.push(json!({"op": "APPLY_EVENT",
                        "params": {"instance_id": id, "event": BATCH_EVENT}}));
    }
    if meant_to_fail {
        ops.push(json!({"op": "APPLY_EVENT",
                        "params": {"instance_id": ids[1], "event": REFUSED_EVENT}}));
    }
    json!({"mode": "atomic", "ops": ops})
}

fn answer_of(response: &Value) -> Answer {
    if response["status"] == "ok" {
        let offsets: Option<Vec<u64>> = response["result"]["results"].as_array().map(|rs| {
            rs.iter()
                .filter_map(|r| r["result"]["wal_offset"].as_u64())
                .collect()
        });
        return match offsets {
            Some(o) if o.len() == 4 => Answer::Applied(o),
            _ => Answer::Unknown,
        };
    }
    let error = &response["error"];
    let not_applied =
        error["details"]["applied"] == false || error["details"]["outcome"] == "not_applied";
    if not_applied {
        Answer::NotApplied(error["message"].as_str().unwrap_or_default().to_string())
    } else {
        Answer::Unknown
    }
}

/// Send batches until `stop`; every batch sent, with its answer.
pub fn run_batcher(seed: u64, target: &Target, stop: &AtomicBool) -> Vec<SentBatch> {
    let mut sent = Vec::new();
    let mut rng = Rng(seed.rotate_left(17) | 1);
    let mut node = rng.below(target.nodes() as u64) as usize;
    let mut conn = connect(target, &mut node, stop);
    let mut n: u64 = 0;
    while let Some(client) = conn.as_mut() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        n += 1;
        let prefix = format!("bat-{n}");
        let ids = [0, 1].map(|shard| ids_on_shard(&prefix, shard, 1).remove(0));
        let meant_to_fail = n.is_multiple_of(FAILING_EVERY);
        let answer = match client.call("BATCH", batch_params(&ids, meant_to_fail)) {
            Ok(response) => {
                let answer = answer_of(&response);
                if response["error"]["retryable"] == true {
                    // As the other clients: a moment, then the next node.
                    thread::sleep(RETRY_PAUSE);
                    node = (node + 1) % target.nodes();
                    conn = connect(target, &mut node, stop);
                }
                answer
            }
            Err(_) => {
                conn = connect(target, &mut node, stop);
                Answer::Unknown
            }
        };
        sent.push(SentBatch {
            ids,
            meant_to_fail,
            answer,
        });
    }
    sent
}

/// Every instance the batches named.
pub fn batch_instances(sent: &[SentBatch]) -> Vec<String> {
    sent.iter().flat_map(|b| b.ids.iter().cloned()).collect()
}

/// What the check counted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BatchCounts {
    pub sent: usize,
    pub acknowledged: usize,
    pub not_applied: usize,
    pub unknown_whole: usize,
    pub unknown_absent: usize,
}

/// Check every batch against the committed log of its instances.
pub fn check_batches(sent: &[SentBatch], log: &[Committed]) -> Result<BatchCounts, String> {
    // Per instance: the offsets of its create and its transition.
    let mut records: BTreeMap<&str, Vec<(u64, bool)>> = BTreeMap::new();
    for c in log {
        let is_create = matches!(c.change, Change::Create { .. });
        records
            .entry(c.instance.as_str())
            .or_default()
            .push((c.offset, is_create));
    }
    let mut counts = BatchCounts {
        sent: sent.len(),
        ..BatchCounts::default()
    };
    let mut problems = Vec::new();
    for b in sent {
        let of = |id: &String| records.get(id.as_str()).cloned().unwrap_or_default();
        let (first, second) = (of(&b.ids[0]), of(&b.ids[1]));
        let whole_one = |r: &Vec<(u64, bool)>| r.len() == 2 && r[0].1 && !r[1].1;
        let whole = whole_one(&first) && whole_one(&second);
        let absent = first.is_empty() && second.is_empty();
        if !whole && !absent {
            problems.push(format!(
                "batch {:?}: half in the log ({first:?}, {second:?}), answered {:?}",
                b.ids, b.answer
            ));
            continue;
        }
        match &b.answer {
            Answer::Applied(offsets) => {
                let logged: Vec<u64> = [&first, &second]
                    .iter()
                    .flat_map(|r| r.iter().map(|(o, _)| *o))
                    .collect();
                if b.meant_to_fail || !whole || *offsets != logged {
                    problems.push(format!(
                        "batch {:?} acknowledged with {offsets:?}, log {logged:?} (meant to fail: {})",
                        b.ids, b.meant_to_fail
                    ));
                }
                counts.acknowledged += 1;
            }
            Answer::NotApplied(why) => {
                if !absent {
                    problems.push(format!(
                        "batch {:?} refused as not applied ({why}) but in the log",
                        b.ids
                    ));
                }
                counts.not_applied += 1;
            }
            Answer::Unknown if whole => {
                if b.meant_to_fail {
                    problems.push(format!("batch {:?} meant to fail is in the log", b.ids));
                }
                counts.unknown_whole += 1;
            }
            Answer::Unknown => counts.unknown_absent += 1,
        }
    }
    if counts.acknowledged == 0 {
        problems.push("no batch was acknowledged: the check proved nothing".into());
    }
    if problems.is_empty() {
        Ok(counts)
    } else {
        Err(problems.join("\n"))
    }
}
