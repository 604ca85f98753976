//! Unit tests of the configuration loader.

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

/// Each load was refused, naming its key.
fn assert_refused<const N: usize>(cases: [(Result<Config, ConfigError>, &str); N]) {
    for (loaded, key) in cases {
        assert_eq!(err_key(loaded), key);
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
    assert_eq!(c.http_listen, Some("127.0.0.1:7402".parse().unwrap()));
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
fn operations_flags_override_the_file() {
    let yaml = "tls:\n  enabled: false\nmetrics:\n  enabled: false\n  bind_addr: \"127.0.0.1:1\"\n\
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

mod listeners;
mod placement;
mod validation;
