//! The flusher: the one task that owns the member's `WalWriter`. The
//! store's calls queue their records (in the order openraft issued them)
//! and ring the doorbell; the flusher takes everything queued, stages it,
//! writes it as one group and syncs it under the fsync policy (group
//! commit: appends queued while a group is being written share the next
//! group's sync), then notes where each entry's record landed and fires
//! the callbacks — `IOFlushed` for appends, the waiting `save_vote`.
//!
//! Between groups it takes one small step of retiring the segments every
//! live entry has left (`retire.rs`), after the group's callbacks fired.
//!
//! A write or sync that fails leaves the store failed (fail-stop, as a
//! standalone shard's WAL): every waiting and later call gets the error,
//! and openraft stops the member; a restart recovers what the disk holds.

use std::io;
use std::rc::Weak;
use std::time::Duration;

use futures_channel::oneshot;
use futures_util::future::{select, Either};
use openraft::storage::IOFlushed;
use shards::env::Env;
use shards::wal::record::{RecordKind, RECORD_HEADER_BYTES};
use shards::wal::{CommitIo, FsyncPolicy, WalWriter};

use super::codec::{WalLogId, WalTypes, WalVote};
use super::retire::Retirement;
use super::Shared;

/// One queued write, in the order the store's calls made it.
pub enum Op<C: WalTypes> {
    /// An append: the encoded entries and the callback to fire once they
    /// are durable under the policy.
    Entries {
        records: Vec<(WalLogId, Vec<u8>)>,
        flushed: IOFlushed<C>,
    },
    /// A vote, truncation, purge or committed record; `synced` waits for
    /// the group's sync whatever the policy (the vote).
    Record {
        kind: RecordKind,
        payload: Vec<u8>,
        synced: Option<oneshot::Sender<Result<(), String>>>,
    },
}

impl<C: WalTypes> Op<C> {
    fn bytes(&self) -> usize {
        match self {
            Op::Entries { records, .. } => records
                .iter()
                .map(|(_, p)| RECORD_HEADER_BYTES + p.len())
                .sum(),
            Op::Record { payload, .. } => RECORD_HEADER_BYTES + payload.len(),
        }
    }

    fn complete(self, result: &Result<(), String>) {
        match self {
            Op::Entries { flushed, .. } => {
                flushed.io_completed(result.clone().map_err(io::Error::other))
            }
            Op::Record {
                synced: Some(tx), ..
            } => {
                let _ = tx.send(result.clone());
            }
            Op::Record { synced: None, .. } => {}
        }
    }
}

/// How long a queue holding only lazy records (the committed log id)
/// waits for a write that must be made anyway before it is written on its
/// own: under load the next append comes within a round, and a committed
/// record written alone cost a sync of its own in front of that append
/// (under `every_write`, one more sync per commit on every member).
pub const LAZY_RECORD_LINGER_MS: u64 = 20;

/// Whether everything queued may wait: committed log ids, which need no
/// sync of their own (`save_committed`).
fn only_lazy_records<C: WalTypes>(shared: &Weak<Shared<C>>) -> bool {
    shared.upgrade().is_some_and(|s| {
        let core = s.core.borrow();
        !core.queue.is_empty()
            && core.queue.iter().all(|op| {
                matches!(
                    op,
                    Op::Record {
                        kind: RecordKind::RaftCommitted,
                        ..
                    }
                )
            })
    })
}

/// How a group is written and synced: with blocking calls on the
/// executor's thread while this member follows another's committed lead,
/// through io_uring otherwise. A follower's executor has nothing to do
/// while its group syncs that cannot wait (the next append is synced after
/// this one anyway), and a blocking sync spares io_uring's worker thread
/// and the wake-ups around it. A leader or candidate keeps io_uring: its
/// sync runs beside the replication to the others.
fn commit_io<C: WalTypes>(shared: &Weak<Shared<C>>) -> CommitIo {
    let follows = shared
        .upgrade()
        .is_some_and(|s| follows_another(s.core.borrow().vote, s.node_id));
    if follows {
        CommitIo::Blocking
    } else {
        CommitIo::Async
    }
}

/// Whether the member `me`, whose saved vote is `vote`, follows another
/// member's lead (a vote granted by a quorum to someone else).
fn follows_another(vote: Option<WalVote>, me: u64) -> bool {
    vote.is_some_and(|v| v.committed && v.leader_id.node_id != me)
}

/// Run until every handle of the store is gone (or a write fails).
pub async fn run<C: WalTypes>(
    shared: Weak<Shared<C>>,
    env: Env,
    mut writer: WalWriter,
    mut retirement: Retirement,
    doorbell: flume::Receiver<()>,
) {
    loop {
        let due = [
            writer.sync_due_in(),
            retirement.due_in(env.clock.monotonic()),
        ]
        .into_iter()
        .flatten()
        .min();
        let rang = match due {
            None => doorbell.recv_async().await.is_ok(),
            Some(due) => {
                let wait = select(
                    Box::pin(doorbell.recv_async()),
                    Box::pin(glommio::timer::sleep(due.max(Duration::from_millis(1)))),
                )
                .await;
                match wait {
                    Either::Left((rung, _)) => rung.is_ok(),
                    Either::Right(_) => true,
                }
            }
        };
        if !rang {
            return;
        }
        if only_lazy_records(&shared) {
            // Nothing here needs writing now: let the next write that
            // must be made carry it, if one comes soon enough.
            let linger = Duration::from_millis(LAZY_RECORD_LINGER_MS);
            let linger = due.map_or(linger, |d| d.min(linger));
            let _ = select(
                Box::pin(doorbell.recv_async()),
                Box::pin(glommio::timer::sleep(linger)),
            )
            .await;
        }
        let ops = match shared.upgrade() {
            Some(s) => std::mem::take(&mut s.core.borrow_mut().queue),
            None => return,
        };
        let result = write_group(&env, &mut writer, &mut retirement, &ops, &shared).await;
        if result.is_ok() {
            // A retirement this group's purge allows is reported under way
            // to whoever its callbacks wake, not only once its I/O is done.
            retirement.begin(writer.segment_id());
        }
        note_result(&shared, &writer, &retirement, &result);
        for op in ops {
            op.complete(&result);
        }
        let result = match result {
            Ok(()) => retirement.step(&env, &mut writer).await,
            failed => failed,
        };
        note_result(&shared, &writer, &retirement, &result);
        if let Err(e) = result {
            // Later calls see the failure in the store; what they queued
            // meanwhile is answered with it too.
            if let Some(s) = shared.upgrade() {
                let queued = std::mem::take(&mut s.core.borrow_mut().queue);
                drop(s);
                for op in queued {
                    op.complete(&Err(e.clone()));
                }
            }
            return;
        }
    }
}

/// Tell the store the WAL's counters, what retirement did, and a failure.
fn note_result<C: WalTypes>(
    shared: &Weak<Shared<C>>,
    writer: &WalWriter,
    retirement: &Retirement,
    result: &Result<(), String>,
) {
    let Some(s) = shared.upgrade() else {
        return;
    };
    let mut core = s.core.borrow_mut();
    core.stats = writer.stats();
    // The writer's tallies only grow at the end: its last known segment
    // may have grown, and segments may follow it.
    let written = writer.written_per_segment();
    let known = core.written.len();
    if known > 0 {
        core.written[known - 1] = written[known - 1];
    }
    core.written.extend_from_slice(&written[known..]);
    let report = retirement.report();
    if core.retire != *report {
        core.retire = report.clone();
        // A reader's open file of a retired segment would hold its space.
        let first = report.first_segment;
        if core
            .open_segment
            .as_ref()
            .is_some_and(|o| o.segment() < first)
        {
            core.open_segment = None;
        }
    }
    if let Err(e) = result {
        core.failure.get_or_insert_with(|| e.clone());
    }
}

/// Stage `ops`, write them as one group, sync as the policy (and a vote)
/// asks; then record where the entries landed and trim the cache.
async fn write_group<C: WalTypes>(
    env: &Env,
    writer: &mut WalWriter,
    retirement: &mut Retirement,
    ops: &[Op<C>],
    shared: &Weak<Shared<C>>,
) -> Result<(), String> {
    if ops.is_empty() {
        return writer
            .sync_if_due()
            .await
            .map_err(|e| format!("WAL sync failed: {e}"));
    }
    let group_bytes: usize = ops.iter().map(Op::bytes).sum();
    writer.before_turn(group_bytes).await;
    let now_ms = env.clock.now_ms();
    let mut placed = Vec::new();
    let mut sync_wanted = false;
    for op in ops {
        match op {
            Op::Entries { records, .. } => {
                for (log_id, payload) in records {
                    let (_, place) = writer
                        .append_placed(RecordKind::RaftEntry, now_ms, |out| {
                            out.extend_from_slice(payload)
                        })
                        .map_err(|e| format!("staging entry {log_id}: {}", e.message))?;
                    retirement.note_entry(place.segment, log_id.index);
                    placed.push((*log_id, place));
                }
            }
            Op::Record {
                kind,
                payload,
                synced,
            } => {
                writer
                    .append(*kind, now_ms, |out| out.extend_from_slice(payload))
                    .map_err(|e| format!("staging a {kind:?} record: {}", e.message))?;
                retirement
                    .note_record(*kind, payload)
                    .map_err(|e| format!("a {kind:?} record the store made: {e}"))?;
                sync_wanted |= synced.is_some();
            }
        }
    }
    writer
        .commit_with(commit_io(shared))
        .await
        .map_err(|e| format!("WAL write failed: {e}"))?;
    // `every_write` synced in `commit`; a vote must be durable under any
    // policy.
    if sync_wanted && writer.policy() != FsyncPolicy::EveryWrite {
        writer
            .sync()
            .await
            .map_err(|e| format!("WAL sync failed: {e}"))?;
    }
    if let Some(s) = shared.upgrade() {
        let mut core = s.core.borrow_mut();
        let core = &mut *core;
        for (log_id, place) in placed {
            core.log.set_place(&log_id, place);
        }
        let log = &core.log;
        core.cache
            .evict(|index| log.get(index).is_none_or(|s| s.place.is_some()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use openraft::Vote;

    use super::*;

    #[test]
    fn only_a_member_following_anothers_committed_lead_syncs_blocking() {
        let vote = |node_id: u64, committed: bool| -> Option<WalVote> {
            Some(match committed {
                true => Vote::new_committed(3, node_id),
                false => Vote::new(3, node_id),
            })
        };
        assert!(follows_another(vote(2, true), 1), "follower of 2");
        assert!(!follows_another(vote(1, true), 1), "the leader itself");
        assert!(!follows_another(vote(2, false), 1), "a vote in an election");
        assert!(!follows_another(vote(1, false), 1), "a candidate");
        assert!(!follows_another(None, 1), "no vote yet");
    }
}
