//! The next log segment, made ready before the active one fills up — and
//! what the shard does when it cannot be (a full disk).
//!
//! Writes into the active segment need no space: it was allocated and
//! zero-filled when it was made. Space is needed at rollover, for the next
//! segment. So the writer prepares it in the background once the active
//! segment is half full (zero-filled, synced, and named in the manifest as
//! part of the log), and before a turn that might roll over it waits for a
//! preparation still under way. A record that needs the next segment is
//! then staged only if that segment is ready: when its preparation failed
//! (ENOSPC, EIO), the record is refused with a retryable `WAL_IO_ERROR`
//! naming the cause *before* anything in memory changes — nothing that was
//! not written becomes visible, and reads, watches and writes that still
//! fit the active segment go on. The preparation is retried every
//! `ROLLOVER_RETRY_MS`, so writes resume by themselves once space is freed.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::manifest::{self, Manifest};
use super::segment::segment_path;
use crate::env::tasks::blocking;
use crate::env::{Env, SegmentFile};

/// How long after a failed preparation of the next segment it is tried again.
pub const ROLLOVER_RETRY_MS: u64 = 1_000;

type Prepared = io::Result<(Box<dyn SegmentFile>, Manifest)>;

enum Next {
    /// Nothing prepared or under way.
    Idle,
    Preparing {
        id: u64,
        rx: flume::Receiver<Prepared>,
    },
    Ready {
        id: u64,
        file: Box<dyn SegmentFile>,
        manifest: Manifest,
    },
    Failed {
        id: u64,
        error: String,
        /// Monotonic time of the failure.
        at: Duration,
    },
}

pub struct Rollover {
    env: Env,
    dir: PathBuf,
    segment_size_bytes: u64,
    dsync: bool,
    next: Next,
}

/// What a shard that cannot roll over says, for the log and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloverFailure {
    pub segment: u64,
    pub error: String,
}

impl Rollover {
    pub fn new(env: Env, dir: &Path, segment_size_bytes: u64, dsync: bool) -> Self {
        Rollover {
            env,
            dir: dir.to_path_buf(),
            segment_size_bytes,
            dsync,
            next: Next::Idle,
        }
    }

    /// Start preparing segment `id` in the background, naming it in
    /// `manifest` once it exists — unless it is under way or ready, or a
    /// failed attempt is too recent to try again.
    pub fn prepare(&mut self, id: u64, manifest: Manifest) {
        match &self.next {
            Next::Preparing { id: p, .. } | Next::Ready { id: p, .. } if *p == id => return,
            Next::Failed { id: p, at, .. }
                if *p == id
                    && self.env.clock.elapsed(*at) < Duration::from_millis(ROLLOVER_RETRY_MS) =>
            {
                return
            }
            _ => {}
        }
        let (tx, rx) = flume::bounded(1);
        let (env, dir) = (self.env.clone(), self.dir.clone());
        let (size, dsync) = (self.segment_size_bytes, self.dsync);
        self.env.tasks.spawn(Box::pin(async move {
            let _ = tx.send(prepare_segment(&env, &dir, id, size, dsync, manifest).await);
        }));
        self.next = Next::Preparing { id, rx };
    }

    /// Take in a preparation that finished; with `wait`, wait for one under
    /// way. Returns a failure that just became known, for the caller to log.
    pub async fn settle(&mut self, wait: bool) -> Option<RolloverFailure> {
        let Next::Preparing { id, rx } = &self.next else {
            return None;
        };
        let id = *id;
        let result = if wait {
            rx.recv_async().await.ok()
        } else {
            match rx.try_recv() {
                Ok(r) => Some(r),
                Err(flume::TryRecvError::Empty) => return None,
                Err(flume::TryRecvError::Disconnected) => None,
            }
        };
        match result {
            Some(Ok((file, manifest))) => {
                self.next = Next::Ready { id, file, manifest };
                None
            }
            other => {
                let error = match other {
                    Some(Err(e)) => e.to_string(),
                    _ => "the preparation task vanished".to_string(),
                };
                self.next = Next::Failed {
                    id,
                    error: error.clone(),
                    at: self.env.clock.monotonic(),
                };
                Some(RolloverFailure { segment: id, error })
            }
        }
    }

    /// Why segment `id` cannot be rolled over to, if its preparation failed.
    pub fn failure(&self, id: u64) -> Option<RolloverFailure> {
        match &self.next {
            Next::Failed { id: p, error, .. } if *p == id => Some(RolloverFailure {
                segment: id,
                error: error.clone(),
            }),
            _ => None,
        }
    }

    /// Whether the last attempt failed (for any segment): the disk is full
    /// or failing.
    pub fn failing(&self) -> bool {
        matches!(self.next, Next::Failed { .. })
    }

    /// The file of segment `id` to roll over to, with the manifest that names
    /// it: the prepared one, or — when none was prepared (a group that rolls
    /// over twice) — one made now.
    pub async fn take(&mut self, id: u64, manifest: Manifest) -> Prepared {
        if let Next::Preparing { id: p, .. } = &self.next {
            if *p == id {
                self.settle(true).await;
            }
        }
        match std::mem::replace(&mut self.next, Next::Idle) {
            Next::Ready {
                id: p,
                file,
                manifest,
            } if p == id => Ok((file, manifest)),
            Next::Failed { id: p, error, .. } if p == id => Err(io::Error::other(error)),
            _ => {
                let (size, dsync) = (self.segment_size_bytes, self.dsync);
                prepare_segment(&self.env, &self.dir, id, size, dsync, manifest).await
            }
        }
    }
}

/// A zero-filled, synced segment, opened for appends in the policy's mode,
/// and the manifest raised to name it — before any record goes into it, so
/// from then on its absence is a missing file, not the log's end.
async fn prepare_segment(
    env: &Env,
    dir: &Path,
    id: u64,
    size_bytes: u64,
    dsync: bool,
    manifest: Manifest,
) -> Prepared {
    let file = env
        .storage
        .create_segment(&segment_path(dir, id), size_bytes, dsync)
        .await?;
    let mut raised = manifest;
    if raised.last_segment < id {
        raised.last_segment = id;
        let (storage, dir) = (env.storage.clone(), dir.to_path_buf());
        blocking(&*env.tasks, move || {
            manifest::write(&*storage, &dir, &raised)
        })
        .await
        .unwrap_or_else(|| Err(io::Error::other("the manifest write did not run")))?;
    }
    Ok((file, raised))
}
