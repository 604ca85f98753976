//! What a shard does with each message of its mailbox (`run_admitted`),
//! once admission let it in (`admission.rs`) and no prepared cross-shard
//! batch holds what it touches: a message that touches an instance a
//! prepared part has locked is parked, in order, until the part is decided
//! (`participant.rs`). The loop that takes the messages and commits each
//! turn is `runner.rs`.

use serde_json::Value;

use super::command::{Command, MachinesPage, ShardMsg};
use super::deferred::Deferred;
use super::participant::NoRoom;
use super::runner::Shard;
use crate::machine::definition::MachineDef;
use crate::wal::entry;
use crate::wal::record::RecordKind;

impl Shard {
    fn blocked(&self, msg: &ShardMsg) -> bool {
        match msg {
            ShardMsg::List { .. } => !self.txns.is_empty(),
            // A flush between a part's prepare and its commit would leave
            // the commit nothing to apply to.
            ShardMsg::Flush { .. } => !self.txns.is_empty() || !self.txn_log.in_doubt.is_empty(),
            _ => msg
                .instance_ids()
                .iter()
                .any(|id| self.locked.contains_key(*id)),
        }
    }

    pub(super) fn handle(&mut self, msg: ShardMsg, now: u64, deferred: &mut Vec<Deferred>) {
        if let Some(msg) = self.admit(msg) {
            self.run_admitted(msg, now, deferred);
        }
    }

    /// Run a message its client's budget admitted (or that needs none).
    pub(super) fn run_admitted(&mut self, msg: ShardMsg, now: u64, deferred: &mut Vec<Deferred>) {
        if self.blocked(&msg) {
            self.parked.push_back(msg);
            return;
        }
        match msg {
            ShardMsg::Exec { cmd, reply } => {
                let wal = &mut self.wal;
                let result = match cmd {
                    Command::Create(c) => self.state.create_instance(c, now, wal),
                    Command::Apply(c) => self.state.apply_event(c, now, wal),
                    Command::Delete(c) => self.state.delete_instance(c, now, wal),
                    Command::Get { instance_id } => self.state.get_instance(&instance_id),
                };
                if let Some(cmd) = self.state.not_run.take() {
                    // Its record would not fit in this member's log entry
                    // beside the turn's others: nothing ran.
                    self.carry(ShardMsg::Exec { cmd, reply });
                    return;
                }
                // Charged now, not when answered: later requests of a client
                // whose budget this spends wait from here on.
                let charge = reply.charge_for(&result);
                deferred.push(Deferred::Conn(reply, result, charge));
            }
            ShardMsg::InstallMachine {
                def,
                raw_definition,
                done,
            } => {
                if !self.machine_fits_turn(&def, &raw_definition) {
                    self.carry(ShardMsg::InstallMachine {
                        def,
                        raw_definition,
                        done,
                    });
                    return;
                }
                let result = self
                    .state
                    .install_machine(def, &raw_definition, now, &mut self.wal);
                deferred.push(Deferred::Install(done, result));
            }
            ShardMsg::List {
                query,
                done,
                budget,
            } => {
                let mut page = self.state.list_instances(&query);
                let bytes: usize = page.rows.iter().map(|(id, row)| id.len() + row.len()).sum();
                page.charge = budget.and_then(|(b, _)| b.charge(bytes));
                deferred.push(Deferred::List(done, page));
            }
            // Only a member's leader is sent these; a standalone shard runs
            // what it is given.
            ShardMsg::Forwarded(inner) => self.run_admitted(*inner, now, deferred),
            ShardMsg::Unpark => self.wake_waiting = true,
            // A view of the group, not of the data: answered at once.
            ShardMsg::GroupStatus { done } => {
                let _ = done.send(self.group_status());
            }
            // A standalone shard leads nothing (a member's loop hands over
            // in `replica.rs`).
            ShardMsg::HandOver { done } => {
                let _ = done.send(Ok(None));
            }
            ShardMsg::ChangeMembers { done, .. } => {
                let _ = done.send(Err(super::member_gate::not_a_member()));
            }
            ShardMsg::Machines { known, done } => {
                let known: hashbrown::HashSet<(&str, u32)> =
                    known.iter().map(|(m, v)| (m.as_str(), *v)).collect();
                let defs = self
                    .state
                    .machines
                    .iter()
                    .filter(|d| !known.contains(&(d.machine.as_str(), d.version)))
                    .cloned()
                    .collect();
                let page = MachinesPage {
                    defs,
                    complete: true,
                };
                deferred.push(Deferred::Machines(done, Ok(page)));
            }
            ShardMsg::Stats { done } => deferred.push(Deferred::Stats(done)),
            #[cfg(test)]
            ShardMsg::Audit { done } => {
                let _ = done.send(self.audit());
            }
            ShardMsg::AtomicBatch { ops, done } => match self.atomic_batch(ops, now) {
                Ok(vote) => deferred.push(Deferred::Vote(done, vote)),
                Err(NoRoom(ops)) => self.carry(ShardMsg::AtomicBatch { ops, done }),
            },
            ShardMsg::Prepare {
                txid,
                decider,
                ops,
                done,
            } => match self.prepare(txid, decider, ops, now) {
                Ok(vote) => deferred.push(Deferred::Vote(done, vote)),
                Err(NoRoom(ops)) => self.carry(ShardMsg::Prepare {
                    txid,
                    decider,
                    ops,
                    done,
                }),
            },
            ShardMsg::Decide { txid, commit, done } => {
                let verdict = self.decide(txid, commit, now);
                deferred.push(Deferred::Verdict(done, verdict));
                self.unpark(now, deferred);
            }
            ShardMsg::Decision { txid, done } => {
                deferred.push(Deferred::Verdict(done, self.logged_decision(txid)));
            }
            ShardMsg::InDoubt {
                older_than_ms,
                done,
            } => {
                let _ = done.send(self.in_doubt_older_than(older_than_ms));
            }
            ShardMsg::PartInDoubt { txid, done } => {
                let _ = done.send(self.part_in_doubt(txid));
            }
            ShardMsg::AdvanceWatermark => self.raise_watermark(),
            ShardMsg::Shutdown { done } => self.stopping = Some(done),
            ShardMsg::Flush { done } => {
                let result = self
                    .wal
                    .append(RecordKind::Flush, now, |_| {})
                    .map(|_| self.state.flush());
                // Reclaim the space once a snapshot covers the flush (a
                // member's group snapshots cover it in their time).
                if result.is_ok() && self.member.is_none() {
                    self.request_compaction(true, None);
                }
                deferred.push(Deferred::Flushed(done, result));
            }
            ShardMsg::Compact {
                force_snapshot,
                done,
            } => self.request_compaction(force_snapshot, Some(done)),
            ShardMsg::SnapshotInstance { instance_id, done } => {
                let result = self.snapshot_instance(&instance_id);
                deferred.push(Deferred::Snapshot(done, result));
            }
            ShardMsg::ReadLog {
                from_offset,
                max_records,
                max_bytes,
                done,
            } => {
                let chunk = self.read_entries(from_offset, max_records, max_bytes);
                deferred.push(Deferred::Entries(done, chunk));
            }
            ShardMsg::ReadEvents {
                from_offset,
                max_records,
                max_bytes,
                done,
            } => {
                let chunk = self.read_events(from_offset, max_records, max_bytes);
                deferred.push(Deferred::Events(done, chunk));
            }
        }
    }

    /// Re-run messages parked behind a batch's locks, in their order; those
    /// still blocked park again. (They were admitted already: running them
    /// through admission again could put them behind a later request of
    /// their client.)
    ///
    /// On a member, one whose record has no room beside the turn's others
    /// (its entry: `WalWriter::room_bytes`) stays parked, with those behind
    /// it, first in the queue, and the member's next turns run them before
    /// any new message (`MemberSide::parked_first`): a later request on
    /// their instances, no longer locked, must not overtake them.
    pub(super) fn unpark(&mut self, now: u64, deferred: &mut Vec<Deferred>) {
        let entry_bytes_max = self
            .member
            .as_ref()
            .map(|m| m.link.entry_records_bytes_max());
        let limit = self.wal.limit_turn_bytes(entry_bytes_max);
        let mut parked = std::mem::take(&mut self.parked).into_iter();
        while let Some(msg) = parked.next() {
            self.run_admitted(msg, now, deferred);
            let Some(member) = self.member.as_mut() else {
                continue;
            };
            if let Some(msg) = member.not_run.take() {
                // Behind those that parked again: they came before it.
                member.parked_first = true;
                self.parked.push_back(msg);
                self.parked.extend(parked);
                break;
            }
        }
        self.wal.limit_turn_bytes(limit);
    }

    /// Hand a message whose record would not fit in this member's log
    /// entry beside the turn's others back to the member's loop: nothing
    /// of it ran, and it starts the next turn (`replica.rs`). Only a
    /// member's turn has a limit (`WalWriter::limit_turn_bytes`), and a
    /// turn stops at the first message carried.
    fn carry(&mut self, msg: ShardMsg) {
        match self.member.as_mut() {
            Some(member) => {
                debug_assert!(member.not_run.is_none(), "two messages carried");
                member.not_run = Some(msg);
            }
            None => {
                // Never: a standalone shard's writer has no turn limit.
                tracing::error!(
                    "shard {}: a write told no room off a group",
                    self.state.shard_id
                );
                debug_assert!(false, "a standalone shard carried a message");
            }
        }
    }

    /// Whether the record installing `def` fits in this turn: always, but
    /// in a member's turn past its first record (`WalWriter::room_bytes`),
    /// when the record is written to learn its size (a rare request). A
    /// version installed already writes nothing.
    fn machine_fits_turn(&self, def: &MachineDef, raw_definition: &Value) -> bool {
        let Some(room) = self.wal.room_bytes() else {
            return true;
        };
        if self.state.machines.get(&def.machine, def.version).is_some() {
            return true;
        }
        let mut record = Vec::new();
        entry::write_put_machine(
            &mut record,
            &def.machine,
            def.version,
            &def.checksum,
            raw_definition,
        );
        record.len() <= room
    }
}
