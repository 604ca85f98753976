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
#[path = "config_tests.rs"]
mod tests;
