//! The rstmdb YAML file: read with a size cap, walked section by section
//! so every error names the dotted key.

use super::*;

pub(super) fn read_yaml(path: &Path) -> Result<Value, ConfigError> {
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
pub(super) fn read_text_capped(path: &Path, size_bytes_max: u64) -> Result<String, String> {
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
pub(super) struct Section<'a> {
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

pub(super) fn apply_file(draft: &mut Draft, root: &Value, path: &Path) -> Result<(), ConfigError> {
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
            "first_core",
            "pin_cores",
            "spin_before_park_us",
            "max_inflight_requests_per_connection",
            "max_batch_ops",
            "log_format",
            "answer_buffer_per_connection_mb",
            "answer_buffer_total_mb",
            "request_buffer_per_connection_mb",
            "http_listen",
            "cluster",
        ])
        .first()
    {
        return Err(ConfigError::new(
            format!("corestate.{unknown}"),
            format!(
                "unknown corestate setting in {} (expected shards, first_core, pin_cores, \
                 spin_before_park_us, max_inflight_requests_per_connection, max_batch_ops, log_format, \
                 answer_buffer_per_connection_mb, answer_buffer_total_mb, \
                 request_buffer_per_connection_mb, http_listen or cluster)",
                path.display()
            ),
        ));
    }
    if let Some((key, n)) = corestate.u64("shards")? {
        c.shards = check_shards(&key, n)?;
    }
    if let Some((key, n)) = corestate.u64("first_core")? {
        c.cores.first_core = check_range(&key, n, 0, FIRST_CORE_MAX)? as usize;
    }
    if let Some(pin) = corestate.bool("pin_cores")? {
        c.cores.pin = pin;
    }
    if let Some((key, us)) = corestate.u64("spin_before_park_us")? {
        c.cores.spin_before_park_us = check_spin_before_park(&key, us)?;
    }
    if let Some((key, n)) = corestate.u64("max_inflight_requests_per_connection")? {
        c.max_inflight_requests_per_connection =
            check_range(&key, n, 1, MAX_INFLIGHT_REQUESTS_PER_CONNECTION_MAX as u64)? as usize;
    }
    if let Some((key, n)) = corestate.u64("max_batch_ops")? {
        c.max_batch_ops = check_range(&key, n, 1, MAX_BATCH_OPS_MAX as u64)? as usize;
    }
    let buffer_mb = |key: &str| -> Result<Option<usize>, ConfigError> {
        corestate
            .u64(key)?
            .map(|(key, n)| {
                check_range(&key, n, 1, BUFFER_MB_MAX).map(|mb| (mb * BYTES_PER_MB) as usize)
            })
            .transpose()
    };
    if let Some(bytes) = buffer_mb("answer_buffer_per_connection_mb")? {
        c.answer_buffer_per_connection_bytes = bytes;
    }
    if let Some(bytes) = buffer_mb("answer_buffer_total_mb")? {
        c.answer_buffer_total_bytes = bytes;
    }
    if let Some(bytes) = buffer_mb("request_buffer_per_connection_mb")? {
        c.request_buffer_per_connection_bytes = bytes;
    }
    if let Some((key, addr)) = corestate.string("http_listen")? {
        c.http_listen = parse_listen(&key, addr)?;
    }
    if let Some((key, format)) = corestate.string("log_format")? {
        c.log_format = LogFormat::parse(&key, format)?;
    }
    c.cluster = super::cluster::from_yaml(root)?;
    Ok(())
}

/// `storage.fsync_policy` in any of its spellings: a plain or `every_n:N`
/// string, the YAML tag form `!every_n N` (what 0.3 requires), or the
/// one-entry map form `{every_n: N}` (what the 0.3 docs show).
pub(super) fn fsync_from_yaml(key: &str, value: &Value) -> Result<FsyncPolicy, ConfigError> {
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
pub(super) fn fsync_variant(
    key: &str,
    name: &str,
    argument: &Value,
) -> Result<FsyncPolicy, ConfigError> {
    let text = match argument {
        Value::Null => name.to_string(),
        Value::Number(n) => format!("{name}:{n}"),
        Value::String(s) => format!("{name}:{s}"),
        other => return Err(type_error(key, "an integer argument", other)),
    };
    parse_fsync(key, &text)
}
