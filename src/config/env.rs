//! The `RSTMDB_*` (and `CORESTATE_*`) environment variables.

use super::*;

pub(super) fn apply_env(
    draft: &mut Draft,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
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
    if let Some((k, v)) = var("CORESTATE_FIRST_CORE") {
        c.cores.first_core = check_range(k, parse_u64(k, &v)?, 0, FIRST_CORE_MAX)? as usize;
    }
    if let Some((k, v)) = var("CORESTATE_PIN_CORES") {
        c.cores.pin = parse_bool(k, &v)?;
    }
    if let Some((k, v)) = var("CORESTATE_SPIN_BEFORE_PARK_US") {
        c.cores.spin_before_park_us = check_spin_before_park(k, parse_u64(k, &v)?)?;
    }
    if let Some((k, v)) = var("CORESTATE_HTTP_LISTEN") {
        c.http_listen = parse_listen(k, &v)?;
    }
    if let Some((k, v)) = var("CORESTATE_LOG_FORMAT") {
        c.log_format = LogFormat::parse(k, &v)?;
    }
    Ok(())
}
