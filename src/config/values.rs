//! Value parsers and range checks shared by the file, the environment
//! and the flags: each error names the key it came from.

use super::*;

pub(super) fn parse_addr(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.trim().parse().map_err(|_| {
        ConfigError::new(
            key,
            format!("'{text}' is not an IP address with a port (e.g. 127.0.0.1:7401)"),
        )
    })
}

/// A listener address, or `off` (any case) for no listener.
pub(super) fn parse_listen(key: &str, text: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if text.trim().eq_ignore_ascii_case(LISTEN_OFF) {
        return Ok(None);
    }
    parse_addr(key, text)
        .map(Some)
        .map_err(|e| ConfigError::new(key, format!("{} or `{LISTEN_OFF}`", e.message)))
}

pub(super) fn parse_u64(key: &str, text: &str) -> Result<u64, ConfigError> {
    text.trim()
        .parse()
        .map_err(|_| ConfigError::new(key, format!("'{text}' is not a non-negative integer")))
}

/// `1`/`true`/`0`/`false`, case-insensitive; anything else is an error
/// (0.3 read it as false).
pub(super) fn parse_bool(key: &str, text: &str) -> Result<bool, ConfigError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(ConfigError::new(
            key,
            format!("'{text}' is not a boolean (expected 1, true, 0 or false)"),
        )),
    }
}

pub(super) fn parse_fsync(key: &str, text: &str) -> Result<FsyncPolicy, ConfigError> {
    text.parse().map_err(|m: String| ConfigError::new(key, m))
}

pub(super) fn check_range(key: &str, value: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::new(
            key,
            format!("{value} is out of range (expected {min}..={max})"),
        ))
    }
}

pub(super) fn check_shards(key: &str, n: u64) -> Result<usize, ConfigError> {
    Ok(check_range(key, n, SHARDS_MIN as u64, SHARDS_MAX as u64)? as usize)
}

/// `spin_before_park_us` as configured, in range.
pub(super) fn check_spin_before_park(key: &str, us: u64) -> Result<Option<u64>, ConfigError> {
    Ok(Some(check_range(key, us, 0, SPIN_BEFORE_PARK_US_MAX)?))
}

pub(super) fn check_idle_timeout(key: &str, secs: u64) -> Result<u64, ConfigError> {
    check_range(key, secs, 0, IDLE_TIMEOUT_SECS_MAX)
}

pub(super) fn wal_segment_size_bytes(key: &str, mb: u64) -> Result<u64, ConfigError> {
    Ok(check_range(key, mb, WAL_SEGMENT_SIZE_MB_MIN, WAL_SEGMENT_SIZE_MB_MAX)? * BYTES_PER_MB)
}

/// corestate runs standalone only.
pub(super) fn check_replication_role(key: &str, role: &str) -> Result<(), ConfigError> {
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
pub(super) fn normalise_token_hash(text: &str) -> Result<String, String> {
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

pub(super) fn type_error(key: impl Into<String>, expected: &str, found: &Value) -> ConfigError {
    ConfigError::new(key, format!("expected {expected}, found {}", kind(found)))
}

/// A YAML value's kind, for error messages.
pub(super) fn kind(value: &Value) -> String {
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
