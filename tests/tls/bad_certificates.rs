//! Unusable certificate or key files stop the start with exit status 2 and
//! the file's name.

use std::path::Path;
use std::time::Duration;

use tempfile::TempDir;

use crate::pki::Pki;
use crate::support::Server;

fn expect_config_exit(args: &[String], names: &Path) {
    let data = TempDir::new().unwrap();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let exited = Server::expect_exit_in(data.path(), &args, Duration::from_secs(20));
    assert_eq!(
        exited.status.code(),
        Some(2),
        "bad TLS files must exit 2; stderr:\n{}",
        exited.stderr
    );
    let name = names.to_str().unwrap();
    assert!(
        exited.stderr.contains(name),
        "the error must name {name}:\n{}",
        exited.stderr
    );
}

#[test]
fn unusable_certificate_files_name_themselves_and_exit_2() {
    let pki = Pki::generate();
    let args = |cert: &str, key: &str| -> Vec<String> {
        vec![
            "--tls-cert".into(),
            pki.arg(cert),
            "--tls-key".into(),
            pki.arg(key),
        ]
    };
    // Missing certificate file.
    expect_config_exit(&args("missing.pem", "server.key"), &pki.path("missing.pem"));
    // A file with no certificate in it.
    expect_config_exit(&args("empty.pem", "server.key"), &pki.path("empty.pem"));
    // A key file that holds a certificate, not a key.
    expect_config_exit(&args("server.pem", "server.pem"), &pki.path("server.pem"));
    // A key that does not belong to the certificate.
    expect_config_exit(&args("server.pem", "client.key"), &pki.path("client.key"));
    // A certificate whose content is not a certificate.
    expect_config_exit(&args("garbage.pem", "server.key"), &pki.path("server.key"));
    // mTLS with a missing CA bundle.
    let mut mtls = args("server.pem", "server.key");
    mtls.extend(["--tls-client-ca".to_string(), pki.arg("no-ca.pem")]);
    expect_config_exit(&mtls, &pki.path("no-ca.pem"));
}
