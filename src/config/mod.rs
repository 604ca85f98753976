//! Server configuration (docs/PROTOCOL.md §13): command-line flags, `RSTMDB_*`
//! environment variables and the rstmdb 0.3 YAML file, merged into one
//! validated [`Config`].
//!
//! Precedence is flag > environment > file > default. The file layout is
//! rstmdb's (`network`, `storage`, `auth`, `tls`, `compaction`, `metrics`,
//! `replication`); unknown sections and keys are ignored so a 0.3 file loads
//! unchanged. corestate-only settings live in an optional `corestate:`
//! section, where unknown keys *are* errors (it is our namespace, so a typo
//! there is never a compatibility concern).
//!
//! Deliberate differences from 0.3 (all stricter or more accepting, never
//! silently different):
//! * every unparsable value — file, environment or flag — is a
//!   [`ConfigError`] naming its key, instead of being ignored or defaulted;
//! * `storage.fsync_policy` accepts the tag form (`!every_n 100`), the map
//!   form (`{every_n: 100}`, PROTOCOL.md §15 #47), plain names and `"every_n:100"`;
//! * token hashes must be 64 hex characters; upper case is lower-cased;
//! * an empty environment variable counts as unset;
//! * `idle_timeout_secs` and `max_connections` are honoured (§15 #19);
//! * replication is not supported: a `primary` or `replica` role is refused;
//! * the HTTP/JSON API listener (corestate only): `--http-listen`,
//!   `CORESTATE_HTTP_LISTEN`, `corestate.http_listen`; an address, or `off`;
//! * a log format can be chosen (`--log-format`, `CORESTATE_LOG_FORMAT`,
//!   `corestate.log_format`): `text` (default) or `json`.
//!
//! Operations flags (corestate only; each overrides its rstmdb setting):
//! `--tls-cert`/`--tls-key` turn TLS on, `--tls-client-ca` turns on mTLS
//! (client certificates required, verified against that CA bundle),
//! `--metrics-bind` turns the metrics endpoint on, `--max-connections` and
//! `--idle-timeout-secs` set the connection limits.
//!
//! The file is parsed into a `serde_yaml::Value` tree and walked key by key,
//! so every type error carries the dotted path of the offending key.

use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde_yaml::{Mapping, Value};
use shards::wal::FsyncPolicy;

/// Default client listener (`network.bind_addr`).
pub const BIND_ADDR_DEFAULT: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 7401));
/// Default metrics listener (`metrics.bind_addr`).
pub const METRICS_BIND_ADDR_DEFAULT: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(0, 0, 0, 0), 9090));
/// Default HTTP/JSON API listener (`corestate.http_listen`).
pub const HTTP_LISTEN_DEFAULT: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 7402));
/// The value of an address setting that turns its listener off.
pub const LISTEN_OFF: &str = "off";
/// Default data directory (`storage.data_dir`).
pub const DATA_DIR_DEFAULT: &str = "./data";

/// Fewest shards a server can run with.
pub const SHARDS_MIN: usize = 1;
/// Most shards a server can run with: a shard's id is the low bits of every
/// offset it writes (`shards::wal::offset`); one per core is the useful most.
pub const SHARDS_MAX: usize = shards::wal::offset::SHARDS_MAX;

/// Bytes in one `*_mb` unit: rstmdb's "MB" is a MiB.
pub const BYTES_PER_MB: u64 = 1024 * 1024;
/// Default WAL segment size (`storage.wal_segment_size_mb`).
pub const WAL_SEGMENT_SIZE_MB_DEFAULT: u64 = 64;
/// Smallest WAL segment size accepted.
pub const WAL_SEGMENT_SIZE_MB_MIN: u64 = 1;
/// Largest WAL segment size accepted.
pub const WAL_SEGMENT_SIZE_MB_MAX: u64 = 1024;

/// Default idle timeout (`network.idle_timeout_secs`); 0 disables it.
pub const IDLE_TIMEOUT_SECS_DEFAULT: u64 = 300;
/// Longest idle timeout accepted (30 days): keeps deadline arithmetic far
/// from overflow.
pub const IDLE_TIMEOUT_SECS_MAX: u64 = 30 * 24 * 60 * 60;

/// Default connection limit (`network.max_connections`).
pub const MAX_CONNECTIONS_DEFAULT: usize = 1000;
/// Largest connection limit accepted.
pub const MAX_CONNECTIONS_MAX: usize = 1_000_000;

/// Default per-connection pipelining limit (`corestate.max_inflight_requests_per_connection`).
pub const MAX_INFLIGHT_REQUESTS_PER_CONNECTION_DEFAULT: usize = 1024;
/// Largest per-connection pipelining limit accepted.
pub const MAX_INFLIGHT_REQUESTS_PER_CONNECTION_MAX: usize = 65_536;

/// Default limit on operations in one BATCH (`corestate.max_batch_ops`).
pub const MAX_BATCH_OPS_DEFAULT: usize = 100;
/// Largest BATCH operation limit accepted.
pub const MAX_BATCH_OPS_MAX: usize = 10_000;

/// Default bytes of unwritten answers one connection may hold
/// (`corestate.answer_buffer_per_connection_mb`).
pub const ANSWER_BUFFER_PER_CONNECTION_MB_DEFAULT: u64 = 16;
/// Default bytes of unwritten answers all connections together may hold
/// (`corestate.answer_buffer_total_mb`).
pub const ANSWER_BUFFER_TOTAL_MB_DEFAULT: u64 = 256;
/// Default bytes of requests one connection may have in flight
/// (`corestate.request_buffer_per_connection_mb`).
pub const REQUEST_BUFFER_PER_CONNECTION_MB_DEFAULT: u64 = 16;
/// Largest value accepted for the three buffer settings above (64 GiB).
pub const BUFFER_MB_MAX: u64 = 64 * 1024;

/// Default `compaction.events_threshold`.
pub const COMPACTION_EVENTS_THRESHOLD_DEFAULT: u64 = 10_000;
/// Default `compaction.size_threshold_mb`.
pub const COMPACTION_SIZE_THRESHOLD_MB_DEFAULT: u64 = 100;
/// Largest `compaction.size_threshold_mb` accepted (1 TiB).
pub const COMPACTION_SIZE_THRESHOLD_MB_MAX: u64 = 1024 * 1024;
/// Default `compaction.min_interval_secs`.
pub const COMPACTION_MIN_INTERVAL_SECS_DEFAULT: u64 = 60;
/// Largest `compaction.min_interval_secs` accepted (30 days).
pub const COMPACTION_MIN_INTERVAL_SECS_MAX: u64 = 30 * 24 * 60 * 60;

/// Length of a token hash: SHA-256 as hexadecimal.
pub const TOKEN_HASH_HEX_CHARS: usize = 64;
/// Largest config file read.
pub const CONFIG_FILE_SIZE_BYTES_MAX: u64 = 1024 * 1024;
/// Largest secrets file read (room for ~16,000 hashes).
pub const SECRETS_FILE_SIZE_BYTES_MAX: u64 = 1024 * 1024;

/// Every environment variable this module reads.
pub const ENV_VARS: &[&str] = &[
    "RSTMDB_CONFIG",
    "RSTMDB_BIND",
    "RSTMDB_IDLE_TIMEOUT",
    "RSTMDB_MAX_CONNECTIONS",
    "RSTMDB_DATA",
    "RSTMDB_WAL_SEGMENT_SIZE_MB",
    "RSTMDB_FSYNC_POLICY",
    "RSTMDB_MAX_MACHINE_VERSIONS",
    "RSTMDB_ALLOW_INSTANCE_RECREATE",
    "RSTMDB_ALLOW_FLUSH_ALL",
    "RSTMDB_AUTH_REQUIRED",
    "RSTMDB_AUTH_TOKEN_HASH",
    "RSTMDB_AUTH_SECRETS_FILE",
    "RSTMDB_TLS_ENABLED",
    "RSTMDB_TLS_CERT",
    "RSTMDB_TLS_KEY",
    "RSTMDB_TLS_REQUIRE_CLIENT_CERT",
    "RSTMDB_TLS_CLIENT_CA",
    "RSTMDB_COMPACT_ENABLED",
    "RSTMDB_COMPACT_EVENTS",
    "RSTMDB_COMPACT_SIZE_MB",
    "RSTMDB_COMPACT_INTERVAL",
    "RSTMDB_METRICS_ENABLED",
    "RSTMDB_METRICS_BIND",
    "RSTMDB_REPL_ROLE",
    "CORESTATE_SHARDS",
    "CORESTATE_FIRST_CORE",
    "CORESTATE_PIN_CORES",
    "CORESTATE_SPIN_BEFORE_PARK_US",
    "CORESTATE_LOG_FORMAT",
    "CORESTATE_HTTP_LISTEN",
];

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (the default, like rstmdb).
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl LogFormat {
    fn parse(key: &str, text: &str) -> Result<LogFormat, ConfigError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(ConfigError::new(
                key,
                format!("'{text}' is not a log format (expected text or json)"),
            )),
        }
    }
}

/// The validated server configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Client listener (`network.bind_addr`).
    pub bind: SocketAddr,
    /// Data directory (`storage.data_dir`).
    pub data_dir: PathBuf,
    /// Number of shards (`corestate.shards`), `SHARDS_MIN..=SHARDS_MAX`.
    pub shards: usize,
    /// Where the shards' executors run and how long they spin before
    /// parking (`corestate.first_core`, `corestate.pin_cores`,
    /// `corestate.spin_before_park_us`): see [`CorePlacement`].
    pub cores: CorePlacement,
    /// WAL durability (`storage.fsync_policy`).
    pub fsync: FsyncPolicy,
    /// WAL segment size, from `storage.wal_segment_size_mb`.
    pub wal_segment_size_bytes: u64,
    /// Versions kept per machine name; 0 = unlimited.
    pub max_machine_versions: u32,
    /// Whether a soft-deleted instance id may be created again.
    pub allow_instance_recreate: bool,
    /// Whether FLUSH_ALL is served.
    pub allow_flush_all: bool,
    /// Whether requests other than HELLO/AUTH/PING/BYE need AUTH first.
    pub auth_required: bool,
    /// Accepted token hashes: lower-case SHA-256 hex, de-duplicated, in
    /// the order file list, `RSTMDB_AUTH_TOKEN_HASH`, secrets file.
    pub auth_token_hashes: Vec<String>,
    /// Idle connection timeout; 0 disables it. See [`Config::idle_timeout`].
    pub idle_timeout_secs: u64,
    /// Concurrent client connections accepted.
    pub max_connections: usize,
    /// Requests read from one connection before its replies are written.
    pub max_inflight_requests_per_connection: usize,
    /// Operations accepted in one BATCH.
    pub max_batch_ops: usize,
    /// Bytes of answers one connection may have produced and not written.
    pub answer_buffer_per_connection_bytes: usize,
    /// The same for all connections together.
    pub answer_buffer_total_bytes: usize,
    /// Bytes of requests one connection may have read and not answered.
    pub request_buffer_per_connection_bytes: usize,
    /// `--salvage`: truncate a corrupt WAL at its first bad record instead
    /// of refusing to start.
    pub salvage: bool,
    /// Server TLS (§13.4); the certificate files are read by the TLS module.
    pub tls: TlsConfig,
    /// Prometheus endpoint (§13.6).
    pub metrics: MetricsConfig,
    /// HTTP/JSON API listener (`corestate.http_listen`); `None` when off.
    pub http_listen: Option<SocketAddr>,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// Automatic compaction (§11.11).
    pub compaction: CompactionConfig,
    /// The YAML file that was loaded, if any.
    pub config_file: Option<PathBuf>,
    /// This node's place in a replicated cluster (`corestate.cluster`);
    /// `None`: standalone.
    pub cluster: Option<ClusterConfig>,
}

/// `tls.*`: validated for presence only; files are read later.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    pub enabled: bool,
    /// PEM certificate chain.
    pub cert_path: Option<PathBuf>,
    /// PEM private key (PKCS#1, PKCS#8 or SEC1).
    pub key_path: Option<PathBuf>,
    /// mTLS: clients must present a certificate signed by `client_ca_path`.
    pub require_client_cert: bool,
    /// PEM CA bundle for client certificates.
    pub client_ca_path: Option<PathBuf>,
}

/// `metrics.*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    pub enabled: bool,
    pub bind_addr: SocketAddr,
}

/// `compaction.*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactionConfig {
    pub enabled: bool,
    /// Events since the last snapshot that trigger compaction; 0 disables.
    pub events_threshold: u64,
    /// WAL size that triggers compaction; 0 disables.
    pub size_threshold_mb: u64,
    /// Minimum time between automatic compactions.
    pub min_interval_secs: u64,
}

/// A configuration value that cannot be used; `key` names where it came
/// from: a dotted file key, an environment variable, a flag or a file path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}: {}", self.key, self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: BIND_ADDR_DEFAULT,
            data_dir: PathBuf::from(DATA_DIR_DEFAULT),
            shards: default_shards(),
            cores: CorePlacement::default(),
            fsync: FsyncPolicy::EveryWrite,
            wal_segment_size_bytes: WAL_SEGMENT_SIZE_MB_DEFAULT * BYTES_PER_MB,
            max_machine_versions: 0,
            allow_instance_recreate: true,
            allow_flush_all: false,
            auth_required: false,
            auth_token_hashes: Vec::new(),
            idle_timeout_secs: IDLE_TIMEOUT_SECS_DEFAULT,
            max_connections: MAX_CONNECTIONS_DEFAULT,
            max_inflight_requests_per_connection: MAX_INFLIGHT_REQUESTS_PER_CONNECTION_DEFAULT,
            max_batch_ops: MAX_BATCH_OPS_DEFAULT,
            answer_buffer_per_connection_bytes: (ANSWER_BUFFER_PER_CONNECTION_MB_DEFAULT
                * BYTES_PER_MB) as usize,
            answer_buffer_total_bytes: (ANSWER_BUFFER_TOTAL_MB_DEFAULT * BYTES_PER_MB) as usize,
            request_buffer_per_connection_bytes: (REQUEST_BUFFER_PER_CONNECTION_MB_DEFAULT
                * BYTES_PER_MB) as usize,
            salvage: false,
            tls: TlsConfig::default(),
            metrics: MetricsConfig {
                enabled: false,
                bind_addr: METRICS_BIND_ADDR_DEFAULT,
            },
            http_listen: Some(HTTP_LISTEN_DEFAULT),
            log_format: LogFormat::Text,
            compaction: CompactionConfig {
                enabled: true,
                events_threshold: COMPACTION_EVENTS_THRESHOLD_DEFAULT,
                size_threshold_mb: COMPACTION_SIZE_THRESHOLD_MB_DEFAULT,
                min_interval_secs: COMPACTION_MIN_INTERVAL_SECS_DEFAULT,
            },
            config_file: None,
            cluster: None,
        }
    }
}

impl Config {
    /// The idle timeout, or `None` when `idle_timeout_secs` is 0.
    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout_secs > 0).then(|| Duration::from_secs(self.idle_timeout_secs))
    }

    /// One line for the start-up log.
    pub fn summary(&self) -> String {
        let file = match &self.config_file {
            Some(path) => path.display().to_string(),
            None => "none".to_string(),
        };
        format!(
            "bind {}, data dir {}, {} shards, fsync {}, auth {}, tls {}, metrics {}, http {}, config file {}",
            self.bind,
            self.data_dir.display(),
            self.shards,
            self.fsync,
            if self.auth_required { "required" } else { "off" },
            if self.tls.enabled { "on" } else { "off" },
            if self.metrics.enabled {
                self.metrics.bind_addr.to_string()
            } else {
                "off".to_string()
            },
            match self.http_listen {
                Some(addr) => addr.to_string(),
                None => LISTEN_OFF.to_string(),
            },
            file,
        )
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}

/// Shards when none are configured: the CPUs this process may run on.
fn default_shards() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(SHARDS_MIN)
        .clamp(SHARDS_MIN, SHARDS_MAX)
}

/// Loads the configuration from the process's arguments and environment.
pub fn load() -> Result<Config, ConfigError> {
    // A non-UTF-8 value must not be mistaken for "unset".
    for name in ENV_VARS {
        if let Some(value) = std::env::var_os(name) {
            if value.to_str().is_none() {
                return Err(ConfigError::new(*name, "value is not valid UTF-8"));
            }
        }
    }
    let args: Vec<OsString> = std::env::args_os().collect();
    load_from(&args, &|name| std::env::var(name).ok())
}

/// Loads the configuration from `args` (including the program name) and
/// the environment lookup `env`. `--help`, `--version` and usage errors are
/// handled by clap, which prints and exits (0, or 2 for errors).
pub fn load_from(
    args: &[OsString],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let flags = match Flags::try_parse_from(args) {
        Ok(flags) => flags,
        Err(error) => error.exit(),
    };
    let env = |name: &str| env(name).filter(|value| !value.trim().is_empty());

    let mut draft = Draft {
        config: Config::default(),
        secrets_file: None,
    };
    let file = flags
        .config
        .clone()
        .or_else(|| env("RSTMDB_CONFIG").map(PathBuf::from));
    if let Some(path) = file {
        let root = read_yaml(&path)?;
        apply_file(&mut draft, &root, &path)?;
        draft.config.config_file = Some(path);
    }
    apply_env(&mut draft, &env)?;
    apply_flags(&mut draft, &flags)?;
    finish(draft)
}

/// The configuration while layers are applied, plus what only matters
/// until validation.
struct Draft {
    config: Config,
    /// Path of the auth secrets file and the key that set it.
    secrets_file: Option<(PathBuf, String)>,
}

// ---------------------------------------------------------------------------
// Cross-key validation (§13.3)
// ---------------------------------------------------------------------------

fn finish(draft: Draft) -> Result<Config, ConfigError> {
    let Draft {
        mut config,
        secrets_file,
    } = draft;

    if let Some((path, key)) = secrets_file {
        let text = read_text_capped(&path, SECRETS_FILE_SIZE_BYTES_MAX)
            .map_err(|m| ConfigError::new(&key, format!("{}: {m}", path.display())))?;
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let hash = normalise_token_hash(line).map_err(|m| {
                ConfigError::new(&key, format!("{} line {}: {m}", path.display(), index + 1))
            })?;
            config.auth_token_hashes.push(hash);
        }
    }
    let mut seen = std::collections::HashSet::new();
    config
        .auth_token_hashes
        .retain(|hash| seen.insert(hash.clone()));

    if config.auth_required && config.auth_token_hashes.is_empty() {
        return Err(ConfigError::new(
            "auth.required",
            "authentication is required but no token hashes are configured \
             (auth.token_hashes, RSTMDB_AUTH_TOKEN_HASH or auth.secrets_file)",
        ));
    }

    // Like 0.3, TLS settings are only checked when TLS is on.
    let tls = &config.tls;
    if tls.enabled {
        if tls.cert_path.is_none() {
            return Err(ConfigError::new(
                "tls.cert_path",
                "tls.enabled is true but no certificate path is set",
            ));
        }
        if tls.key_path.is_none() {
            return Err(ConfigError::new(
                "tls.key_path",
                "tls.enabled is true but no private key path is set",
            ));
        }
        if tls.require_client_cert && tls.client_ca_path.is_none() {
            return Err(ConfigError::new(
                "tls.client_ca_path",
                "tls.require_client_cert is true but no client CA path is set",
            ));
        }
    }
    Ok(config)
}

mod cluster;
mod env;
mod file;
mod flags;
mod placement;
mod values;

pub use cluster::{ClusterConfig, CLUSTER_MEMBERS_MAX, CLUSTER_TOKEN_CHARS_MIN};
use env::apply_env;
use file::{apply_file, read_text_capped, read_yaml};
use flags::{apply_flags, Flags};
pub use placement::{
    CorePlacement, FIRST_CORE_MAX, SPIN_BEFORE_PARK_US_DURABLE_DEFAULT, SPIN_BEFORE_PARK_US_MAX,
    SPIN_BEFORE_PARK_US_RELAXED_DEFAULT,
};
use values::*;

#[cfg(test)]
mod tests;
