//! Command-line flags (clap), applied last.

use super::*;

/// Command-line flags. Values are taken as text and parsed here so a bad
/// value is a `ConfigError` like any other.
/// A flag given twice takes its last value, as in most Unix tools (a
/// wrapper script can append overrides).
#[derive(Parser, Debug)]
#[command(
    name = "corestate",
    version,
    args_override_self = true,
    about = "A thread-per-core state machine database speaking RCP (rstmdb 0.3 compatible)",
    after_help = "Environment: the RSTMDB_* variables of rstmdb 0.3 (RSTMDB_BIND, RSTMDB_DATA, \
                  RSTMDB_FSYNC_POLICY, RSTMDB_AUTH_*, RSTMDB_TLS_*, RSTMDB_COMPACT_*, \
                  RSTMDB_METRICS_*, ...), CORESTATE_SHARDS, CORESTATE_HTTP_LISTEN and \
                  CORESTATE_LOG_FORMAT. Flags override the environment, \
                  which overrides the config file."
)]
pub(super) struct Flags {
    /// YAML configuration file in the rstmdb layout [env: RSTMDB_CONFIG]
    #[arg(long, value_name = "FILE")]
    pub(super) config: Option<PathBuf>,
    /// Client listen address, e.g. 0.0.0.0:7401 [env: RSTMDB_BIND]
    #[arg(long, value_name = "ADDR")]
    bind: Option<String>,
    /// Data directory [env: RSTMDB_DATA]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Number of shards, 1..=64 [env: CORESTATE_SHARDS]
    #[arg(long, value_name = "N")]
    shards: Option<String>,
    /// How long an idle executor spins before it parks, in µs [default: 0 with every_write, 50 otherwise] [env: CORESTATE_SPIN_BEFORE_PARK_US]
    #[arg(long, value_name = "US")]
    spin_before_park_us: Option<String>,
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
    /// HTTP/JSON API listen address, or `off` [default: 127.0.0.1:7402] [env: CORESTATE_HTTP_LISTEN]
    #[arg(long, value_name = "ADDR|off")]
    http_listen: Option<String>,
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

pub(super) fn apply_flags(draft: &mut Draft, flags: &Flags) -> Result<(), ConfigError> {
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
    if let Some(us) = &flags.spin_before_park_us {
        let key = "--spin-before-park-us";
        c.cores.spin_before_park_us = check_spin_before_park(key, parse_u64(key, us)?)?;
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
    if let Some(addr) = &flags.http_listen {
        c.http_listen = parse_listen("--http-listen", addr)?;
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
