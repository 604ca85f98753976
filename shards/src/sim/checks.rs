//! What is checked after every restart of a simulation run: the recovered
//! instances against the model, and each shard's log (offsets, and the
//! watch replay) against the recovered chains.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use serde_json::Value;

use super::executor::Stopped;
use super::model::Read;
use super::run::Run;
use super::workload::Clients;
use super::world::shard_dir;
use crate::error::ErrorCode;
use crate::shard::merged_read;
use crate::shard::{shard_for_instance, Command, ReplyTo, ShardMsg};
use crate::wal::offset::shard_of_offset;

/// Per shard its offsets, the merged watch replay as (offset, instance,
/// ctx.w), and the offset the replay starts from.
type LogsRead = (Vec<Vec<u64>>, Vec<(u64, String, u64)>, u64);

impl Run {
    /// Every shard still running checks its whole-state invariants.
    pub(super) fn audit(&mut self) -> Result<(), String> {
        let mailboxes = self.world.mailboxes.clone();
        let found = Rc::new(RefCell::new(Vec::new()));
        let f = found.clone();
        let stopped = self.drive(async move {
            for mailbox in &mailboxes {
                let (tx, rx) = flume::bounded(1);
                if mailbox.send(ShardMsg::Audit { done: tx }).is_err() {
                    continue;
                }
                if let Ok(Err(e)) = rx.recv_async().await {
                    f.borrow_mut().push(e);
                }
            }
        });
        if let Some(e) = found.borrow().first() {
            return Err(self.fail(format!("audit: {e}")));
        }
        match stopped {
            Stopped::Done | Stopped::FailStop => Ok(()),
            other => Err(self.fail(format!("audit did not finish: {other:?}"))),
        }
    }

    /// Every recovered instance against the model.
    /// `after_salvage`: salvage dropped acknowledged records, so a batch
    /// may have lost its part on one shard; only what survived is taken in.
    pub(super) fn check_instances(&mut self, after_salvage: bool) -> Result<(), String> {
        let before = self.model.borrow().chains();
        let ids: Vec<String> = self.model.borrow().instances.keys().cloned().collect();
        let clients = self.clients();
        let reads = Rc::new(RefCell::new(BTreeMap::new()));
        let (r, c, list) = (reads.clone(), clients.clone(), ids.clone());
        let stopped = self.drive(async move {
            for id in list {
                let read = match c.exec_get(&id).await {
                    Some(read) => read,
                    None => return,
                };
                r.borrow_mut().insert(id, read);
            }
        });
        if stopped != Stopped::Done {
            return Err(self.fail(format!("reading the recovered instances: {stopped:?}")));
        }
        let reads = reads.borrow();
        for id in &ids {
            let read = reads
                .get(id)
                .ok_or_else(|| self.fail(format!("{id}: no answer after recovery")))?;
            let read = read.clone().map_err(|e| self.fail(format!("{id}: {e}")))?;
            self.model
                .borrow_mut()
                .recovered(id, &read)
                .map_err(|e| self.fail(e))?;
        }
        let batches = self.model.borrow_mut().check_batches(&before);
        if !after_salvage {
            batches.map_err(|e| self.fail(e))?;
        }
        self.report.instances = ids.len() as u64;
        Ok(())
    }

    /// Offsets per shard, and the watch replay against the recovered chains.
    pub(super) fn check_logs(&mut self) -> Result<(), String> {
        let mailboxes = self.world.mailboxes.clone();
        let shards = mailboxes.len();
        let out: Rc<RefCell<Result<LogsRead, String>>> =
            Rc::new(RefCell::new(Err("not read".into())));
        let o = out.clone();
        let stopped = self.drive(async move {
            *o.borrow_mut() = read_logs(&mailboxes).await;
        });
        if stopped != Stopped::Done {
            return Err(self.fail(format!("reading the logs: {stopped:?}")));
        }
        let (per_shard, mut events, from) = out.borrow().clone().map_err(|e| self.fail(e))?;
        let from = self.floors.iter().copied().fold(from, u64::max);
        events.retain(|e| e.0 >= from);
        for (shard, offsets) in per_shard.iter().enumerate() {
            if let Some(w) = offsets.windows(2).find(|w| w[0] >= w[1]) {
                return Err(self.fail(format!(
                    "shard {shard}: offsets do not increase: {} then {}",
                    w[0], w[1]
                )));
            }
            if let Some(o) = offsets.iter().find(|&&o| shard_of_offset(o) != shard) {
                return Err(self.fail(format!("shard {shard} holds offset {o} of another shard")));
            }
        }
        let all: BTreeSet<u64> = per_shard.iter().flatten().copied().collect();
        if all.len() != per_shard.iter().map(Vec::len).sum::<usize>() {
            return Err(self.fail("an offset appears on two shards"));
        }
        // Every write in place is in its shard's log (unless compacted away).
        for (id, inst) in &self.model.borrow().instances {
            for w in &inst.chain {
                let floor = |o: u64| from.max(self.floors[shard_of_offset(o)]);
                if let Some(o) = w.offset.filter(|&o| o >= floor(o)) {
                    if !all.contains(&o) {
                        let sh = shard_of_offset(o);
                        self.dump_log(sh);
                        return Err(self.fail(format!(
                            "{id}: write {} at offset {o} is in place but not in the log of shard {sh} \
                             ({} offsets read there, from {:?} to {:?})",
                            w.wid,
                            per_shard[sh].len(),
                            per_shard[sh].first(),
                            per_shard[sh].last()
                        )));
                    }
                }
            }
        }
        // The replay: in offset order, once each, and per instance exactly
        // the applies its recovered chain went through (from `from` on).
        if let Some(w) = events.windows(2).find(|w| w[0].0 >= w[1].0) {
            return Err(self.fail(format!(
                "watch replay out of order at {} then {}",
                w[0].0, w[1].0
            )));
        }
        let mut replayed: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (_, id, wid) in &events {
            replayed.entry(id.clone()).or_default().push(*wid);
        }
        let model = self.model.borrow();
        for (id, inst) in &model.instances {
            let expected: Vec<u64> = inst
                .chain
                .iter()
                .filter(|w| w.is_apply && w.offset.is_some_and(|o| o >= from))
                .map(|w| w.wid)
                .collect();
            let got = replayed.remove(id).unwrap_or_default();
            if got != expected {
                let offsets: Vec<Option<u64>> = inst.chain.iter().map(|w| w.offset).collect();
                let in_log: Vec<bool> = offsets
                    .iter()
                    .map(|o| o.is_some_and(|o| all.contains(&o)))
                    .collect();
                let shard = crate::shard::shard_for_instance(id, shards);
                self.trace
                    .borrow_mut()
                    .push(format!("{id} on shard {shard}, in the log: {in_log:?}"));
                return Err(self.fail(format!(
                    "{id}: watch replay from {from} has applies {got:?}, its chain {expected:?} \
                     (chain offsets {offsets:?}; the replay has {} events up to {:?})",
                    events.len(),
                    events.last().map(|e| e.0)
                )));
            }
        }
        if let Some((id, wids)) = replayed.into_iter().next() {
            return Err(self.fail(format!("watch replay has events {wids:?} of unknown {id}")));
        }
        let _ = shards;
        Ok(())
    }

    /// Every record of a shard's log, into the trace (for a failure).
    pub(super) fn dump_log(&self, shard: usize) {
        let storage = super::disk::SimStorage(self.world.disk.clone());
        let wal = shard_dir(shard).join("wal");
        let mut t = self.trace.borrow_mut();
        for (path, len) in self.world.disk.files_under(&wal) {
            t.push(format!("{} ({len} bytes)", path.display()));
            let data = crate::env::Storage::read(&storage, &path).unwrap_or_default();
            let mut pos = 0usize;
            while let Ok((h, _)) = crate::wal::record::decode_record(&data[pos..]) {
                t.push(format!(
                    "  @{pos} {:?} offset {} entries_before {} group_start {}",
                    h.kind, h.offset, h.entries_before, h.group_start
                ));
                pos += h.total_len();
            }
        }
    }
}

impl Clients {
    /// GET_INSTANCE as a model read.
    pub async fn exec_get(&self, id: &str) -> Option<Result<Read, String>> {
        let (tx, rx) = flume::bounded(1);
        let shard = shard_for_instance(id, self.mailboxes.len());
        self.mailboxes[shard]
            .send(ShardMsg::Exec {
                cmd: Command::Get {
                    instance_id: id.to_string(),
                },
                reply: ReplyTo::internal(tx, 0),
            })
            .ok()?;
        let reply = rx.recv_async().await.ok()?;
        Some(match reply.body {
            Ok(bytes) => serde_json::from_slice::<Value>(&bytes)
                .map(|v| Read::from_get(&v))
                .map_err(|e| e.to_string()),
            Err(e) if e.code == ErrorCode::InstanceNotFound => Ok(Read::NotFound),
            Err(e) => Err(e.message),
        })
    }
}

/// Every shard's offsets, and the merged watch replay from the oldest
/// offset every shard still holds: (offset, instance, ctx.w).
async fn read_logs(mailboxes: &[flume::Sender<ShardMsg>]) -> Result<LogsRead, String> {
    let mut per_shard = Vec::new();
    let mut from = 0u64;
    // Every record written so far is below this.
    let mut end = 0u64;
    for mailbox in mailboxes {
        let (tx, rx) = flume::bounded(1);
        mailbox
            .send(ShardMsg::Stats { done: tx })
            .map_err(|_| "shard gone")?;
        let stats = rx.recv_async().await.map_err(|_| "shard gone")?;
        from = from.max(stats.retained_from);
        end = end.max(stats.next_offset);
        let mut offsets = Vec::new();
        let mut at = stats.retained_from;
        loop {
            let (tx, rx) = flume::bounded(1);
            mailbox
                .send(ShardMsg::ReadLog {
                    from_offset: at,
                    max_records: 512,
                    max_bytes: 1 << 20,
                    done: tx,
                })
                .map_err(|_| "shard gone")?;
            let chunk = rx
                .recv_async()
                .await
                .map_err(|_| "shard gone")?
                .map_err(|e| e.to_string())?;
            offsets.extend(chunk.entries.iter().map(|e| e.offset));
            offsets.extend(chunk.unseen.iter().copied());
            if chunk.at_end || chunk.complete_upto <= at {
                break;
            }
            at = chunk.complete_upto;
        }
        offsets.sort_unstable();
        per_shard.push(offsets);
    }
    let mut events = Vec::new();
    let mut cursor = from;
    for _ in 0..100_000 {
        let stretch = merged_read::read_events(mailboxes, cursor, 64, 1 << 20)
            .await
            .map_err(|e| e.message)?;
        for e in &stretch.events {
            let ctx: Value = serde_json::from_slice(&e.ctx_json).map_err(|e| e.to_string())?;
            events.push((
                e.offset,
                e.instance_id.clone(),
                ctx["w"].as_u64().unwrap_or(0),
            ));
        }
        if stretch.next_cursor >= end || stretch.next_cursor <= cursor {
            break;
        }
        cursor = stretch.next_cursor;
    }
    Ok((per_shard, events, from))
}
