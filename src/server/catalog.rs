//! The server-wide machine catalog, shared by the acceptor cores (one
//! `Arc`; a mutex held only for map lookups and updates, never across an
//! `await` — machine operations are not on the data path): the one place
//! that decides PUT_MACHINE, so that two concurrent PUTs of one (machine, version)
//! cannot install different definitions on different shards.
//!
//! A PUT reserves the (machine, version) as *pending*, sends the definition
//! to every shard's mailbox — each shard logs it durably in its own WAL and
//! installs it — and marks it *installed* once all have answered. Only then
//! is it acknowledged, listed or returned by GET_MACHINE. A concurrent PUT of
//! the same definition waits for the first; a different one is refused.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use shards::machine::definition::{parse_definition, MachineDef};
use shards::shard::result::ResultWriter;
use shards::shard::ShardMsg;
use shards::{EngineError, EngineResult, ErrorCode};

use super::context::Router;

enum Entry {
    Installed(Arc<MachineDef>),
    Pending {
        checksum: String,
        waiters: Vec<flume::Sender<EngineResult<()>>>,
    },
}

pub struct Catalog {
    machines: Mutex<BTreeMap<String, BTreeMap<u32, Entry>>>,
    /// 0 = unlimited.
    max_versions_per_machine: u32,
    /// The shards are members of replicated groups (`refresh`).
    clustered: bool,
}

fn version_exists(machine: &str, version: u32) -> EngineError {
    EngineError::core(
        ErrorCode::MachineVersionExists,
        format_args!("machine version already exists: {machine} v{version}"),
    )
}

fn put_result(created: bool, def: &MachineDef) -> Vec<u8> {
    let mut r = ResultWriter::new();
    r.bool("created", created)
        .str("machine", &def.machine)
        .str("stored_checksum", &def.checksum)
        .u64("version", def.version as u64);
    r.finish()
}

impl Catalog {
    /// `clustered`: the shards are members of replicated groups, so a
    /// machine may have been installed through another node; the catalog
    /// then reads the group's machines before it answers (`refresh`).
    pub fn new(max_versions_per_machine: u32, clustered: bool) -> Self {
        Catalog {
            machines: Mutex::new(BTreeMap::new()),
            max_versions_per_machine,
            clustered,
        }
    }

    /// Whether the shards are members of replicated groups.
    pub fn clustered(&self) -> bool {
        self.clustered
    }

    /// On a cluster node, learn the machines shard 0's group has installed
    /// (through its leader, linearizably: every shard gets every machine,
    /// so shard 0's are all of them). A node that cannot reach the leader
    /// answers with the group's retryable refusal. Standalone: nothing to
    /// learn, every install went through this catalog.
    ///
    /// The node tells the leader what it knows and learns the rest, a page
    /// at a time: a catalog larger than one forwarded answer once made
    /// every GET_MACHINE, LIST_MACHINES and PUT_MACHINE there fail.
    pub async fn refresh(&self, router: &Router) -> EngineResult<()> {
        if !self.clustered {
            return Ok(());
        }
        loop {
            let known = self.keys();
            let page = router
                .ask(0, |done| ShardMsg::Machines { known, done })
                .await??;
            let learned = page.defs.len();
            self.load(page.defs);
            if page.complete {
                return Ok(());
            }
            if learned == 0 {
                return Err(EngineError::internal(
                    "the leader's machines came in a page with none of them",
                ));
            }
        }
    }

    /// (machine, version) of every machine installed or being installed
    /// (`load` leaves those as they are: the leader need not send them).
    fn keys(&self) -> Vec<(String, u32)> {
        let machines = self.machines();
        machines
            .iter()
            .flat_map(|(name, versions)| versions.keys().map(move |v| (name.clone(), *v)))
            .collect()
    }

    /// The map, locked. A panic aborts the process (`runtime`), so a
    /// poisoned lock cannot be observed; its data is taken as is.
    fn machines(&self) -> MutexGuard<'_, BTreeMap<String, BTreeMap<u32, Entry>>> {
        self.machines.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Add definitions recovered by the shards at start-up.
    pub fn load(&self, defs: impl IntoIterator<Item = Arc<MachineDef>>) {
        let mut machines = self.machines();
        for def in defs {
            machines
                .entry(def.machine.clone())
                .or_default()
                .entry(def.version)
                .or_insert_with(|| Entry::Installed(def));
        }
    }

    /// FLUSH_ALL: forget every machine (the shards forgot them durably).
    pub fn clear(&self) -> usize {
        let mut machines = self.machines();
        let n = machines.values().map(|v| v.len()).sum();
        machines.clear();
        n
    }

    pub fn installed(&self) -> Vec<Arc<MachineDef>> {
        let machines = self.machines();
        machines
            .values()
            .flat_map(|v| v.values())
            .filter_map(|e| match e {
                Entry::Installed(d) => Some(d.clone()),
                Entry::Pending { .. } => None,
            })
            .collect()
    }

    pub async fn put(
        &self,
        router: &Router,
        machine: &str,
        version: u32,
        definition: &Value,
    ) -> EngineResult<Vec<u8>> {
        self.refresh(router).await?;
        // 1. Version limit, for versions not yet known.
        {
            let machines = self.machines();
            let versions = machines.get(machine);
            let known = versions.is_some_and(|v| v.contains_key(&version));
            let count = versions.map_or(0, |v| v.len());
            let max = self.max_versions_per_machine as usize;
            if !known && max > 0 && count >= max {
                return Err(EngineError::new(
                    ErrorCode::MachineVersionLimitExceeded,
                    format!(
                        "machine version limit exceeded: machine '{machine}' already has {count} versions (limit: {max})"
                    ),
                ));
            }
        }
        // 2. Validate.
        let def = Arc::new(parse_definition(machine, version, definition)?);
        // 3. Existing or pending version.
        let next = {
            let mut machines = self.machines();
            let versions = machines.entry(machine.to_owned()).or_default();
            match versions.get_mut(&version) {
                Some(Entry::Installed(existing)) if existing.checksum != def.checksum => {
                    return Err(version_exists(machine, version));
                }
                Some(Entry::Installed(existing)) if !self.clustered => {
                    return Ok(put_result(false, existing));
                }
                // On a cluster, "installed" means shard 0's group has it: a
                // PUT refused by another group (no leader yet) left it
                // there alone. Installing again completes it — each group
                // that has it answers so — before the PUT is answered.
                Some(Entry::Installed(existing)) => Next::Complete(existing.clone()),
                Some(Entry::Pending { checksum, waiters }) => {
                    if *checksum != def.checksum {
                        return Err(version_exists(machine, version));
                    }
                    let (tx, rx) = flume::bounded(1);
                    waiters.push(tx);
                    Next::Wait(rx)
                }
                None => {
                    versions.insert(
                        version,
                        Entry::Pending {
                            checksum: def.checksum.clone(),
                            waiters: Vec::new(),
                        },
                    );
                    Next::Install
                }
            }
        };
        match next {
            Next::Wait(rx) => {
                rx.recv_async()
                    .await
                    .map_err(|_| EngineError::internal("machine installation was abandoned"))??;
                return Ok(put_result(false, &def));
            }
            Next::Complete(existing) => {
                install_everywhere(router, &existing, Arc::new(definition.clone())).await?;
                return Ok(put_result(false, &existing));
            }
            Next::Install => {}
        }
        // 4. Install on every shard, durably, then publish.
        let outcome = install_everywhere(router, &def, Arc::new(definition.clone())).await;
        let waiters = {
            let mut machines = self.machines();
            let versions = machines.entry(machine.to_owned()).or_default();
            let previous = match &outcome {
                Ok(()) => versions.insert(version, Entry::Installed(def.clone())),
                Err(_) => versions.remove(&version),
            };
            if versions.is_empty() {
                machines.remove(machine);
            }
            match previous {
                Some(Entry::Pending { waiters, .. }) => waiters,
                _ => Vec::new(),
            }
        };
        for w in waiters {
            let _ = w.send(outcome.clone());
        }
        outcome.map(|()| put_result(true, &def))
    }

    pub fn get(&self, machine: &str, version: u32) -> EngineResult<Vec<u8>> {
        let machines = self.machines();
        match machines.get(machine).and_then(|v| v.get(&version)) {
            Some(Entry::Installed(def)) => {
                let mut r = ResultWriter::new();
                r.str("checksum", &def.checksum)
                    .value("definition", &def.normalized_value());
                Ok(r.finish())
            }
            _ => Err(EngineError::machine_not_found(machine, version)),
        }
    }

    pub fn list(&self) -> Vec<u8> {
        let machines = self.machines();
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(br#"{"items":["#);
        let mut first = true;
        for (name, versions) in machines.iter() {
            let installed: Vec<u32> = versions
                .iter()
                .filter(|(_, e)| matches!(e, Entry::Installed(_)))
                .map(|(v, _)| *v)
                .collect();
            if installed.is_empty() {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(br#"{"machine":"#);
            shards::json::canonical::write_str(&mut out, name);
            out.extend_from_slice(br#","versions":["#);
            let list: Vec<String> = installed.iter().map(u32::to_string).collect();
            out.extend_from_slice(list.join(",").as_bytes());
            out.extend_from_slice(b"]}");
        }
        out.extend_from_slice(b"]}");
        out
    }
}

/// Send the definition to every shard and wait until each has it durably.
/// What a PUT does after looking at the catalog.
enum Next {
    /// Another PUT of the same definition is installing it: wait for it.
    Wait(flume::Receiver<EngineResult<()>>),
    /// Installed as far as the catalog knows; on a cluster, install it
    /// again everywhere to complete a PUT a group refused.
    Complete(Arc<MachineDef>),
    /// New: install it.
    Install,
}

pub async fn install_everywhere(
    router: &Router,
    def: &Arc<MachineDef>,
    raw: Arc<Value>,
) -> EngineResult<()> {
    let installed = router
        .ask_all(|done| ShardMsg::InstallMachine {
            def: def.clone(),
            raw_definition: raw.clone(),
            done,
        })
        .await?;
    installed.into_iter().try_for_each(|r| r.map(|_| ()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    type Installed = Arc<Mutex<Vec<Arc<MachineDef>>>>;

    /// A shard on its own thread that refuses its first `refusals`
    /// installs (a group without a leader) and keeps what it installs.
    fn fake_shard(mut refusals: usize, installed: Installed) -> flume::Sender<ShardMsg> {
        let (tx, rx) = flume::unbounded::<ShardMsg>();
        std::thread::spawn(move || {
            while let Ok(msg) = rx.recv() {
                match msg {
                    ShardMsg::InstallMachine { def, done, .. } if refusals > 0 => {
                        refusals -= 1;
                        let _ = done.send(Err(EngineError::new(
                            ErrorCode::WalIoError,
                            format!("no leader for {}", def.machine),
                        )));
                    }
                    ShardMsg::InstallMachine { def, done, .. } => {
                        let mut kept = installed.lock().unwrap();
                        let new = !kept.iter().any(|d| d.checksum == def.checksum);
                        if new {
                            kept.push(def);
                        }
                        let _ = done.send(Ok(new));
                    }
                    ShardMsg::Machines { known, done } => {
                        let defs = installed
                            .lock()
                            .unwrap()
                            .iter()
                            .filter(|d| !known.contains(&(d.machine.clone(), d.version)))
                            .cloned()
                            .collect();
                        let _ = done.send(Ok(shards::shard::MachinesPage {
                            defs,
                            complete: true,
                        }));
                    }
                    _ => {}
                }
            }
        });
        tx
    }

    #[test]
    fn a_cluster_put_refused_by_one_group_is_completed_by_its_retry() {
        let (first, second): (Installed, Installed) = Default::default();
        let router = Router::new(vec![
            fake_shard(0, first.clone()),
            fake_shard(1, second.clone()),
        ]);
        let catalog = Catalog::new(0, true);
        let def = json!({"states": ["a"], "initial": "a", "transitions": []});
        futures_lite::future::block_on(async {
            let refused = catalog.put(&router, "m", 1, &def).await;
            assert_eq!(refused.unwrap_err().code, ErrorCode::WalIoError);
            // Shard 0's group has it now, which the catalog learns; the
            // retry must still reach the group that refused.
            catalog.put(&router, "m", 1, &def).await.unwrap();
        });
        assert_eq!(first.lock().unwrap().len(), 1);
        assert_eq!(second.lock().unwrap().len(), 1);
    }
}
