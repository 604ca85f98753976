//! Server configuration (spec §13): command-line flags, `RSTMDB_*`
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
//!   form (`{every_n: 100}`, spec §15 #47), plain names and `"every_n:100"`;
//! * token hashes must be 64 hex characters; upper case is lower-cased;
//! * an empty environment variable counts as unset;
//! * `idle_timeout_secs` and `max_connections` are honoured (§15 #19);
//! * replication is not supported: a `primary` or `replica` role is refused;
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
/// Default data directory (`storage.data_dir`).
pub const DATA_DIR_DEFAULT: &str = "./data";

/// Fewest shards a server can run with.
pub const SHARDS_MIN: usize = 1;
/// Most shards a server can run with (one per core; more is never useful).
pub const SHARDS_MAX: usize = 64;

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
    "CORESTATE_LOG_FORMAT",
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
    /// `--salvage`: truncate a corrupt WAL at its first bad record instead
    /// of refusing to start.
    pub salvage: bool,
    /// Server TLS (§13.4); the certificate files are read by the TLS module.
    pub tls: TlsConfig,
    /// Prometheus endpoint (§13.6).
    pub metrics: MetricsConfig,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// Automatic compaction (§11.11).
    pub compaction: CompactionConfig,
    /// The YAML file that was loaded, if any.
    pub config_file: Option<PathBuf>,
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
            salvage: false,
            tls: TlsConfig::default(),
            metrics: MetricsConfig {
                enabled: false,
                bind_addr: METRICS_BIND_ADDR_DEFAULT,
            },
            log_format: LogFormat::Text,
            compaction: CompactionConfig {
                enabled: true,
                events_threshold: COMPACTION_EVENTS_THRESHOLD_DEFAULT,
                size_threshold_mb: COMPACTION_SIZE_THRESHOLD_MB_DEFAULT,
                min_interval_secs: COMPACTION_MIN_INTERVAL_SECS_DEFAULT,
            },
            config_file: None,
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
            "bind {}, data dir {}, {} shards, fsync {}, auth {}, tls {}, metrics {}, config file {}",
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

/// Command-line flags. Values are taken as text and parsed here so a bad
/// value is a `ConfigError` like any other.
#[derive(Parser, Debug)]
#[command(
    name = "corestate",
    version,
    about = "A thread-per-core state machine database speaking RCP (rstmdb 0.3 compatible)",
    after_help = "Environment: the RSTMDB_* variables of rstmdb 0.3 (RSTMDB_BIND, RSTMDB_DATA, \
                  RSTMDB_FSYNC_POLICY, RSTMDB_AUTH_*, RSTMDB_TLS_*, RSTMDB_COMPACT_*, \
                  RSTMDB_METRICS_*, ...) and CORESTATE_SHARDS. Flags override the environment, \
                  which overrides the config file."
)]
struct Flags {
    /// YAML configuration file in the rstmdb layout [env: RSTMDB_CONFIG]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Client listen address, e.g. 0.0.0.0:7401 [env: RSTMDB_BIND]
    #[arg(long, value_name = "ADDR")]
    bind: Option<String>,
    /// Data directory [env: RSTMDB_DATA]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Number of shards, 1..=64 [env: CORESTATE_SHARDS]
    #[arg(long, value_name = "N")]
    shards: Option<String>,
    /// every_write | every_n:N | every_ms:N | never [env: RSTMDB_FSYNC_POLICY]
    #[arg(long, value_name = "POLICY")]
    fsync: Option<String>,
    /// Truncate a corrupt WAL at the first bad record instead of refusing to start
    #[arg(long)]
    salvage: bool,
    /// PEM certificate chain; with --tls-key turns TLS on [env: RSTMDB_TLS_CERT]
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#1, PKCS#8 or SEC1) [env: RSTMDB_TLS_KEY]
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// PEM CA bundle; clients must present a certificate it signed (mTLS) [env: RSTMDB_TLS_CLIENT_CA]
    #[arg(long, value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,
    /// Serve Prometheus metrics on this address, e.g. 127.0.0.1:9090 [env: RSTMDB_METRICS_BIND]
    #[arg(long, value_name = "ADDR")]
    metrics_bind: Option<String>,
    /// Concurrent client connections accepted [env: RSTMDB_MAX_CONNECTIONS]
    #[arg(long, value_name = "N")]
    max_connections: Option<String>,
    /// Close connections idle this long; 0 disables [env: RSTMDB_IDLE_TIMEOUT]
    #[arg(long, value_name = "SECS")]
    idle_timeout_secs: Option<String>,
    /// text | json [env: CORESTATE_LOG_FORMAT]
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
}

/// The configuration while layers are applied, plus what only matters
/// until validation.
struct Draft {
    config: Config,
    /// Path of the auth secrets file and the key that set it.
    secrets_file: Option<(PathBuf, String)>,
}

// ---------------------------------------------------------------------------
// YAML file
// ---------------------------------------------------------------------------

fn read_yaml(path: &Path) -> Result<Value, ConfigError> {
    let key = path.display().to_string();
    let text = read_text_capped(path, CONFIG_FILE_SIZE_BYTES_MAX)
        .map_err(|message| ConfigError::new(&key, message))?;
    let mut root: Value = serde_yaml::from_str(&text)
        .map_err(|e| ConfigError::new(&key, format!("not valid YAML: {e}")))?;
    root.apply_merge()
        .map_err(|e| ConfigError::new(&key, format!("bad YAML merge key: {e}")))?;
    match root {
        Value::Null | Value::Mapping(_) => Ok(root),
        other => Err(ConfigError::new(
            key,
            format!("expected a mapping of sections, found {}", kind(&other)),
        )),
    }
}

/// Reads a whole UTF-8 file of at most `size_bytes_max` bytes.
fn read_text_capped(path: &Path, size_bytes_max: u64) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut text = String::new();
    file.take(size_bytes_max + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read: {e}"))?;
    if text.len() as u64 > size_bytes_max {
        return Err(format!("larger than {size_bytes_max} bytes"));
    }
    Ok(text)
}

/// One top-level section of the file; absent and `null` read as empty.
struct Section<'a> {
    name: &'static str,
    map: Option<&'a Mapping>,
}

impl<'a> Section<'a> {
    fn of(root: &'a Value, name: &'static str) -> Result<Self, ConfigError> {
        let map = match root.get(name) {
            None | Some(Value::Null) => None,
            Some(Value::Mapping(map)) => Some(map),
            Some(other) => {
                return Err(ConfigError::new(
                    name,
                    format!("expected a mapping, found {}", kind(other)),
                ))
            }
        };
        Ok(Section { name, map })
    }

    /// The value at `key` with its dotted path; `null` counts as absent.
    fn get(&self, key: &str) -> Option<(String, &'a Value)> {
        match self.map?.get(key) {
            None | Some(Value::Null) => None,
            Some(value) => Some((format!("{}.{key}", self.name), value)),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        self.get(key)
            .map(|(path, value)| match value {
                Value::Bool(b) => Ok(*b),
                other => Err(type_error(path, "a boolean (true or false)", other)),
            })
            .transpose()
    }

    fn u64(&self, key: &str) -> Result<Option<(String, u64)>, ConfigError> {
        self.get(key)
            .map(|(path, value)| match value {
                Value::Number(n) => match n.as_u64() {
                    Some(n) => Ok((path, n)),
                    None => Err(ConfigError::new(
                        path,
                        format!("expected a non-negative integer, found {n}"),
                    )),
                },
                other => Err(type_error(path, "a non-negative integer", other)),
            })
            .transpose()
    }

    fn string(&self, key: &str) -> Result<Option<(String, &'a str)>, ConfigError> {
        self.get(key)
            .map(|(path, value)| match value {
                Value::String(s) => Ok((path, s.as_str())),
                other => Err(type_error(path, "a string", other)),
            })
            .transpose()
    }

    fn path(&self, key: &str) -> Result<Option<(String, PathBuf)>, ConfigError> {
        Ok(self.string(key)?.map(|(path, s)| (path, PathBuf::from(s))))
    }

    fn addr(&self, key: &str) -> Result<Option<SocketAddr>, ConfigError> {
        self.string(key)?
            .map(|(path, s)| parse_addr(&path, s))
            .transpose()
    }

    /// Keys present in the section other than `known`.
    fn unknown_keys(&self, known: &[&str]) -> Vec<String> {
        let Some(map) = self.map else {
            return Vec::new();
        };
        map.keys()
            .map(|k| match k {
                Value::String(s) => s.clone(),
                other => format!("{other:?}"),
            })
            .filter(|k| !known.contains(&k.as_str()))
            .collect()
    }
}

fn apply_file(draft: &mut Draft, root: &Value, path: &Path) -> Result<(), ConfigError> {
    let c = &mut draft.config;

    let network = Section::of(root, "network")?;
    if let Some(addr) = network.addr("bind_addr")? {
        c.bind = addr;
    }
    if let Some((key, secs)) = network.u64("idle_timeout_secs")? {
        c.idle_timeout_secs = check_idle_timeout(&key, secs)?;
    }
    if let Some((key, n)) = network.u64("max_connections")? {
        c.max_connections = check_range(&key, n, 1, MAX_CONNECTIONS_MAX as u64)? as usize;
    }

    let storage = Section::of(root, "storage")?;
    if let Some((_, dir)) = storage.path("data_dir")? {
        c.data_dir = dir;
    }
    if let Some((key, mb)) = storage.u64("wal_segment_size_mb")? {
        c.wal_segment_size_bytes = wal_segment_size_bytes(&key, mb)?;
    }
    if let Some((key, value)) = storage.get("fsync_policy") {
        c.fsync = fsync_from_yaml(&key, value)?;
    }
    if let Some((key, n)) = storage.u64("max_machine_versions")? {
        c.max_machine_versions = check_range(&key, n, 0, u32::MAX as u64)? as u32;
    }
    if let Some(b) = storage.bool("allow_instance_recreate")? {
        c.allow_instance_recreate = b;
    }
    if let Some(b) = storage.bool("allow_flush_all")? {
        c.allow_flush_all = b;
    }

    let auth = Section::of(root, "auth")?;
    if let Some(b) = auth.bool("required")? {
        c.auth_required = b;
    }
    if let Some((key, value)) = auth.get("token_hashes") {
        let Value::Sequence(items) = value else {
            return Err(type_error(key, "a list of hex strings", value));
        };
        for (i, item) in items.iter().enumerate() {
            let item_key = format!("{key}[{i}]");
            let Value::String(hash) = item else {
                return Err(type_error(item_key, "a hex string", item));
            };
            c.auth_token_hashes
                .push(normalise_token_hash(hash).map_err(|m| ConfigError::new(item_key, m))?);
        }
    }
    if let Some((key, file)) = auth.path("secrets_file")? {
        draft.secrets_file = Some((file, key));
    }

    let tls = Section::of(root, "tls")?;
    if let Some(b) = tls.bool("enabled")? {
        c.tls.enabled = b;
    }
    if let Some((_, p)) = tls.path("cert_path")? {
        c.tls.cert_path = Some(p);
    }
    if let Some((_, p)) = tls.path("key_path")? {
        c.tls.key_path = Some(p);
    }
    if let Some(b) = tls.bool("require_client_cert")? {
        c.tls.require_client_cert = b;
    }
    if let Some((_, p)) = tls.path("client_ca_path")? {
        c.tls.client_ca_path = Some(p);
    }

    let compaction = Section::of(root, "compaction")?;
    if let Some(b) = compaction.bool("enabled")? {
        c.compaction.enabled = b;
    }
    if let Some((_, n)) = compaction.u64("events_threshold")? {
        c.compaction.events_threshold = n;
    }
    if let Some((key, mb)) = compaction.u64("size_threshold_mb")? {
        c.compaction.size_threshold_mb =
            check_range(&key, mb, 0, COMPACTION_SIZE_THRESHOLD_MB_MAX)?;
    }
    if let Some((key, secs)) = compaction.u64("min_interval_secs")? {
        c.compaction.min_interval_secs =
            check_range(&key, secs, 0, COMPACTION_MIN_INTERVAL_SECS_MAX)?;
    }

    let metrics = Section::of(root, "metrics")?;
    if let Some(b) = metrics.bool("enabled")? {
        c.metrics.enabled = b;
    }
    if let Some(addr) = metrics.addr("bind_addr")? {
        c.metrics.bind_addr = addr;
    }

    let replication = Section::of(root, "replication")?;
    if let Some((key, role)) = replication.string("role")? {
        check_replication_role(&key, role)?;
    }

    let corestate = Section::of(root, "corestate")?;
    if let Some(unknown) = corestate
        .unknown_keys(&[
            "shards",
            "max_inflight_requests_per_connection",
            "max_batch_ops",
            "log_format",
        ])
        .first()
    {
        return Err(ConfigError::new(
            format!("corestate.{unknown}"),
            format!(
                "unknown corestate setting in {} (expected shards, \
                 max_inflight_requests_per_connection, max_batch_ops or log_format)",
                path.display()
            ),
        ));
    }
    if let Some((key, n)) = corestate.u64("shards")? {
        c.shards = check_shards(&key, n)?;
    }
    if let Some((key, n)) = corestate.u64("max_inflight_requests_per_connection")? {
        c.max_inflight_requests_per_connection =
            check_range(&key, n, 1, MAX_INFLIGHT_REQUESTS_PER_CONNECTION_MAX as u64)? as usize;
    }
    if let Some((key, n)) = corestate.u64("max_batch_ops")? {
        c.max_batch_ops = check_range(&key, n, 1, MAX_BATCH_OPS_MAX as u64)? as usize;
    }
    if let Some((key, format)) = corestate.string("log_format")? {
        c.log_format = LogFormat::parse(&key, format)?;
    }
    Ok(())
}

/// `storage.fsync_policy` in any of its spellings: a plain or `every_n:N`
/// string, the YAML tag form `!every_n N` (what 0.3 requires), or the
/// one-entry map form `{every_n: N}` (what the 0.3 docs show).
fn fsync_from_yaml(key: &str, value: &Value) -> Result<FsyncPolicy, ConfigError> {
    match value {
        Value::String(s) => parse_fsync(key, s),
        Value::Tagged(tagged) => {
            let tag = tagged.tag.to_string();
            let name = tag.strip_prefix('!').unwrap_or(&tag);
            fsync_variant(key, name, &tagged.value)
        }
        Value::Mapping(map) if map.len() == 1 => match map.iter().next() {
            Some((Value::String(name), argument)) => fsync_variant(key, name, argument),
            _ => Err(ConfigError::new(
                key,
                "expected a policy name as the map key",
            )),
        },
        other => Err(type_error(
            key,
            "every_write, never, !every_n N, !every_ms N or {every_n: N}",
            other,
        )),
    }
}

/// A policy given as a name and an argument (tag or map form).
fn fsync_variant(key: &str, name: &str, argument: &Value) -> Result<FsyncPolicy, ConfigError> {
    let text = match argument {
        Value::Null => name.to_string(),
        Value::Number(n) => format!("{name}:{n}"),
        Value::String(s) => format!("{name}:{s}"),
        other => return Err(type_error(key, "an integer argument", other)),
    };
    parse_fsync(key, &text)
}

// ---------------------------------------------------------------------------
// Environment and flags
// ---------------------------------------------------------------------------

fn apply_env(draft: &mut Draft, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
    let c = &mut draft.config;
    let var = |name: &'static str| env(name).map(|value| (name, value));

    if let Some((k, v)) = var("RSTMDB_BIND") {
        c.bind = parse_addr(k, &v)?;
    }
    if let Some((k, v)) = var("RSTMDB_IDLE_TIMEOUT") {
        c.idle_timeout_secs = check_idle_timeout(k, parse_u64(k, &v)?)?;
    }
    if let Some((k, v)) = var("RSTMDB_MAX_CONNECTIONS") {
        c.max_connections =
            check_range(k, parse_u64(k, &v)?, 1, MAX_CONNECTIONS_MAX as u64)? as usize;
    }
    if let Some((_, v)) = var("RSTMDB_DATA") {
        c.data_dir = PathBuf::from(v);
    }
    if let Some((k, v)) = var("RSTMDB_WAL_SEGMENT_SIZE_MB") {
        c.wal_segment_size_bytes = wal_segment_size_bytes(k, parse_u64(k, &v)?)?;
    }
    if let Some((k, v)) = var("RSTMDB_FSYNC_POLICY") {
        c.fsync = parse_fsync(k, &v)?;
    }
    if let Some((k, v)) = var("RSTMDB_MAX_MACHINE_VERSIONS") {
        c.max_machine_versions = check_range(k, parse_u64(k, &v)?, 0, u32::MAX as u64)? as u32;
    }
    if let Some((k, v)) = var("RSTMDB_ALLOW_INSTANCE_RECREATE") {
        c.allow_instance_recreate = parse_bool(k, &v)?;
    }
    if let Some((k, v)) = var("RSTMDB_ALLOW_FLUSH_ALL") {
        c.allow_flush_all = parse_bool(k, &v)?;
    }
    if let Some((k, v)) = var("RSTMDB_AUTH_REQUIRED") {
        c.auth_required = parse_bool(k, &v)?;
    }
    if let Some((k, v)) = var("RSTMDB_AUTH_TOKEN_HASH") {
        c.auth_token_hashes
            .push(normalise_token_hash(&v).map_err(|m| ConfigError::new(k, m))?);
    }
    if let Some((k, v)) = var("RSTMDB_AUTH_SECRETS_FILE") {
        draft.secrets_file = Some((PathBuf::from(v), k.to_string()));
    }
    if let Some((k, v)) = var("RSTMDB_TLS_ENABLED") {
        c.tls.enabled = parse_bool(k, &v)?;
    }
    if let Some((_, v)) = var("RSTMDB_TLS_CERT") {
        c.tls.cert_path = Some(PathBuf::from(v));
    }
    if let Some((_, v)) = var("RSTMDB_TLS_KEY") {
        c.tls.key_path = Some(PathBuf::from(v));
    }
    if let Some((k, v)) = var("RSTMDB_TLS_REQUIRE_CLIENT_CERT") {
        c.tls.require_client_cert = parse_bool(k, &v)?;
    }
    if let Some((_, v)) = var("RSTMDB_TLS_CLIENT_CA") {
        c.tls.client_ca_path = Some(PathBuf::from(v));
    }
    if let Some((k, v)) = var("RSTMDB_COMPACT_ENABLED") {
        c.compaction.enabled = parse_bool(k, &v)?;
    }
    if let Some((k, v)) = var("RSTMDB_COMPACT_EVENTS") {
        c.compaction.events_threshold = parse_u64(k, &v)?;
    }
    if let Some((k, v)) = var("RSTMDB_COMPACT_SIZE_MB") {
        c.compaction.size_threshold_mb =
            check_range(k, parse_u64(k, &v)?, 0, COMPACTION_SIZE_THRESHOLD_MB_MAX)?;
    }
    if let Some((k, v)) = var("RSTMDB_COMPACT_INTERVAL") {
        c.compaction.min_interval_secs =
            check_range(k, parse_u64(k, &v)?, 0, COMPACTION_MIN_INTERVAL_SECS_MAX)?;
    }
    if let Some((k, v)) = var("RSTMDB_METRICS_ENABLED") {
        c.metrics.enabled = parse_bool(k, &v)?;
    }
    if let Some((k, v)) = var("RSTMDB_METRICS_BIND") {
        c.metrics.bind_addr = parse_addr(k, &v)?;
    }
    if let Some((k, v)) = var("RSTMDB_REPL_ROLE") {
        check_replication_role(k, &v)?;
    }
    if let Some((k, v)) = var("CORESTATE_SHARDS") {
        c.shards = check_shards(k, parse_u64(k, &v)?)?;
    }
    if let Some((k, v)) = var("CORESTATE_LOG_FORMAT") {
        c.log_format = LogFormat::parse(k, &v)?;
    }
    Ok(())
}

fn apply_flags(draft: &mut Draft, flags: &Flags) -> Result<(), ConfigError> {
    let c = &mut draft.config;
    if let Some(bind) = &flags.bind {
        c.bind = parse_addr("--bind", bind)?;
    }
    if let Some(dir) = &flags.data_dir {
        c.data_dir = dir.clone();
    }
    if let Some(shards) = &flags.shards {
        c.shards = check_shards("--shards", parse_u64("--shards", shards)?)?;
    }
    if let Some(fsync) = &flags.fsync {
        c.fsync = parse_fsync("--fsync", fsync)?;
    }
    c.salvage = flags.salvage;
    if let Some(cert) = &flags.tls_cert {
        c.tls.enabled = true;
        c.tls.cert_path = Some(cert.clone());
    }
    if let Some(key) = &flags.tls_key {
        c.tls.enabled = true;
        c.tls.key_path = Some(key.clone());
    }
    if let Some(ca) = &flags.tls_client_ca {
        // mTLS without a server certificate is a mistake worth naming.
        c.tls.enabled = true;
        c.tls.require_client_cert = true;
        c.tls.client_ca_path = Some(ca.clone());
    }
    if let Some(addr) = &flags.metrics_bind {
        c.metrics.enabled = true;
        c.metrics.bind_addr = parse_addr("--metrics-bind", addr)?;
    }
    if let Some(n) = &flags.max_connections {
        let n = parse_u64("--max-connections", n)?;
        c.max_connections =
            check_range("--max-connections", n, 1, MAX_CONNECTIONS_MAX as u64)? as usize;
    }
    if let Some(secs) = &flags.idle_timeout_secs {
        let secs = parse_u64("--idle-timeout-secs", secs)?;
        c.idle_timeout_secs = check_idle_timeout("--idle-timeout-secs", secs)?;
    }
    if let Some(format) = &flags.log_format {
        c.log_format = LogFormat::parse("--log-format", format)?;
    }
    Ok(())
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

// ---------------------------------------------------------------------------
// Value parsers shared by the file, environment and flags
// ---------------------------------------------------------------------------

fn parse_addr(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.trim().parse().map_err(|_| {
        ConfigError::new(
            key,
            format!("'{text}' is not an IP address with a port (e.g. 127.0.0.1:7401)"),
        )
    })
}

fn parse_u64(key: &str, text: &str) -> Result<u64, ConfigError> {
    text.trim()
        .parse()
        .map_err(|_| ConfigError::new(key, format!("'{text}' is not a non-negative integer")))
}

/// `1`/`true`/`0`/`false`, case-insensitive; anything else is an error
/// (0.3 read it as false).
fn parse_bool(key: &str, text: &str) -> Result<bool, ConfigError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(ConfigError::new(
            key,
            format!("'{text}' is not a boolean (expected 1, true, 0 or false)"),
        )),
    }
}

fn parse_fsync(key: &str, text: &str) -> Result<FsyncPolicy, ConfigError> {
    text.parse().map_err(|m: String| ConfigError::new(key, m))
}

fn check_range(key: &str, value: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::new(
            key,
            format!("{value} is out of range (expected {min}..={max})"),
        ))
    }
}

fn check_shards(key: &str, n: u64) -> Result<usize, ConfigError> {
    Ok(check_range(key, n, SHARDS_MIN as u64, SHARDS_MAX as u64)? as usize)
}

fn check_idle_timeout(key: &str, secs: u64) -> Result<u64, ConfigError> {
    check_range(key, secs, 0, IDLE_TIMEOUT_SECS_MAX)
}

fn wal_segment_size_bytes(key: &str, mb: u64) -> Result<u64, ConfigError> {
    Ok(check_range(key, mb, WAL_SEGMENT_SIZE_MB_MIN, WAL_SEGMENT_SIZE_MB_MAX)? * BYTES_PER_MB)
}

/// corestate runs standalone only.
fn check_replication_role(key: &str, role: &str) -> Result<(), ConfigError> {
    match role.trim().to_ascii_lowercase().as_str() {
        "standalone" => Ok(()),
        "primary" | "replica" => Err(ConfigError::new(
            key,
            format!(
                "role '{role}' is not supported: corestate runs standalone only \
                 (replication is not implemented); use 'standalone' or remove the setting"
            ),
        )),
        _ => Err(ConfigError::new(
            key,
            format!("unknown role '{role}' (expected standalone)"),
        )),
    }
}

/// A token hash as stored: 64 hex characters, lower-cased. The value is
/// never echoed in errors in case a plaintext token was pasted by mistake.
fn normalise_token_hash(text: &str) -> Result<String, String> {
    let hash = text.trim();
    if hash.len() == TOKEN_HASH_HEX_CHARS && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hash.to_ascii_lowercase())
    } else {
        Err(format!(
            "not a token hash: expected {TOKEN_HASH_HEX_CHARS} hexadecimal characters \
             (SHA-256 of the token), got {} characters",
            hash.chars().count()
        ))
    }
}

fn type_error(key: impl Into<String>, expected: &str, found: &Value) -> ConfigError {
    ConfigError::new(key, format!("expected {expected}, found {}", kind(found)))
}

/// A YAML value's kind, for error messages.
fn kind(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string '{s}'"),
        Value::Sequence(_) => "a list".to_string(),
        Value::Mapping(_) => "a mapping".to_string(),
        Value::Tagged(t) => format!("tagged value {}", t.tag),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Write;

    const HASH_A: &str = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";
    const HASH_B: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const HASH_C: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    /// Runs `load_from` with the given flags (no program name) and env.
    fn load_with(flags: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let args: Vec<OsString> = std::iter::once("corestate")
            .chain(flags.iter().copied())
            .map(OsString::from)
            .collect();
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        load_from(&args, &|name| env.get(name).cloned())
    }

    fn yaml_file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(text.as_bytes()).expect("write temp file");
        file
    }

    fn load_yaml(text: &str) -> Result<Config, ConfigError> {
        load_yaml_env(text, &[])
    }

    fn load_yaml_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let file = yaml_file(text);
        let path = file.path().to_str().expect("utf-8 temp path").to_string();
        load_with(&["--config", &path], env)
    }

    fn err_key(result: Result<Config, ConfigError>) -> String {
        match result {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(e) => e.key,
        }
    }

    #[test]
    fn defaults_match_rstmdb_0_3() {
        let c = load_with(&[], &[]).unwrap();
        assert_eq!(c.bind, "127.0.0.1:7401".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.fsync, FsyncPolicy::EveryWrite);
        assert_eq!(c.wal_segment_size_bytes, 64 * 1024 * 1024);
        assert_eq!(c.max_machine_versions, 0);
        assert!(c.allow_instance_recreate);
        assert!(!c.allow_flush_all);
        assert!(!c.auth_required);
        assert!(c.auth_token_hashes.is_empty());
        assert_eq!(c.idle_timeout_secs, 300);
        assert_eq!(c.idle_timeout(), Some(Duration::from_secs(300)));
        assert_eq!(c.max_connections, 1000);
        assert_eq!(c.max_inflight_requests_per_connection, 1024);
        assert_eq!(c.max_batch_ops, 100);
        assert!(!c.salvage);
        assert_eq!(c.tls, TlsConfig::default());
        assert!(!c.metrics.enabled);
        assert_eq!(c.metrics.bind_addr, "0.0.0.0:9090".parse().unwrap());
        assert!(c.compaction.enabled);
        assert_eq!(c.compaction.events_threshold, 10_000);
        assert_eq!(c.compaction.size_threshold_mb, 100);
        assert_eq!(c.compaction.min_interval_secs, 60);
        assert_eq!(c.config_file, None);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(c.shards, cpus.clamp(1, SHARDS_MAX));
    }

    #[test]
    fn flag_beats_env_beats_file() {
        let yaml = "network:\n  bind_addr: \"10.0.0.1:1000\"\nstorage:\n  data_dir: /file\n  \
                    fsync_policy: never\ncorestate:\n  shards: 2\n";
        let env = [
            ("RSTMDB_BIND", "10.0.0.2:2000"),
            ("RSTMDB_DATA", "/env"),
            ("RSTMDB_FSYNC_POLICY", "every_n:7"),
            ("CORESTATE_SHARDS", "3"),
        ];

        let file_only = load_yaml(yaml).unwrap();
        assert_eq!(file_only.bind, "10.0.0.1:1000".parse().unwrap());
        assert_eq!(file_only.data_dir, PathBuf::from("/file"));
        assert_eq!(file_only.fsync, FsyncPolicy::Never);
        assert_eq!(file_only.shards, 2);

        let env_over_file = load_yaml_env(yaml, &env).unwrap();
        assert_eq!(env_over_file.bind, "10.0.0.2:2000".parse().unwrap());
        assert_eq!(env_over_file.data_dir, PathBuf::from("/env"));
        assert_eq!(env_over_file.fsync, FsyncPolicy::EveryN(7));
        assert_eq!(env_over_file.shards, 3);

        let file = yaml_file(yaml);
        let path = file.path().to_str().unwrap();
        let flags_over_env = load_with(
            &[
                "--config",
                path,
                "--bind",
                "10.0.0.3:3000",
                "--data-dir",
                "/flag",
                "--fsync",
                "every_ms:5",
                "--shards",
                "4",
                "--salvage",
            ],
            &env,
        )
        .unwrap();
        assert_eq!(flags_over_env.bind, "10.0.0.3:3000".parse().unwrap());
        assert_eq!(flags_over_env.data_dir, PathBuf::from("/flag"));
        assert_eq!(flags_over_env.fsync, FsyncPolicy::EveryMs(5));
        assert_eq!(flags_over_env.shards, 4);
        assert!(flags_over_env.salvage);
        assert_eq!(flags_over_env.config_file, Some(file.path().to_path_buf()));
    }

    #[test]
    fn env_overrides_every_file_setting_without_a_flag() {
        let yaml = "network: {idle_timeout_secs: 10, max_connections: 20}\n\
                    storage: {wal_segment_size_mb: 8, max_machine_versions: 3, \
                    allow_instance_recreate: false, allow_flush_all: false}\n\
                    compaction: {enabled: false, events_threshold: 1, size_threshold_mb: 2, \
                    min_interval_secs: 3}\n\
                    metrics: {enabled: false, bind_addr: \"127.0.0.1:1\"}\n";
        let from_file = load_yaml(yaml).unwrap();
        assert_eq!(from_file.idle_timeout_secs, 10);
        assert_eq!(from_file.max_connections, 20);
        assert_eq!(from_file.wal_segment_size_bytes, 8 * 1024 * 1024);
        assert_eq!(from_file.max_machine_versions, 3);
        assert!(!from_file.allow_instance_recreate);
        assert!(!from_file.compaction.enabled);
        assert_eq!(from_file.compaction.events_threshold, 1);
        assert_eq!(from_file.compaction.size_threshold_mb, 2);
        assert_eq!(from_file.compaction.min_interval_secs, 3);
        assert_eq!(from_file.metrics.bind_addr, "127.0.0.1:1".parse().unwrap());

        let env = [
            ("RSTMDB_IDLE_TIMEOUT", "0"),
            ("RSTMDB_MAX_CONNECTIONS", "50"),
            ("RSTMDB_WAL_SEGMENT_SIZE_MB", "16"),
            ("RSTMDB_MAX_MACHINE_VERSIONS", "9"),
            ("RSTMDB_ALLOW_INSTANCE_RECREATE", "TRUE"),
            ("RSTMDB_ALLOW_FLUSH_ALL", "1"),
            ("RSTMDB_COMPACT_ENABLED", "true"),
            ("RSTMDB_COMPACT_EVENTS", "11"),
            ("RSTMDB_COMPACT_SIZE_MB", "12"),
            ("RSTMDB_COMPACT_INTERVAL", "13"),
            ("RSTMDB_METRICS_ENABLED", "True"),
            ("RSTMDB_METRICS_BIND", "127.0.0.1:2"),
        ];
        let c = load_yaml_env(yaml, &env).unwrap();
        assert_eq!(c.idle_timeout_secs, 0);
        assert_eq!(c.idle_timeout(), None);
        assert_eq!(c.max_connections, 50);
        assert_eq!(c.wal_segment_size_bytes, 16 * 1024 * 1024);
        assert_eq!(c.max_machine_versions, 9);
        assert!(c.allow_instance_recreate);
        assert!(c.allow_flush_all);
        assert!(c.compaction.enabled);
        assert_eq!(c.compaction.events_threshold, 11);
        assert_eq!(c.compaction.size_threshold_mb, 12);
        assert_eq!(c.compaction.min_interval_secs, 13);
        assert!(c.metrics.enabled);
        assert_eq!(c.metrics.bind_addr, "127.0.0.1:2".parse().unwrap());
    }

    #[test]
    fn env_booleans_accept_zero_and_false() {
        let c = load_with(
            &[],
            &[
                ("RSTMDB_ALLOW_INSTANCE_RECREATE", "0"),
                ("RSTMDB_COMPACT_ENABLED", "FALSE"),
            ],
        )
        .unwrap();
        assert!(!c.allow_instance_recreate);
        assert!(!c.compaction.enabled);
    }

    #[test]
    fn empty_env_values_count_as_unset() {
        let c = load_with(&[], &[("RSTMDB_BIND", ""), ("RSTMDB_AUTH_TOKEN_HASH", " ")]).unwrap();
        assert_eq!(c.bind, BIND_ADDR_DEFAULT);
        assert!(c.auth_token_hashes.is_empty());
    }

    #[test]
    fn fsync_policy_every_yaml_syntax() {
        let cases = [
            ("every_write", FsyncPolicy::EveryWrite),
            ("EVERY_WRITE", FsyncPolicy::EveryWrite),
            ("never", FsyncPolicy::Never),
            ("Never", FsyncPolicy::Never),
            // 0.3's only working form for N: the YAML tag.
            ("!every_n 100", FsyncPolicy::EveryN(100)),
            ("!every_ms 25", FsyncPolicy::EveryMs(25)),
            // The documented map form, flow and block style.
            ("{every_n: 100}", FsyncPolicy::EveryN(100)),
            ("{every_ms: 5}", FsyncPolicy::EveryMs(5)),
            ("\n    every_n: 42", FsyncPolicy::EveryN(42)),
            // The env syntax as a string.
            ("\"every_n:100\"", FsyncPolicy::EveryN(100)),
            ("every_ms:9", FsyncPolicy::EveryMs(9)),
        ];
        for (text, expected) in cases {
            let yaml = format!("storage:\n  fsync_policy: {text}\n");
            let c = load_yaml(&yaml).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(c.fsync, expected, "{text}");
        }
    }

    #[test]
    fn fsync_policy_from_env_and_flag() {
        for (text, expected) in [
            ("every_write", FsyncPolicy::EveryWrite),
            ("EveryWrite", FsyncPolicy::EveryWrite),
            ("every_n:3", FsyncPolicy::EveryN(3)),
            ("EVERY_MS:4", FsyncPolicy::EveryMs(4)),
            ("never", FsyncPolicy::Never),
        ] {
            let from_env = load_with(&[], &[("RSTMDB_FSYNC_POLICY", text)]).unwrap();
            assert_eq!(from_env.fsync, expected, "env {text}");
            let from_flag = load_with(&["--fsync", text], &[]).unwrap();
            assert_eq!(from_flag.fsync, expected, "flag {text}");
        }
    }

    #[test]
    fn bad_fsync_policy_names_its_key() {
        for text in [
            "sometimes",
            "!every_n 0",
            "!every_n -1",
            "!every_n 1.5",
            "!every_n [1]",
            "!sometimes 5",
            "{every_n: x}",
            "{every_n: 1, every_ms: 2}",
            "[every_write]",
            "5",
            "\"every_n:\"",
        ] {
            let yaml = format!("storage:\n  fsync_policy: {text}\n");
            assert_eq!(err_key(load_yaml(&yaml)), "storage.fsync_policy", "{text}");
        }
        assert_eq!(
            err_key(load_with(&[], &[("RSTMDB_FSYNC_POLICY", "every_n:x")])),
            "RSTMDB_FSYNC_POLICY"
        );
        assert_eq!(err_key(load_with(&["--fsync", "always"], &[])), "--fsync");
    }

    #[test]
    fn spec_example_config_parses() {
        let yaml = r#"
network:
  bind_addr: "0.0.0.0:7401"
storage:
  data_dir: "/var/lib/rstmdb"
  fsync_policy: !every_n 50
auth:
  required: true
  token_hashes:
    - "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
"#;
        let c = load_yaml(yaml).unwrap();
        assert_eq!(c.bind, "0.0.0.0:7401".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/rstmdb"));
        assert_eq!(c.fsync, FsyncPolicy::EveryN(50));
        assert!(c.auth_required);
        assert_eq!(c.auth_token_hashes, vec![HASH_A.to_string()]);
    }

    #[test]
    fn unknown_sections_and_keys_are_ignored() {
        let yaml = r#"
logging:
  level: debug
  format: json
network:
  wire_mode: jsonl
  bind_addr: "127.0.0.1:7500"
storage:
  something_new: [1, 2]
replication:
  role: standalone
  mode: sync
  upstream: "primary.example:7401"
  sync_replicas: 0
  auth_token: secret
  tls_insecure: true
tls:
  enabled: false
  require_client_cert: true
future_section: 7
"#;
        let c = load_yaml(yaml).unwrap();
        assert_eq!(c.bind, "127.0.0.1:7500".parse().unwrap());
        assert!(!c.tls.enabled);
    }

    #[test]
    fn empty_file_and_null_values_mean_defaults() {
        assert_eq!(load_yaml("").unwrap().bind, BIND_ADDR_DEFAULT);
        let c = load_yaml("network:\nstorage:\n  data_dir:\n  fsync_policy: ~\n").unwrap();
        assert_eq!(c.data_dir, PathBuf::from(DATA_DIR_DEFAULT));
        assert_eq!(c.fsync, FsyncPolicy::EveryWrite);
    }

    #[test]
    fn yaml_merge_keys_are_applied() {
        let yaml = "base: &base\n  data_dir: /merged\nstorage:\n  <<: *base\n";
        assert_eq!(load_yaml(yaml).unwrap().data_dir, PathBuf::from("/merged"));
    }

    #[test]
    fn invalid_file_values_name_their_key() {
        let cases = [
            (
                "storage:\n  wal_segment_size_mb: big\n",
                "storage.wal_segment_size_mb",
            ),
            (
                "storage:\n  wal_segment_size_mb: 0\n",
                "storage.wal_segment_size_mb",
            ),
            (
                "storage:\n  wal_segment_size_mb: 1025\n",
                "storage.wal_segment_size_mb",
            ),
            (
                "storage:\n  wal_segment_size_mb: -1\n",
                "storage.wal_segment_size_mb",
            ),
            (
                "storage:\n  max_machine_versions: 4294967296\n",
                "storage.max_machine_versions",
            ),
            (
                "storage:\n  allow_flush_all: yes\n",
                "storage.allow_flush_all",
            ),
            ("storage:\n  data_dir: [a]\n", "storage.data_dir"),
            (
                "network:\n  bind_addr: localhost:7401\n",
                "network.bind_addr",
            ),
            ("network:\n  bind_addr: 7401\n", "network.bind_addr"),
            (
                "network:\n  max_connections: 0\n",
                "network.max_connections",
            ),
            (
                "network:\n  idle_timeout_secs: 1.5\n",
                "network.idle_timeout_secs",
            ),
            ("auth:\n  required: \"true\"\n", "auth.required"),
            ("auth:\n  token_hashes: abc\n", "auth.token_hashes"),
            ("tls:\n  cert_path: 5\n", "tls.cert_path"),
            ("compaction:\n  enabled: 1\n", "compaction.enabled"),
            ("metrics:\n  bind_addr: nowhere\n", "metrics.bind_addr"),
            ("network: 5\n", "network"),
            (
                "corestate:\n  max_batch_ops: 0\n",
                "corestate.max_batch_ops",
            ),
            (
                "corestate:\n  max_inflight_requests_per_connection: 70000\n",
                "corestate.max_inflight_requests_per_connection",
            ),
            ("corestate:\n  shard: 4\n", "corestate.shard"),
        ];
        for (yaml, key) in cases {
            assert_eq!(err_key(load_yaml(yaml)), key, "{yaml}");
        }
    }

    #[test]
    fn invalid_env_values_name_their_variable() {
        let cases = [
            ("RSTMDB_BIND", "nope"),
            ("RSTMDB_IDLE_TIMEOUT", "5s"),
            ("RSTMDB_MAX_CONNECTIONS", "-1"),
            ("RSTMDB_WAL_SEGMENT_SIZE_MB", "x"),
            ("RSTMDB_WAL_SEGMENT_SIZE_MB", "2048"),
            ("RSTMDB_MAX_MACHINE_VERSIONS", "many"),
            ("RSTMDB_ALLOW_INSTANCE_RECREATE", "yes"),
            ("RSTMDB_ALLOW_FLUSH_ALL", "maybe"),
            ("RSTMDB_AUTH_REQUIRED", "on"),
            ("RSTMDB_AUTH_TOKEN_HASH", "not-a-hash"),
            ("RSTMDB_TLS_ENABLED", "2"),
            ("RSTMDB_TLS_REQUIRE_CLIENT_CERT", "t"),
            ("RSTMDB_COMPACT_ENABLED", "enabled"),
            ("RSTMDB_COMPACT_EVENTS", "1e3"),
            ("RSTMDB_COMPACT_SIZE_MB", "big"),
            ("RSTMDB_COMPACT_INTERVAL", "1m"),
            ("RSTMDB_METRICS_ENABLED", "y"),
            ("RSTMDB_METRICS_BIND", ":9090"),
            ("RSTMDB_REPL_ROLE", "leader"),
            ("CORESTATE_SHARDS", "all"),
        ];
        for (name, value) in cases {
            assert_eq!(err_key(load_with(&[], &[(name, value)])), name, "{value}");
        }
    }

    #[test]
    fn invalid_flag_values_name_the_flag() {
        assert_eq!(err_key(load_with(&["--bind", "nope"], &[])), "--bind");
        assert_eq!(err_key(load_with(&["--shards", "x"], &[])), "--shards");
        assert_eq!(
            err_key(load_with(&["--fsync", "every_n:0"], &[])),
            "--fsync"
        );
    }

    #[test]
    fn shards_out_of_range_are_rejected() {
        for n in ["0", "65"] {
            assert_eq!(err_key(load_with(&["--shards", n], &[])), "--shards");
            assert_eq!(
                err_key(load_with(&[], &[("CORESTATE_SHARDS", n)])),
                "CORESTATE_SHARDS"
            );
            let yaml = format!("corestate:\n  shards: {n}\n");
            assert_eq!(err_key(load_yaml(&yaml)), "corestate.shards");
        }
        assert_eq!(load_with(&["--shards", "64"], &[]).unwrap().shards, 64);
        assert_eq!(load_with(&["--shards", "1"], &[]).unwrap().shards, 1);
    }

    #[test]
    fn corestate_section_settings_apply() {
        let yaml = "corestate:\n  shards: 5\n  max_inflight_requests_per_connection: 8\n  \
                    max_batch_ops: 9\n";
        let c = load_yaml(yaml).unwrap();
        assert_eq!(c.shards, 5);
        assert_eq!(c.max_inflight_requests_per_connection, 8);
        assert_eq!(c.max_batch_ops, 9);
    }

    #[test]
    fn auth_required_without_hashes_fails() {
        assert_eq!(
            err_key(load_yaml("auth:\n  required: true\n")),
            "auth.required"
        );
        assert_eq!(
            err_key(load_with(&[], &[("RSTMDB_AUTH_REQUIRED", "1")])),
            "auth.required"
        );
        let c = load_with(
            &[],
            &[
                ("RSTMDB_AUTH_REQUIRED", "true"),
                ("RSTMDB_AUTH_TOKEN_HASH", HASH_A),
            ],
        )
        .unwrap();
        assert!(c.auth_required);
        assert_eq!(c.auth_token_hashes, vec![HASH_A.to_string()]);
    }

    #[test]
    fn secrets_file_skips_comments_and_blank_lines() {
        let secrets = yaml_file(&format!(
            "# rotated 2024-01-01\n\n  {}  \n#{HASH_C}\n{HASH_A}\n\n",
            HASH_B.to_ascii_uppercase()
        ));
        let yaml = format!(
            "auth:\n  required: true\n  token_hashes: [\"{HASH_A}\"]\n  secrets_file: {}\n",
            secrets.path().display()
        );
        let c = load_yaml_env(&yaml, &[("RSTMDB_AUTH_TOKEN_HASH", HASH_C)]).unwrap();
        // File list, then env, then secrets file; upper case lowered; the
        // duplicate HASH_A kept once.
        assert_eq!(
            c.auth_token_hashes,
            vec![HASH_A.to_string(), HASH_C.to_string(), HASH_B.to_string()]
        );
    }

    #[test]
    fn secrets_file_from_env_satisfies_auth_required() {
        let secrets = yaml_file(&format!("{HASH_B}\n"));
        let c = load_with(
            &[],
            &[
                ("RSTMDB_AUTH_REQUIRED", "true"),
                ("RSTMDB_AUTH_SECRETS_FILE", secrets.path().to_str().unwrap()),
            ],
        )
        .unwrap();
        assert_eq!(c.auth_token_hashes, vec![HASH_B.to_string()]);
    }

    #[test]
    fn unreadable_secrets_file_fails() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let yaml = format!("auth:\n  secrets_file: {}\n", missing.display());
        assert_eq!(err_key(load_yaml(&yaml)), "auth.secrets_file");
        assert_eq!(
            err_key(load_with(
                &[],
                &[("RSTMDB_AUTH_SECRETS_FILE", missing.to_str().unwrap())]
            )),
            "RSTMDB_AUTH_SECRETS_FILE"
        );
    }

    #[test]
    fn bad_token_hashes_are_rejected_without_echoing_them() {
        let short = &HASH_A[..63];
        let not_hex = format!("{}g", &HASH_A[..63]);
        let yaml = format!("auth:\n  token_hashes:\n    - {HASH_A}\n    - {not_hex}\n");
        let e = load_yaml(&yaml).unwrap_err();
        assert_eq!(e.key, "auth.token_hashes[1]");
        assert!(!e.message.contains(&not_hex));

        assert_eq!(
            err_key(load_with(&[], &[("RSTMDB_AUTH_TOKEN_HASH", short)])),
            "RSTMDB_AUTH_TOKEN_HASH"
        );

        let secrets = yaml_file(&format!("{HASH_A}\nmy-plaintext-token\n"));
        let yaml = format!("auth:\n  secrets_file: {}\n", secrets.path().display());
        let e = load_yaml(&yaml).unwrap_err();
        assert_eq!(e.key, "auth.secrets_file");
        assert!(e.message.contains("line 2"), "{}", e.message);
        assert!(!e.message.contains("my-plaintext-token"));
    }

    #[test]
    fn replication_roles_other_than_standalone_are_rejected() {
        for role in ["primary", "replica", "Primary"] {
            let yaml = format!("replication:\n  role: {role}\n");
            let e = load_yaml(&yaml).unwrap_err();
            assert_eq!(e.key, "replication.role");
            assert!(e.message.contains("standalone"), "{}", e.message);
        }
        assert_eq!(
            err_key(load_with(&[], &[("RSTMDB_REPL_ROLE", "replica")])),
            "RSTMDB_REPL_ROLE"
        );
        assert!(load_yaml("replication:\n  role: standalone\n").is_ok());
        assert!(load_with(&[], &[("RSTMDB_REPL_ROLE", "standalone")]).is_ok());
        assert_eq!(
            err_key(load_yaml("replication:\n  role: [primary]\n")),
            "replication.role"
        );
    }

    #[test]
    fn tls_settings_are_validated_when_enabled() {
        assert_eq!(
            err_key(load_yaml("tls:\n  enabled: true\n  key_path: /k\n")),
            "tls.cert_path"
        );
        assert_eq!(
            err_key(load_yaml("tls:\n  enabled: true\n  cert_path: /c\n")),
            "tls.key_path"
        );
        assert_eq!(
            err_key(load_yaml(
                "tls:\n  enabled: true\n  cert_path: /c\n  key_path: /k\n  require_client_cert: true\n"
            )),
            "tls.client_ca_path"
        );
        let c = load_with(
            &[],
            &[
                ("RSTMDB_TLS_ENABLED", "true"),
                ("RSTMDB_TLS_CERT", "/c.pem"),
                ("RSTMDB_TLS_KEY", "/k.pem"),
                ("RSTMDB_TLS_REQUIRE_CLIENT_CERT", "1"),
                ("RSTMDB_TLS_CLIENT_CA", "/ca.pem"),
            ],
        )
        .unwrap();
        assert_eq!(
            c.tls,
            TlsConfig {
                enabled: true,
                cert_path: Some(PathBuf::from("/c.pem")),
                key_path: Some(PathBuf::from("/k.pem")),
                require_client_cert: true,
                client_ca_path: Some(PathBuf::from("/ca.pem")),
            }
        );
    }

    #[test]
    fn config_file_from_env_and_file_errors_name_the_path() {
        let file = yaml_file("storage:\n  data_dir: /via-env\n");
        let path = file.path().to_str().unwrap();
        let c = load_with(&[], &[("RSTMDB_CONFIG", path)]).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/via-env"));
        assert_eq!(c.config_file, Some(file.path().to_path_buf()));

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.yaml");
        let missing = missing.to_str().unwrap();
        assert_eq!(err_key(load_with(&["--config", missing], &[])), missing);

        let broken = yaml_file("storage: [unclosed\n");
        let broken_path = broken.path().to_str().unwrap();
        assert_eq!(
            err_key(load_with(&["--config", broken_path], &[])),
            broken_path
        );

        let scalar = yaml_file("just a string\n");
        let scalar_path = scalar.path().to_str().unwrap();
        assert_eq!(
            err_key(load_with(&["--config", scalar_path], &[])),
            scalar_path
        );
    }

    #[test]
    fn operations_flags_override_the_file() {
        let yaml =
            "tls:\n  enabled: false\nmetrics:\n  enabled: false\n  bind_addr: \"127.0.0.1:1\"\n\
                    network:\n  max_connections: 5\n  idle_timeout_secs: 9\n";
        let file = yaml_file(yaml);
        let path = file.path().to_str().unwrap();
        let c = load_with(
            &[
                "--config",
                path,
                "--tls-cert",
                "/c.pem",
                "--tls-key",
                "/k.pem",
                "--tls-client-ca",
                "/ca.pem",
                "--metrics-bind",
                "127.0.0.1:9100",
                "--max-connections",
                "7",
                "--idle-timeout-secs",
                "0",
                "--log-format",
                "json",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(
            c.tls,
            TlsConfig {
                enabled: true,
                cert_path: Some(PathBuf::from("/c.pem")),
                key_path: Some(PathBuf::from("/k.pem")),
                require_client_cert: true,
                client_ca_path: Some(PathBuf::from("/ca.pem")),
            }
        );
        assert!(c.metrics.enabled);
        assert_eq!(c.metrics.bind_addr, "127.0.0.1:9100".parse().unwrap());
        assert_eq!(c.max_connections, 7);
        assert_eq!(c.idle_timeout(), None);
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn log_format_from_every_layer_and_bad_values_name_their_key() {
        assert_eq!(load_with(&[], &[]).unwrap().log_format, LogFormat::Text);
        assert_eq!(
            load_yaml("corestate:\n  log_format: json\n")
                .unwrap()
                .log_format,
            LogFormat::Json
        );
        assert_eq!(
            load_with(&[], &[("CORESTATE_LOG_FORMAT", "JSON")])
                .unwrap()
                .log_format,
            LogFormat::Json
        );
        assert_eq!(
            err_key(load_with(&["--log-format", "xml"], &[])),
            "--log-format"
        );
        assert_eq!(
            err_key(load_yaml("corestate:\n  log_format: yaml\n")),
            "corestate.log_format"
        );
        assert_eq!(
            err_key(load_with(&["--metrics-bind", "here"], &[])),
            "--metrics-bind"
        );
        assert_eq!(
            err_key(load_with(&["--max-connections", "0"], &[])),
            "--max-connections"
        );
        // A client CA alone asks for TLS, which then needs a certificate.
        assert_eq!(
            err_key(load_with(&["--tls-client-ca", "/ca.pem"], &[])),
            "tls.cert_path"
        );
    }

    #[test]
    fn flag_definitions_are_consistent() {
        use clap::CommandFactory;
        Flags::command().debug_assert();
    }

    #[test]
    fn error_display_names_key_then_message() {
        let e = ConfigError::new("storage.data_dir", "bad");
        assert_eq!(
            e.to_string(),
            "invalid configuration: storage.data_dir: bad"
        );
    }

    #[test]
    fn summary_names_the_essentials() {
        let file = yaml_file("storage:\n  fsync_policy: !every_ms 10\n");
        let path = file.path().to_str().unwrap();
        let c = load_with(&["--config", path, "--shards", "3"], &[]).unwrap();
        let line = c.summary();
        for part in ["127.0.0.1:7401", "./data", "3 shards", "every_ms:10", path] {
            assert!(line.contains(part), "{line} lacks {part}");
        }
        assert_eq!(c.to_string(), line);
    }
}
