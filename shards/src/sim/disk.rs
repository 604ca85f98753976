//! A simulated disk that keeps the promises POSIX makes and no more, and
//! breaks the rest on purpose.
//!
//! Every file has two images: what was written (what reads see) and what
//! was synced. A write is durable only after a sync of its file; a name
//! (create, rename, unlink) only after a sync of its directory. A simulated
//! **power loss** keeps the synced image, plus any subset of the writes
//! since the last sync — each one whole, dropped, or torn at sector
//! granularity — and a random prefix of the unsynced directory changes (a
//! journal replays a prefix). A simulated **process kill** keeps everything
//! written (the page cache survives). Faults, chosen by the seed: EIO on a
//! write or a sync, short writes, a full disk, and latency on every
//! asynchronous operation (so crashes land inside group commits).
//!
//! A failed sync behaves as Linux does ("fsyncgate"): the pages it was to
//! write are marked clean and never reach the disk, though reads keep
//! seeing them from the cache — until a power loss, or until a later write
//! dirties the page again. A later sync succeeds without writing them.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::clock::SimClock;
use super::executor::{Sleep, Timers};
use super::rng::Rng;
use crate::env::Clock;

/// Sector size for torn writes.
pub const SECTOR_BYTES: usize = 512;
/// Page-cache page size: what a failed sync loses.
pub const PAGE_BYTES: u64 = 4096;

/// Faults the disk injects, per million operations of each kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub write_eio_per_million: u64,
    pub sync_eio_per_million: u64,
    pub short_write_per_million: u64,
    /// Upper bound of the latency of an asynchronous operation.
    pub latency_max_us: u64,
    /// Bytes of file data the disk holds at most (`0`: unlimited).
    pub capacity_bytes: u64,
}

/// What the disk did, for the run's report.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskStats {
    pub writes: u64,
    pub syncs: u64,
    pub injected_write_eio: u64,
    pub injected_sync_eio: u64,
    pub injected_short_writes: u64,
    pub injected_enospc: u64,
    pub torn_writes: u64,
    pub dropped_writes: u64,
}

/// How the machine went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashKind {
    /// Power loss: only what was synced is sure to be there.
    PowerLoss,
    /// Power loss at its worst: nothing unsynced survives, no name change
    /// not synced in its directory either (for targeted scenarios).
    PowerLossUnsyncedGone,
    /// The process was killed: the page cache keeps what was written.
    ProcessKill,
}

#[derive(Debug, Clone)]
enum Pending {
    Write { pos: u64, bytes: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
    modified_ms: u64,
    /// Pages a failed sync dropped: cached (in `data`), never written back.
    lost_pages: BTreeSet<u64>,
}

impl Inode {
    /// What the disk will hold once everything cached is written back:
    /// `data`, except the lost pages, which keep their durable bytes.
    fn written_back(&self) -> Vec<u8> {
        let mut image = self.data.clone();
        for &page in &self.lost_pages {
            let from = (page * PAGE_BYTES) as usize;
            let to = (from + PAGE_BYTES as usize).min(image.len());
            for (i, b) in image.iter_mut().enumerate().take(to).skip(from) {
                *b = self.durable.get(i).copied().unwrap_or(0);
            }
        }
        image
    }
}

#[derive(Debug, Clone)]
enum NameOp {
    Link(PathBuf, usize),
    Unlink(PathBuf),
    Rename(PathBuf, PathBuf),
}

impl NameOp {
    fn dir(&self) -> PathBuf {
        let path = match self {
            NameOp::Link(p, _) | NameOp::Unlink(p) | NameOp::Rename(_, p) => p,
        };
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    }

    fn apply(&self, names: &mut BTreeMap<PathBuf, usize>) {
        match self {
            NameOp::Link(p, inode) => {
                names.insert(p.clone(), *inode);
            }
            NameOp::Unlink(p) => {
                names.remove(p);
            }
            NameOp::Rename(from, to) => {
                if let Some(inode) = names.remove(from) {
                    names.insert(to.clone(), inode);
                }
            }
        }
    }
}

struct State {
    inodes: Vec<Inode>,
    names: BTreeMap<PathBuf, usize>,
    durable_names: BTreeMap<PathBuf, usize>,
    name_ops: Vec<NameOp>,
    dirs: BTreeSet<PathBuf>,
    faults: Faults,
    rng: Rng,
    stats: DiskStats,
}

pub struct SimDisk {
    state: Mutex<State>,
    timers: Arc<Timers>,
    clock: Arc<SimClock>,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("simulated I/O error ({what})"))
}

impl State {
    fn inode_of(&self, path: &Path) -> io::Result<usize> {
        self.names.get(path).copied().ok_or_else(|| not_found(path))
    }

    fn used_bytes(&self) -> u64 {
        let live: BTreeSet<usize> = self.names.values().copied().collect();
        live.iter().map(|&i| self.inodes[i].data.len() as u64).sum()
    }

    fn fault(&mut self, per_million: u64) -> bool {
        per_million > 0 && self.rng.below(1_000_000) < per_million
    }

    /// Apply a write to the file's written image, keeping it pending.
    fn write(&mut self, inode: usize, pos: u64, bytes: &[u8], now_ms: u64) -> io::Result<()> {
        self.stats.writes += 1;
        let eio_rate = self.faults.write_eio_per_million;
        if self.fault(eio_rate) {
            self.stats.injected_write_eio += 1;
            return Err(eio("write"));
        }
        let end = pos as usize + bytes.len();
        let grows = (end as u64).saturating_sub(self.inodes[inode].data.len() as u64);
        if self.faults.capacity_bytes > 0 && self.used_bytes() + grows > self.faults.capacity_bytes
        {
            self.stats.injected_enospc += 1;
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "No space left on device (simulated)",
            ));
        }
        let mut bytes = bytes;
        let short_rate = self.faults.short_write_per_million;
        let short = self.fault(short_rate) && bytes.len() > 1;
        if short {
            self.stats.injected_short_writes += 1;
            let keep = self.rng.index(bytes.len());
            bytes = &bytes[..keep];
        }
        let f = &mut self.inodes[inode];
        let end = pos as usize + bytes.len();
        if f.data.len() < end {
            f.data.resize(end, 0);
        }
        f.data[pos as usize..end].copy_from_slice(bytes);
        // Dirtied again: the whole cached page goes to disk at the next sync.
        let pages = pos / PAGE_BYTES..(end as u64).div_ceil(PAGE_BYTES);
        f.lost_pages.retain(|p| !pages.contains(p));
        f.pending.push(Pending::Write {
            pos,
            bytes: bytes.to_vec(),
        });
        f.modified_ms = now_ms;
        if short {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short write (simulated)",
            ));
        }
        Ok(())
    }

    fn sync(&mut self, inode: usize) -> io::Result<()> {
        self.stats.syncs += 1;
        let eio_rate = self.faults.sync_eio_per_million;
        let failed = self.fault(eio_rate);
        let f = &mut self.inodes[inode];
        if failed {
            // The pages the sync was to write are dropped from the write-back
            // (still cached for reads): no later sync will write them.
            self.stats.injected_sync_eio += 1;
            f.pending.retain(|p| match p {
                Pending::Write { pos, bytes } => {
                    let end = pos + bytes.len() as u64;
                    f.lost_pages
                        .extend(pos / PAGE_BYTES..end.div_ceil(PAGE_BYTES));
                    false
                }
                Pending::SetLen(_) => true,
            });
            return Err(eio("fsync"));
        }
        f.durable = f.written_back();
        f.pending.clear();
        Ok(())
    }

    fn link_new(&mut self, path: &Path, data: Vec<u8>, durable: bool) -> usize {
        let id = self.inodes.len();
        self.inodes.push(Inode {
            durable: if durable { data.clone() } else { Vec::new() },
            data,
            ..Inode::default()
        });
        self.names.insert(path.to_path_buf(), id);
        self.name_ops.push(NameOp::Link(path.to_path_buf(), id));
        id
    }

    fn sync_dir(&mut self, dir: &Path) {
        let ops = std::mem::take(&mut self.name_ops);
        for op in ops {
            if op.dir() == dir {
                op.apply(&mut self.durable_names);
            } else {
                self.name_ops.push(op);
            }
        }
    }
}

impl SimDisk {
    pub fn new(
        faults: Faults,
        rng: Rng,
        timers: Arc<Timers>,
        clock: Arc<SimClock>,
    ) -> Arc<SimDisk> {
        Arc::new(SimDisk {
            state: Mutex::new(State {
                inodes: Vec::new(),
                names: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                name_ops: Vec::new(),
                dirs: BTreeSet::new(),
                faults,
                rng,
                stats: DiskStats::default(),
            }),
            timers,
            clock,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("sim disk")
    }

    pub fn stats(&self) -> DiskStats {
        self.lock().stats
    }

    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// Take the machine down: afterwards every file holds what survived.
    pub fn crash(&self, kind: CrashKind, rng: &mut Rng) {
        let mut s = self.lock();
        let s = &mut *s;
        if kind != CrashKind::ProcessKill {
            let worst = kind == CrashKind::PowerLossUnsyncedGone;
            let keep = if s.name_ops.is_empty() || worst {
                0
            } else {
                rng.index(s.name_ops.len() + 1)
            };
            for op in s.name_ops.drain(..).take(keep) {
                op.apply(&mut s.durable_names);
            }
            s.names = s.durable_names.clone();
            let live: BTreeSet<usize> = s.names.values().copied().collect();
            for &i in &live {
                let f = &mut s.inodes[i];
                let mut image = f.durable.clone();
                for p in std::mem::take(&mut f.pending) {
                    match p {
                        Pending::SetLen(len) => {
                            if !worst && rng.chance(500) {
                                image.resize(len as usize, 0);
                            }
                        }
                        Pending::Write { .. } if worst => s.stats.dropped_writes += 1,
                        Pending::Write { pos, bytes } => match rng.below(3) {
                            0 => s.stats.dropped_writes += 1,
                            1 => put(&mut image, pos as usize, &bytes),
                            _ => {
                                s.stats.torn_writes += 1;
                                for (k, sector) in bytes.chunks(SECTOR_BYTES).enumerate() {
                                    if rng.chance(500) {
                                        put(&mut image, pos as usize + k * SECTOR_BYTES, sector);
                                    }
                                }
                            }
                        },
                    }
                }
                f.data = image.clone();
                f.durable = image;
                f.lost_pages.clear();
            }
        } else {
            // The cache is written back — but for the pages a failed sync
            // dropped, which it keeps serving to reads.
            s.name_ops.clear();
            s.durable_names = s.names.clone();
            for f in &mut s.inodes {
                f.durable = f.written_back();
                f.pending.clear();
            }
        }
    }

    /// Flip the bits of `mask` in byte `pos` of `path`, written and synced
    /// (damage on the medium, for the recovery checks).
    pub fn damage(&self, path: &Path, pos: u64, mask: u8) -> io::Result<()> {
        let mut s = self.lock();
        let i = s.inode_of(path)?;
        let f = &mut s.inodes[i];
        for image in [&mut f.data, &mut f.durable] {
            if let Some(b) = image.get_mut(pos as usize) {
                *b ^= mask;
            }
        }
        Ok(())
    }

    /// Remove a file at once and durably (someone deleted it by hand).
    pub fn delete_by_hand(&self, path: &Path) {
        let mut s = self.lock();
        s.names.remove(path);
        s.durable_names.remove(path);
    }

    /// Every file under `dir`, with its length (for the run's checks).
    pub fn files_under(&self, dir: &Path) -> Vec<(PathBuf, u64)> {
        let s = self.lock();
        s.names
            .iter()
            .filter(|(p, _)| p.starts_with(dir))
            .map(|(p, &i)| (p.clone(), s.inodes[i].data.len() as u64))
            .collect()
    }

    fn latency(&self) -> Duration {
        let mut s = self.lock();
        let max = s.faults.latency_max_us;
        Duration::from_micros(if max == 0 { 0 } else { s.rng.below(max + 1) })
    }

    fn sleep(&self, d: Duration) -> Sleep {
        Sleep::new(self.timers.clone(), self.clock.clone(), d)
    }
}

fn put(image: &mut Vec<u8>, pos: usize, bytes: &[u8]) {
    if image.len() < pos + bytes.len() {
        image.resize(pos + bytes.len(), 0);
    }
    image[pos..pos + bytes.len()].copy_from_slice(bytes);
}

mod files;
pub use files::SimStorage;
