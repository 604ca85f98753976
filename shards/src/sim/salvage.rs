//! Damage planted in an acknowledged record: start-up must refuse naming
//! the file, and `--salvage` must then start, saying what it dropped.

use std::cell::RefCell;
use std::rc::Rc;

use super::executor::Stopped;
use super::model::{Model, Outcome};
use super::run::Run;
use super::world::{shard_dir, StartError};
use crate::shard::ShardMsg;

impl Run {
    /// Plant damage in a record a later write covered (not a torn tail),
    /// expect recovery to refuse naming the file, then salvage.
    pub(super) fn damage_and_salvage(&mut self) -> Result<(), String> {
        let shard = self.rng.index(self.world.cfg.shards);
        let wal = shard_dir(shard).join("wal");
        let files = self.world.disk.files_under(&wal);
        let Some((path, _)) = files
            .iter()
            .filter(|(p, len)| p.extension().is_some_and(|e| e == "wal") && *len > 0)
            .min_by_key(|(p, _)| p.clone())
            .cloned()
        else {
            return self.start();
        };
        // A record of the oldest segment that another record follows.
        let data = super::super::env::Storage::read(
            &super::disk::SimStorage(self.world.disk.clone()),
            &path,
        )
        .unwrap_or_default();
        let mut records = Vec::new();
        let mut at = 0usize;
        while let Ok((h, _)) = crate::wal::record::decode_record(&data[at..]) {
            records.push((at, h.payload_len));
            at += h.total_len();
        }
        if records.len() < 2 {
            return self.start();
        }
        let (start, payload_len) = records[self.rng.index(records.len() - 1)];
        let pos = (start + crate::wal::record::RECORD_HEADER_BYTES) as u64
            + self.rng.below(payload_len.max(1) as u64);
        self.note(format!("damage {} byte {pos}", path.display()));
        let _ = self.world.disk.damage(&path, pos, 0x10);
        match self.world.start(false) {
            Err(StartError::Refused(msg)) => {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                if !msg.contains(name.as_ref()) {
                    return Err(self.fail(format!("the refusal does not name {name}: {msg}")));
                }
                self.report.damage_refusals += 1;
                self.note(format!("start-up refused: {msg}"));
            }
            Ok(()) => {
                // A snapshot covered the damaged record: nothing is read there.
                self.note("damage in a record a snapshot covers: started".into());
                return Ok(());
            }
            Err(e) => return Err(self.fail(format!("damaged start-up: {e:?}"))),
        }
        match self.world.start(true) {
            Ok(()) => {}
            Err(e) => return Err(self.fail(format!("salvage failed: {e:?}"))),
        }
        self.report.salvages += 1;
        let cuts: Vec<String> = self
            .world
            .reports
            .iter()
            .filter_map(|r| {
                let s = r.scan.salvage.as_ref()?;
                Some(format!(
                    "shard {} cut at {:?}, {} record(s) dropped",
                    r.shard, s.position, s.records_dropped
                ))
            })
            .collect();
        self.note(format!("salvaged: {}", cuts.join("; ")));
        // The log of a salvaged shard holds only what is written after the
        // salvage (what its snapshot reflected of the cut records — a
        // snapshot may reflect writes past its covered offset — stays in
        // place without a record): its floor moves to its next offset.
        let salvaged: Vec<usize> = self
            .world
            .reports
            .iter()
            .filter(|r| r.scan.salvage.is_some())
            .map(|r| r.shard)
            .collect();
        let mailboxes = self.world.mailboxes.clone();
        let next = Rc::new(RefCell::new(Vec::new()));
        let n = next.clone();
        let stopped = self.drive(async move {
            for shard in salvaged {
                let (tx, rx) = flume::bounded(1);
                if mailboxes[shard].send(ShardMsg::Stats { done: tx }).is_err() {
                    return;
                }
                if let Ok(stats) = rx.recv_async().await {
                    n.borrow_mut().push((shard, stats.next_offset));
                }
            }
        });
        if stopped != Stopped::Done {
            return Err(self.fail(format!("reading the salvaged shards: {stopped:?}")));
        }
        for &(shard, next_offset) in next.borrow().iter() {
            self.floors[shard] = self.floors[shard].max(next_offset);
        }
        self.note(format!("floors now {:?}", self.floors));
        // What salvage dropped was acknowledged: the model starts over from
        // what the server holds now. The machine definition may be among
        // what was dropped: put it again, as an operator would.
        self.model.borrow_mut().forget_observations();
        let clients = self.clients();
        if self.drive(async move {
            clients.put_machine().await;
        }) != Stopped::Done
        {
            return Err(self.fail("installing the machine after salvage did not finish"));
        }
        Ok(())
    }
}

impl Model {
    /// After a salvage: what was observed may be gone; start from what the
    /// server holds (the next check re-reads it).
    pub fn forget_observations(&mut self) {
        // The keyed applies salvage cut are forgotten with them.
        self.keyed.clear();
        for inst in self.instances.values_mut() {
            inst.observed = 0;
            for w in &mut inst.chain {
                w.outcome = Outcome::Unknown;
            }
        }
    }
}
