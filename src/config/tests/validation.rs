//! Cross-key validation: auth token hashes and secrets files, TLS,
//! replication roles, the config file path.

use super::*;

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
