//! `corestate.cluster`: this node's place in a replicated cluster (issue
//! 14). Absent: the node runs standalone, exactly as without it.
//!
//! ```yaml
//! corestate:
//!   cluster:
//!     node_id: 1
//!     name: orders              # every member's must match
//!     token: "a long secret"    # or token_file: /run/secrets/cluster
//!     peer_listen: 0.0.0.0:7501 # the port other members call
//!     members:                # every member's peer address
//!       - {id: 1, peer: 10.0.0.1:7501}
//!       - {id: 2, peer: 10.0.0.2:7501}
//!       - {id: 3, peer: 10.0.0.3:7501}
//!     snapshot_every_entries: 10000   # optional
//!     snapshot_log_growth_percent: 100 # optional
//!     log_kept_behind_snapshot_entries: 10000 # optional
//!     election_timeout_ms: 150        # optional
//!     in_doubt_resolve_after_ms: 10000 # optional
//!     balance_leaders: true           # optional: spread groups' leaders
//!     join: false                     # true: wait to be added (below)
//!     tls:                            # optional: peer links inside TLS
//!       cert_path: /etc/corestate/node-1.pem   # this node's chain
//!       key_path: /etc/corestate/node-1.key
//!       peer_ca_path: /etc/corestate/ca.pem    # trusted for the peers'
//!       require_client_cert: true     # optional (true): mTLS between peers
//!       client_ca_path: ...           # optional: peer_ca_path
//!       server_name: address          # optional: or one DNS name
//! ```
//!
//! Every member lists the same members; each shard is a Raft group with a
//! replica on each. A member whose log is empty starts its groups with
//! that membership (openraft allows every member to do so with the same
//! list) — unless `join` is set: a node started to join a running
//! cluster waits until CLUSTER_ADD_NODE adds it (its list names the
//! running members, for their addresses, and itself).

use std::collections::BTreeMap;

use corestate_raft::net::{PeerServerName, PeerTlsFiles};

use super::file::read_text_capped;
use super::values::{kind, parse_addr, type_error};
use super::*;

/// Members a cluster may list.
pub const CLUSTER_MEMBERS_MAX: usize = 7;
/// Shortest cluster token accepted: a guessable token lets anyone on the
/// network join the groups.
pub const CLUSTER_TOKEN_CHARS_MIN: usize = 16;
/// Committed entries between a group's snapshots, at least, unless
/// configured (the log's size also paces them: below). Each
/// snapshot lets the log before it be deleted; a member that falls further
/// behind than the log kept catches up from the snapshot.
pub const CLUSTER_SNAPSHOT_EVERY_ENTRIES_DEFAULT: u64 = 10_000;
/// Fewest entries between snapshots that may be configured: a snapshot is
/// the whole shard state, too costly to write every few entries.
pub const CLUSTER_SNAPSHOT_EVERY_ENTRIES_MIN: u64 = 100;
/// A group's next snapshot also waits until the log since its last one is
/// this share of that snapshot's size, unless configured: a snapshot is
/// the whole state, so its cost per write stays bounded however large the
/// state (`corestate_raft::shard_group::SnapshotPacing`). 0: entries only.
pub const CLUSTER_SNAPSHOT_LOG_GROWTH_PERCENT_DEFAULT: u64 = 100;
/// The most that may be configured (a log 100 times the state).
pub const CLUSTER_SNAPSHOT_LOG_GROWTH_PERCENT_MAX: u64 = 10_000;
/// Entries a member's log keeps behind its newest snapshot unless
/// configured: how far back WAL_READ and a watch's `from_offset` reach on
/// a node beyond the entries since that snapshot (a node that restarted
/// reads back to its snapshot only), and how far behind a follower may
/// fall and still catch up from the log rather than a snapshot. Disk: this
/// many entries more than the ones since the snapshot.
pub const CLUSTER_LOG_KEPT_BEHIND_SNAPSHOT_ENTRIES_DEFAULT: u64 = 10_000;
/// The most that may be configured: a member's index of its log's entries
/// costs memory per entry (`shards::shard::member_read` indexes up to
/// about a million entries back).
pub const CLUSTER_LOG_KEPT_BEHIND_SNAPSHOT_ENTRIES_MAX: u64 = 1_000_000;
/// How long a follower waits without hearing from a leader before it
/// stands for election, unless configured (the shortest wait; each
/// election draws one between it and twice it). Heartbeats go out every
/// third of it.
pub const CLUSTER_ELECTION_TIMEOUT_MS_DEFAULT: u64 = 150;
/// How long a cross-shard batch part may stay prepared-but-undecided on a
/// group's leader before the node settles it with the batch's decider
/// (presumed abort), unless configured (`shards::coordinator`). Its
/// coordinator decides within a few forwarded round trips (each at most
/// 3 s) unless its node died: settling sooner would abort batches about to
/// commit; later keeps the part's instances locked longer after a crash.
pub const CLUSTER_IN_DOUBT_RESOLVE_AFTER_MS_DEFAULT: u64 = 10_000;
pub const CLUSTER_IN_DOUBT_RESOLVE_AFTER_MS_MIN: u64 = 100;
pub const CLUSTER_IN_DOUBT_RESOLVE_AFTER_MS_MAX: u64 = 3_600_000;
/// The configurable range of the election timeout: below the minimum a
/// busy machine's scheduling pauses start elections; above the maximum a
/// lost leader leaves its groups without one for minutes.
pub const CLUSTER_ELECTION_TIMEOUT_MS_MIN: u64 = 30;
pub const CLUSTER_ELECTION_TIMEOUT_MS_MAX: u64 = 60_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub node_id: u64,
    pub name: String,
    pub token: String,
    pub peer_listen: SocketAddr,
    /// Every member's peer address (its own included).
    pub members: BTreeMap<u64, SocketAddr>,
    /// Committed entries between a group's snapshots, at least.
    pub snapshot_every_entries: u64,
    /// The log since a group's snapshot, in percent of that snapshot's
    /// size, before the next one.
    pub snapshot_log_growth_percent: u64,
    /// Entries the log keeps behind its newest snapshot.
    pub log_kept_behind_snapshot_entries: u64,
    /// The shortest wait without a leader before a member stands for
    /// election.
    pub election_timeout_ms: u64,
    /// How long a batch part may stay in doubt before it is settled.
    pub in_doubt_resolve_after_ms: u64,
    /// Move each group's lead to its preferred node (`balance.rs` of the
    /// Raft crate).
    pub balance_leaders: bool,
    /// Start with empty groups and wait to be added by a running
    /// cluster's CLUSTER_ADD_NODE, instead of starting the groups.
    pub join: bool,
    /// Peer links inside TLS (`None`: plain TCP).
    pub tls: Option<PeerTlsFiles>,
}

fn field<'a>(map: &'a Mapping, path: &str, key: &str) -> Option<(String, &'a Value)> {
    match map.get(key) {
        None | Some(Value::Null) => None,
        Some(v) => Some((format!("{path}.{key}"), v)),
    }
}

fn required<'a>(
    map: &'a Mapping,
    path: &str,
    key: &str,
) -> Result<(String, &'a Value), ConfigError> {
    field(map, path, key)
        .ok_or_else(|| ConfigError::new(format!("{path}.{key}"), "required in a cluster"))
}

fn as_str<'a>(key: &str, value: &'a Value) -> Result<&'a str, ConfigError> {
    value
        .as_str()
        .ok_or_else(|| type_error(key, "a string", value))
}

fn as_id(key: &str, value: &Value) -> Result<u64, ConfigError> {
    match value.as_u64() {
        Some(id) if id >= 1 => Ok(id),
        _ => Err(type_error(key, "a node id (an integer ≥ 1)", value)),
    }
}

fn as_map<'a>(key: &str, value: &'a Value) -> Result<&'a Mapping, ConfigError> {
    match value {
        Value::Mapping(m) => Ok(m),
        other => Err(type_error(key, "a mapping", other)),
    }
}

fn check_keys(map: &Mapping, path: &str, known: &[&str]) -> Result<(), ConfigError> {
    for k in map.keys() {
        let name = k.as_str().map_or_else(|| format!("{k:?}"), str::to_string);
        if !known.contains(&name.as_str()) {
            return Err(ConfigError::new(
                format!("{path}.{name}"),
                format!("unknown cluster setting (expected {})", known.join(", ")),
            ));
        }
    }
    Ok(())
}

/// `corestate.cluster` from the file's root, if present.
pub(super) fn from_yaml(root: &Value) -> Result<Option<ClusterConfig>, ConfigError> {
    const PATH: &str = "corestate.cluster";
    let Some(value) = root.get("corestate").and_then(|c| c.get("cluster")) else {
        return Ok(None);
    };
    if value.is_null() {
        return Ok(None);
    }
    let map = as_map(PATH, value)?;
    check_keys(
        map,
        PATH,
        &[
            "node_id",
            "name",
            "token",
            "token_file",
            "peer_listen",
            "members",
            "snapshot_every_entries",
            "snapshot_log_growth_percent",
            "log_kept_behind_snapshot_entries",
            "election_timeout_ms",
            "in_doubt_resolve_after_ms",
            "balance_leaders",
            "join",
            "tls",
        ],
    )?;
    let (key, v) = required(map, PATH, "node_id")?;
    let node_id = as_id(&key, v)?;
    let (key, v) = required(map, PATH, "name")?;
    let name = as_str(&key, v)?.to_string();
    if name.is_empty() {
        return Err(ConfigError::new(key, "must not be empty"));
    }
    let token = match (field(map, PATH, "token"), field(map, PATH, "token_file")) {
        (Some((key, v)), None) => (key.clone(), as_str(&key, v)?.to_string()),
        (None, Some((key, v))) => {
            let path = PathBuf::from(as_str(&key, v)?);
            let text = read_text_capped(&path, SECRETS_FILE_SIZE_BYTES_MAX)
                .map_err(|m| ConfigError::new(&key, format!("{}: {m}", path.display())))?;
            (key, text.trim().to_string())
        }
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                format!("{PATH}.token"),
                "give token or token_file, not both",
            ))
        }
        (None, None) => {
            return Err(ConfigError::new(
                format!("{PATH}.token"),
                "required in a cluster (or token_file)",
            ))
        }
    };
    if token.1.chars().count() < CLUSTER_TOKEN_CHARS_MIN {
        return Err(ConfigError::new(
            token.0,
            format!("shorter than {CLUSTER_TOKEN_CHARS_MIN} characters"),
        ));
    }
    let (key, v) = required(map, PATH, "peer_listen")?;
    let peer_listen = parse_addr(&key, as_str(&key, v)?)?;
    let (key, v) = required(map, PATH, "members")?;
    let Value::Sequence(list) = v else {
        return Err(type_error(key, "a list of members", v));
    };
    let mut members = BTreeMap::new();
    for (i, item) in list.iter().enumerate() {
        let path = format!("{key}[{i}]");
        let m = as_map(&path, item)?;
        check_keys(m, &path, &["id", "peer"])?;
        let (k, v) = required(m, &path, "id")?;
        let id = as_id(&k, v)?;
        let (k, v) = required(m, &path, "peer")?;
        let peer = parse_addr(&k, as_str(&k, v)?)?;
        if members.insert(id, peer).is_some() {
            return Err(ConfigError::new(path, format!("node id {id} listed twice")));
        }
    }
    if members.is_empty() || members.len() > CLUSTER_MEMBERS_MAX {
        return Err(ConfigError::new(
            key,
            format!(
                "a cluster lists 1 to {CLUSTER_MEMBERS_MAX} members, found {} ({})",
                members.len(),
                kind(v)
            ),
        ));
    }
    if !members.contains_key(&node_id) {
        return Err(ConfigError::new(
            format!("{PATH}.node_id"),
            format!("node {node_id} is not among the members"),
        ));
    }
    let snapshot_every_entries = bounded(
        map,
        PATH,
        "snapshot_every_entries",
        CLUSTER_SNAPSHOT_EVERY_ENTRIES_DEFAULT,
        CLUSTER_SNAPSHOT_EVERY_ENTRIES_MIN..=u64::MAX,
    )?;
    let snapshot_log_growth_percent = bounded(
        map,
        PATH,
        "snapshot_log_growth_percent",
        CLUSTER_SNAPSHOT_LOG_GROWTH_PERCENT_DEFAULT,
        0..=CLUSTER_SNAPSHOT_LOG_GROWTH_PERCENT_MAX,
    )?;
    let log_kept_behind_snapshot_entries = bounded(
        map,
        PATH,
        "log_kept_behind_snapshot_entries",
        CLUSTER_LOG_KEPT_BEHIND_SNAPSHOT_ENTRIES_DEFAULT,
        0..=CLUSTER_LOG_KEPT_BEHIND_SNAPSHOT_ENTRIES_MAX,
    )?;
    let election_timeout_ms = bounded(
        map,
        PATH,
        "election_timeout_ms",
        CLUSTER_ELECTION_TIMEOUT_MS_DEFAULT,
        CLUSTER_ELECTION_TIMEOUT_MS_MIN..=CLUSTER_ELECTION_TIMEOUT_MS_MAX,
    )?;
    let in_doubt_resolve_after_ms = bounded(
        map,
        PATH,
        "in_doubt_resolve_after_ms",
        CLUSTER_IN_DOUBT_RESOLVE_AFTER_MS_DEFAULT,
        CLUSTER_IN_DOUBT_RESOLVE_AFTER_MS_MIN..=CLUSTER_IN_DOUBT_RESOLVE_AFTER_MS_MAX,
    )?;
    let join = flag(map, PATH, "join", false)?;
    let balance_leaders = flag(map, PATH, "balance_leaders", true)?;
    let tls = match field(map, PATH, "tls") {
        None => None,
        Some((key, v)) => Some(peer_tls(&key, as_map(&key, v)?)?),
    };
    Ok(Some(ClusterConfig {
        node_id,
        name,
        token: token.1,
        peer_listen,
        members,
        snapshot_every_entries,
        snapshot_log_growth_percent,
        log_kept_behind_snapshot_entries,
        election_timeout_ms,
        in_doubt_resolve_after_ms,
        balance_leaders,
        join,
        tls,
    }))
}

/// `corestate.cluster.tls`: the files of this node's peer TLS. One
/// certificate serves the listener and, under mTLS, the dialers, so it
/// must allow both server and client authentication.
fn peer_tls(path: &str, map: &Mapping) -> Result<PeerTlsFiles, ConfigError> {
    check_keys(
        map,
        path,
        &[
            "cert_path",
            "key_path",
            "peer_ca_path",
            "require_client_cert",
            "client_ca_path",
            "server_name",
        ],
    )?;
    let file = |name: &str| -> Result<Option<PathBuf>, ConfigError> {
        match field(map, path, name) {
            None => Ok(None),
            Some((key, v)) => Ok(Some(PathBuf::from(as_str(&key, v)?))),
        }
    };
    let must = |name: &str| {
        file(name)?.ok_or_else(|| ConfigError::new(format!("{path}.{name}"), "required with tls"))
    };
    let peer_ca_path = must("peer_ca_path")?;
    let require_client_cert = flag(map, path, "require_client_cert", true)?;
    let server_name = match field(map, path, "server_name") {
        None => PeerServerName::AddressHost,
        Some((key, v)) => match as_str(&key, v)? {
            "address" => PeerServerName::AddressHost,
            "" => return Err(ConfigError::new(key, "must not be empty")),
            name => PeerServerName::Fixed(name.to_string()),
        },
    };
    Ok(PeerTlsFiles {
        cert_path: must("cert_path")?,
        key_path: must("key_path")?,
        require_client_cert,
        client_ca_path: Some(file("client_ca_path")?.unwrap_or_else(|| peer_ca_path.clone())),
        peer_ca_path,
        server_name,
    })
}

/// The integer setting `key` of `map` within `range`, `default` when absent.
/// `path.key` as true or false, `default` when absent.
fn flag(map: &Mapping, path: &str, key: &str, default: bool) -> Result<bool, ConfigError> {
    match field(map, path, key) {
        None => Ok(default),
        Some((key, v)) => v
            .as_bool()
            .ok_or_else(|| type_error(key, "true or false", v)),
    }
}

fn bounded(
    map: &Mapping,
    path: &str,
    key: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    let Some((key, v)) = field(map, path, key) else {
        return Ok(default);
    };
    match v.as_u64() {
        Some(n) if range.contains(&n) => Ok(n),
        _ if *range.end() == u64::MAX => Err(type_error(
            key,
            &format!("an integer ≥ {}", range.start()),
            v,
        )),
        _ => Err(type_error(
            key,
            &format!("an integer from {} to {}", range.start(), range.end()),
            v,
        )),
    }
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod tests;
