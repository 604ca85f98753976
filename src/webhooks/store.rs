//! Where webhook subscriptions and their cursors live on disk: one JSON
//! file, `webhooks.json` in the data directory, replaced atomically (write a
//! temporary, fsync it, rename it over, fsync the directory) so a crash at
//! any instant leaves the old file or the new one, never a mix.
//!
//! A subscription is acknowledged only once the file that holds it is
//! durable; a cursor is saved in batches (`delivery`), so a restart resumes
//! from the last saved cursor and may deliver again what was acknowledged
//! after it.
//!
//! Saves run on the executor's blocking thread (`spawn_blocking`), one at a
//! time (`save` holds a one-permit semaphore while it takes the snapshot and
//! writes it), so a later save never lands before an earlier one. Saves
//! asked for while another is waiting or writing share the next write, as a
//! group commit does: a save whose request came before a write's snapshot
//! was taken is done when that write is durable.

use std::cell::Cell;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file's name in the data directory.
pub const WEBHOOKS_FILE_NAME: &str = "webhooks.json";
/// Format version written into the file.
const WEBHOOKS_FILE_FORMAT: u32 = 1;

/// One subscription as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredHook {
    pub id: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_state: Option<String>,
    pub secret: String,
    /// The next offset not yet delivered (or skipped by the filters).
    pub cursor: u64,
    pub paused: bool,
    pub created_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredFile {
    format: u32,
    webhooks: Vec<StoredHook>,
}

/// The file and the lock that keeps its saves in order.
pub struct Store {
    path: PathBuf,
    saving: glommio::sync::Semaphore,
    /// Saves asked for so far.
    requested: Cell<u64>,
    /// Every save asked for up to this one is durable.
    durable: Cell<u64>,
}

impl Store {
    pub fn new(data_dir: &Path) -> Self {
        Store {
            path: data_dir.join(WEBHOOKS_FILE_NAME),
            saving: glommio::sync::Semaphore::new(1),
            requested: Cell::new(0),
            durable: Cell::new(0),
        }
    }

    /// The stored subscriptions; none when the file does not exist. A file
    /// that cannot be read or parsed stops the start (naming the file):
    /// subscriptions must not vanish silently.
    pub fn load(&self) -> Result<Vec<StoredHook>, String> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(format!("cannot read {}: {e}", self.path.display())),
        };
        let file: StoredFile = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is damaged: {e}", self.path.display()))?;
        if file.format != WEBHOOKS_FILE_FORMAT {
            return Err(format!(
                "{}: unknown format {} (this build writes {WEBHOOKS_FILE_FORMAT})",
                self.path.display(),
                file.format
            ));
        }
        Ok(file.webhooks)
    }

    /// Make `snapshot()` (taken once this save's turn has come) durable.
    pub async fn save(&self, snapshot: impl FnOnce() -> Vec<StoredHook>) -> std::io::Result<()> {
        let mine = self.requested.get() + 1;
        self.requested.set(mine);
        let _turn = self
            .saving
            .acquire_permit(1)
            .await
            .map_err(|_| std::io::Error::other("webhook store closed"))?;
        if self.durable.get() >= mine {
            // A write that took its snapshot after this request is durable.
            return Ok(());
        }
        let covers = self.requested.get();
        let file = StoredFile {
            format: WEBHOOKS_FILE_FORMAT,
            webhooks: snapshot(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
        let path = self.path.clone();
        glommio::executor()
            .spawn_blocking(move || replace_file(&path, &bytes))
            .await?;
        self.durable.set(self.durable.get().max(covers));
        Ok(())
    }
}

/// Write temporary, fsync, rename over `path`, fsync the directory.
fn replace_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(id: &str, cursor: u64) -> StoredHook {
        StoredHook {
            id: id.into(),
            url: "http://127.0.0.1:9/x".into(),
            machine: Some("order".into()),
            event: None,
            to_state: None,
            secret: "s".into(),
            cursor,
            paused: false,
            created_ms: 1,
        }
    }

    #[test]
    fn a_replaced_file_reads_back_and_a_leftover_temporary_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        assert!(store.load().unwrap().is_empty());
        let file = StoredFile {
            format: WEBHOOKS_FILE_FORMAT,
            webhooks: vec![hook("a", 5), hook("b", 7)],
        };
        replace_file(&store.path, &serde_json::to_vec(&file).unwrap()).unwrap();
        // A crash between writing a temporary and renaming it.
        std::fs::write(store.path.with_extension("json.tmp"), b"{garbage").unwrap();
        assert_eq!(store.load().unwrap(), vec![hook("a", 5), hook("b", 7)]);
    }

    #[test]
    fn saves_asked_for_together_share_writes_and_the_last_state_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let writes = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .spawn(move || async move {
                let store = std::rc::Rc::new(Store::new(&path));
                let state = std::rc::Rc::new(Cell::new(0u64));
                let writes = std::rc::Rc::new(Cell::new(0u32));
                let saves: Vec<_> = (1..=10u64)
                    .map(|i| {
                        let (store, state, writes) = (store.clone(), state.clone(), writes.clone());
                        glommio::spawn_local(async move {
                            state.set(state.get().max(i));
                            store
                                .save(|| {
                                    writes.set(writes.get() + 1);
                                    vec![hook("a", state.get())]
                                })
                                .await
                                .unwrap();
                        })
                    })
                    .collect();
                for save in saves {
                    save.await;
                }
                assert_eq!(store.load().unwrap(), vec![hook("a", 10)]);
                writes.get()
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(writes < 10, "{writes} writes for 10 saves asked at once");
    }

    #[test]
    fn a_damaged_file_refuses_to_load_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        std::fs::write(&store.path, b"{\"format\":1,\"webh").unwrap();
        let e = store.load().unwrap_err();
        assert!(e.contains(WEBHOOKS_FILE_NAME), "{e}");
    }
}
