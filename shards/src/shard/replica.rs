//! A shard as a member of its replicated group (issue 14): the same state,
//! the same operations and the same loop turns as a standalone shard, with
//! the group's log in place of the shard's own segments
//! (`group_link.rs` is the seam).
//!
//! * **The leader executes, the log carries results.** A turn runs its
//!   requests against the state and stages their records as today; the
//!   staged records go to the group as one entry (`GroupLink::propose`),
//!   and the turn's answers leave once it is committed on a majority. The
//!   next turn starts after that, so nothing uncommitted is ever read.
//! * **Followers replay.** Committed entries arrive as deliveries and are
//!   replayed with recovery's code (`ShardState::replay_any`); their watch
//!   events are published like a leader's. A leader skips its own entries
//!   (its memory has them already).
//! * **Followers forward.** What needs the leader goes to it
//!   (`GroupLink::forward`) when a leader is known, and its answer back to
//!   the client; a message forwarded here is run or refused, never
//!   forwarded again.
//! * **A new leader catches up first.** Before its first turn in a term a
//!   leader waits for a ReadIndex barrier: every entry committed before it
//!   is then delivered and applied, so its turns build on the whole log.
//! * **Reads.** A turn that logged records is confirmed by their commit; a
//!   turn that logged none — reads, and writes that failed (a conflict, a
//!   refused transition: answers read from the state) — waits for a
//!   barrier after it ran, before answering (linearizable: the leader was
//!   still the leader after the reads began; a deposed leader cut off from
//!   the others would otherwise answer from an old state — the 600 s run
//!   with two groups caught one such answer).
//! * **Losing the lead with a turn in flight** leaves memory ahead of the
//!   committed log. The turn's clients are told (a retryable error, or
//!   "outcome unknown"), and the state is rebuilt from the newest snapshot
//!   and the committed entries after it (`GroupLink::committed`), as a
//!   restart would.
//!
//! * **Reading the log by offset** (WAL_READ, watch catch-up) reads the
//!   group's entries this member applied (`member_read.rs`).
//! * **Beside the loop** (`member_tasks.rs`): membership changes and
//!   COMPACT's group snapshot; an idle group's watermark entries
//!   (`member_watermark.rs`).
//!
//! * **SNAPSHOT_INSTANCE** is served by the member asked, from the state
//!   it applied (committed only: on a leader it starts a turn of its own).
//!
//! * **Atomic batches across shards** (`member_txn.rs`): prepare, commit
//!   and abort are entries of each involved group's log; a prepared part's
//!   locks are every member's, so they survive a change of leader.
//!
//! * **Applying the group's entries** (`member_apply.rs`); what a member
//!   keeps beside the state, and how one opens (`member_side.rs`).

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_lite::future;

use super::command::ShardMsg;
use super::events::Publication;
use super::group_link::{Delivery, Leadership, LinkError};
use super::member_gate::{needs_leader, refuse};
use super::member_side::MemberSide;
use super::runner::{Deferred, Shard, SHARD_TICK_INTERVAL_MS, SHARD_TURN_TIME_MAX_US};

/// How long the loop waits between the slices of a group snapshot: any
/// wait on a timer lets the executor poll its I/O (see `run_member`).
const SNAPSHOT_SLICE_GAP_US: u64 = 1;

/// What woke the member's loop.
enum Wake {
    Message(ShardMsg),
    Delivered(Delivery),
    Timer,
    /// Every sender of the mailbox is gone.
    Closed,
}

/// What a turn's commit step did.
enum TurnOutcome {
    /// Nothing needed the group (no writes, no reads that need a leader).
    Local,
    /// The turn's entry committed, or its reads were confirmed.
    Confirmed,
    /// Neither: the turn's answers become this error.
    Refused(LinkError),
}

impl Shard {
    /// What this shard's group member knows of its group (`None`:
    /// standalone).
    pub(super) fn group_status(&self) -> Option<serde_json::Value> {
        self.member.as_ref().map(|m| {
            let mut status = m.link.status();
            if let Some(obj) = status.as_object_mut() {
                // Cross-shard batch parts prepared here and not decided
                // yet (`member_txn.rs`): their instances wait.
                let in_doubt = self.txn_log.in_doubt.len();
                obj.insert("batch_parts_in_doubt".into(), in_doubt.into());
                obj.insert("batches_in_doubt".into(), self.batches_in_doubt_listed());
                // Parts whose decision a read of the log may still need
                // (forgotten as the log is purged: `member_read.rs`).
                let kept = self.decisions.len();
                obj.insert("batch_decisions_kept".into(), kept.into());
            }
            status
        })
    }

    pub(super) fn member(&self) -> &MemberSide {
        self.member.as_ref().expect("a member shard")
    }

    pub(super) fn member_mut(&mut self) -> &mut MemberSide {
        self.member.as_mut().expect("a member shard")
    }

    /// The last log index this member's state reflects.
    pub fn applied_index(&self) -> Option<u64> {
        self.member.as_ref().map(|m| m.applied_index)
    }

    /// Serve the mailbox as a member of the group until every sender is
    /// gone (or a Shutdown message).
    pub async fn run_member(
        mut self,
        mailbox: flume::Receiver<ShardMsg>,
        publisher: Option<flume::Sender<Publication>>,
    ) {
        let mut deferred: Vec<Deferred> = Vec::with_capacity(256);
        let tick = Duration::from_millis(SHARD_TICK_INTERVAL_MS);
        let deliveries = self.member().deliveries.clone();
        loop {
            // A message the last turn left for this one comes first.
            let first = match self.member_mut().carried.take() {
                Some(msg) => Some(msg),
                // Parked requests go first: a turn of their own.
                None if self.member().parked_first => None,
                None => match self.wait_for_work(&mailbox, &deliveries, tick).await {
                    Wake::Closed => break,
                    Wake::Message(msg) => Some(msg),
                    Wake::Delivered(d) => {
                        self.deliver(d);
                        None
                    }
                    Wake::Timer => None,
                },
            };
            self.drain_deliveries();
            let started = self.env.clock.monotonic();
            let outcome = self
                .member_turn(first, &mailbox, &mut deferred, started)
                .await;
            match outcome {
                TurnOutcome::Local | TurnOutcome::Confirmed => {
                    for d in deferred.drain(..) {
                        self.answer(d);
                    }
                }
                TurnOutcome::Refused(e) => {
                    let error = e.to_engine_error();
                    for d in deferred.drain(..) {
                        self.answer_refused(d, &error);
                    }
                    if matches!(e, LinkError::Failed(_)) {
                        tracing::warn!(
                            "shard {}: the group member failed: {e:?}",
                            self.state.shard_id
                        );
                    }
                }
            }
            self.ask_again_for_watermark();
            if !self.state.events.is_empty() || self.publish_requested {
                self.publish(publisher.as_ref());
            }
            // Between turns the state is the committed one: a slice of the
            // group snapshot being taken, if any.
            self.step_member_snapshot();
            self.heartbeat.fetch_add(1, Ordering::Relaxed);
            if let Some(done) = self.stopping.take() {
                let _ = done.send(());
                break;
            }
            // Work left (messages, woken requests, a snapshot being taken):
            // let the executor's other tasks run before the next turn. With
            // a snapshot running the loop does not wait for a message, and
            // an empty mailbox, no delivery and a zero timer all complete
            // without yielding: the loop went from slice to slice and
            // starved this member's Raft core and peer links for the whole
            // snapshot (1–2 s at ~1M instances; no AppendEntries answered,
            // so the followers elected a new leader at every snapshot —
            // bench-results/2026-12-05/peer-silence/notes.md). Between
            // snapshot slices the loop waits on a timer rather than yield:
            // a loop that stays runnable keeps glommio from polling I/O
            // until its preemption timer fires (100 ms), so each of a
            // follower's AppendEntries took 4–5 of those periods, 0.1–0.5 s,
            // at every snapshot (bench-results/2026-12-05/snapshot-stall/).
            if self.member_snapshot_running() {
                self.env
                    .tasks
                    .sleep(Duration::from_micros(SNAPSHOT_SLICE_GAP_US))
                    .await;
            } else if !mailbox.is_empty() || self.wake_waiting {
                self.env.tasks.yield_to_others().await;
            }
        }
    }

    /// Wait for a message, a delivery, or the tick (at once when parked
    /// work is waking).
    async fn wait_for_work(
        &self,
        mailbox: &flume::Receiver<ShardMsg>,
        deliveries: &flume::Receiver<Delivery>,
        tick: Duration,
    ) -> Wake {
        let wait = if self.wake_waiting || self.member_snapshot_running() {
            Duration::ZERO
        } else {
            tick
        };
        future::or(
            async {
                mailbox
                    .recv_async()
                    .await
                    .map_or(Wake::Closed, Wake::Message)
            },
            future::or(
                async {
                    match deliveries.recv_async().await {
                        Ok(d) => Wake::Delivered(d),
                        // The group stopped: only the mailbox and the
                        // timer wake the loop from now on.
                        Err(_) => future::pending().await,
                    }
                },
                async {
                    self.env.tasks.sleep(wait).await;
                    Wake::Timer
                },
            ),
        )
        .await
    }

    /// One turn: handle the messages (refusing those that need a leader
    /// when this member is none), then log the turn's records or confirm
    /// its reads.
    async fn member_turn(
        &mut self,
        first: Option<ShardMsg>,
        mailbox: &flume::Receiver<ShardMsg>,
        deferred: &mut Vec<Deferred>,
        started: Duration,
    ) -> TurnOutcome {
        let turn = Duration::from_micros(SHARD_TURN_TIME_MAX_US);
        let now = self.env.clock.now_ms();
        let mut lead: Option<Result<(), LinkError>> = None;
        // Whether the turn's answers rest on this member leading: its
        // entry confirms that when the turn logs something; otherwise a
        // barrier must (the module comment, "Reads").
        let mut confirm = false;
        let mut next = first;
        let mut handled = 0;
        let entry_bytes_max = self.member().link.entry_records_bytes_max();
        while let Some(msg) = next.take() {
            handled += 1;
            // The group logs the turn as one entry. A write whose record
            // would take the turn past what an entry holds does not run
            // beside the others but first in the next turn, so a write that
            // fits an entry alone is never refused for the company it came
            // in: refusing the whole turn (below) would undo every write in
            // it, and a retry could meet the same company again. The
            // turn's first message runs whatever its size.
            self.wal
                .limit_turn_bytes((handled > 1).then_some(entry_bytes_max));
            // A message another node forwarded here is run or refused,
            // never forwarded again (`forward.rs` of the Raft crate).
            let (msg, forwarded) = match msg {
                ShardMsg::Forwarded(inner) => (*inner, true),
                msg => (msg, false),
            };
            if matches!(msg, ShardMsg::SnapshotInstance { .. }) && self.wal.staged_records() > 0 {
                // An instance snapshot must hold committed state only, not
                // this turn's staged writes: it starts the next turn.
                self.member_mut().carried = Some(msg);
                break;
            }
            if let ShardMsg::Compact { done, .. } = msg {
                // This member's own snapshot: no leader needed.
                self.start_group_snapshot(done);
            } else if let ShardMsg::HandOver { done } = msg {
                let link = self.member().link.clone();
                let _ = done.send(link.hand_over().await);
            } else if matches!(msg, ShardMsg::ReadLog { .. } | ShardMsg::ReadEvents { .. }) {
                // The committed log as this member applied it: no leader needed.
                deferred.extend(self.answer_log_read(msg).await);
            } else if needs_leader(&msg) {
                if lead.is_none() {
                    lead = Some(self.lead_check().await);
                }
                match &lead {
                    Some(Ok(())) => match msg {
                        ShardMsg::ChangeMembers { change, done } => {
                            self.start_member_change(change, done)
                        }
                        msg => {
                            // Reads, and writes that fail or change
                            // nothing, log nothing: their answers need the
                            // barrier too (a deposed leader's state is old).
                            confirm = true;
                            self.handle(msg, now, deferred);
                        }
                    },
                    Some(Err(LinkError::NotLeader {
                        leader: Some(leader),
                    })) if !forwarded => {
                        if let Err(msg) = self.member().link.forward(*leader, msg) {
                            let error = LinkError::NotLeader {
                                leader: Some(*leader),
                            };
                            refuse(*msg, error.to_engine_error(), deferred);
                        }
                    }
                    Some(Err(e)) => refuse(msg, e.to_engine_error(), deferred),
                    None => unreachable!("checked above"),
                }
            } else if matches!(msg, ShardMsg::AdvanceWatermark) {
                // A member's watermark moves only with the entries its
                // group commits, never with its own clock: a leader logs a
                // watermark entry, a follower asks its leader for one
                // (`member_watermark.rs`).
                let lead_ready = if self.leads() {
                    if lead.is_none() {
                        lead = Some(self.lead_check().await);
                    }
                    matches!(lead, Some(Ok(())))
                } else {
                    false
                };
                self.advance_member_watermark(forwarded, lead_ready, now);
            } else {
                self.handle(msg, now, deferred);
            }
            if let Some(not_run) = self.member_mut().not_run.take() {
                let not_run = if forwarded {
                    ShardMsg::Forwarded(Box::new(not_run))
                } else {
                    not_run
                };
                self.member_mut().carried = Some(not_run);
                // It did not run: the turn's requests are the others.
                handled -= 1;
                break;
            }
            if self.member().parked_first {
                // Unparked requests without room: no new message runs
                // before them.
                break;
            }
            if handled >= super::runner::GROUP_COMMIT_MESSAGES_MAX
                || self.wal.staged_bytes() >= self.group_bytes_max
                || self.stopping.is_some()
                || self.env.clock.elapsed(started) >= turn
            {
                break;
            }
            next = mailbox.try_recv().ok();
        }
        // Requests parked behind a batch's locks, and requests waiting for
        // their client's answer budget: a leader runs those whose locks are
        // gone (a rebuild can drop a lock no decision will release) and
        // those their budgets allow; a member that lost the lead refuses
        // them. One without room waits, first, for the next turn: a parked
        // one with those parked behind it, before any new message
        // (`unpark`); a waiting one first in its client's queue
        // (`run_waiting`).
        self.wal.limit_turn_bytes(Some(entry_bytes_max));
        self.member_mut().parked_first = false;
        if self.wake_waiting || !self.waiting.is_empty() || !self.parked.is_empty() {
            if lead.is_none() {
                lead = Some(self.lead_check().await);
            }
            match &lead {
                Some(Ok(())) => {
                    confirm = true;
                    self.unpark(now, deferred);
                    if !self.member().parked_first {
                        let now = self.env.clock.now_ms();
                        self.run_waiting(now, deferred, started + turn);
                    }
                }
                Some(Err(e)) => {
                    let error = e.to_engine_error();
                    let parked = std::mem::take(&mut self.parked);
                    for msg in parked.into_iter().chain(self.waiting.take_all()) {
                        refuse(msg, error.clone(), deferred);
                    }
                    self.wake_waiting = false;
                }
                None => {}
            }
        }
        self.wal.limit_turn_bytes(None);
        // A turns-only writer's commit only moves the staged records out.
        if let Err(e) = self.wal.commit().await {
            self.fail_stop("staging a turn failed", &e);
        }
        let records = self.wal.take_turn();
        let link = self.member().link.clone();
        let max = link.entry_records_bytes_max();
        if records.len() > max {
            // A turn stops once its records pass the group-commit size, and
            // a write that would take it past what one entry (one record of
            // the log) holds waits for the next turn. One record alone
            // always fits (`SHARD_RECORD_PAYLOAD_MAX_BYTES`), so this is a
            // defence: proposed, the entry would be refused by the log
            // store, which stops the member's Raft. Nothing was logged:
            // the writes are undone, as after a lost lead.
            tracing::warn!(
                "shard {}: a turn's records came to {} bytes, more than one entry holds \
                 ({max}); its {handled} requests are refused",
                self.state.shard_id,
                records.len()
            );
            self.rebuild().await;
            return TurnOutcome::Refused(LinkError::TurnTooLarge {
                bytes: records.len(),
                max,
                alone: handled == 1,
            });
        }
        if !records.is_empty() {
            let proposed = self.env.clock.monotonic();
            match link.propose(records).await {
                Ok(index) => {
                    let took_us = self.env.clock.elapsed(proposed).as_micros() as u64;
                    self.member_mut().turn_commit_latency.record(took_us);
                    self.member_mut().own_index = Some(index);
                    self.drain_deliveries();
                    if self.member_mut().own_index.take().is_some() {
                        // openraft answers after applying the entry, and
                        // applying it delivers it: never expected.
                        tracing::warn!(
                            "shard {}: entry {index} committed but not delivered; rebuilding",
                            self.state.shard_id
                        );
                        self.rebuild().await;
                    }
                    TurnOutcome::Confirmed
                }
                Err(e) => {
                    self.rebuild().await;
                    TurnOutcome::Refused(e)
                }
            }
        } else if confirm {
            match link.barrier().await {
                Ok(()) => {
                    self.drain_deliveries();
                    TurnOutcome::Confirmed
                }
                Err(e) => TurnOutcome::Refused(e),
            }
        } else {
            TurnOutcome::Local
        }
    }

    /// Whether this member leads its group now.
    fn leads(&self) -> bool {
        matches!(self.member().link.leadership(), Leadership::Leader { .. })
    }

    /// Whether this member may run a turn as the leader: it leads, and has
    /// caught up with every entry committed before its term.
    async fn lead_check(&mut self) -> Result<(), LinkError> {
        let link = self.member().link.clone();
        match link.leadership() {
            Leadership::Follower { leader } => Err(LinkError::NotLeader { leader }),
            Leadership::Leader { term } if self.member().ready_term == Some(term) => Ok(()),
            Leadership::Leader { term } => {
                link.barrier().await?;
                // The barrier covers what was committed; a leader's log may
                // hold more (a tail left by an earlier term, or by this
                // node before a restart as leader of the same term). Its
                // turns must build on all of it — otherwise they would run
                // on a state the log will not have, with offsets below the
                // tail's (found by the 600 s linearizability run).
                link.catch_up().await?;
                self.drain_deliveries();
                self.member_mut().ready_term = Some(term);
                Ok(())
            }
        }
    }
}
