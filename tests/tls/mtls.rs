//! With a client CA configured, a client without a certificate signed by it
//! is refused; bearer auth applies on top.

use crate::pki::{round_trip, start, tls_args, tls_client, tls_client_with_token, Pki};
use crate::support::{error_code, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_from_the_config_file_refuses_clients_without_a_valid_certificate() {
    let pki = Pki::generate();
    let yaml = format!(
        "tls:\n  enabled: true\n  cert_path: \"{}\"\n  key_path: \"{}\"\n  require_client_cert: true\n  client_ca_path: \"{}\"\n",
        pki.arg("server.pem"),
        pki.arg("server.key"),
        pki.arg("ca.pem")
    );
    let config = crate::support::write_config(pki.dir.path(), &yaml);
    let mut server = Server::start(&["--config", config.to_str().unwrap()]);

    let without = tls_client(server.addr(), &pki, None).await;
    assert!(
        without.is_err(),
        "a client without a certificate must be refused"
    );
    let rogue = tls_client(
        server.addr(),
        &pki,
        Some(("rogue-client.pem", "rogue-client.key")),
    )
    .await;
    assert!(
        rogue.is_err(),
        "a client certificate from another CA must be refused"
    );

    let good = tls_client(server.addr(), &pki, Some(("client.pem", "client.key")))
        .await
        .expect("a client certificate signed by the configured CA is accepted");
    round_trip(&good, "mtls").await;
    assert!(server.is_running());
    assert!(server.stderr().contains("client certificates required"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_by_flag_and_bearer_auth_both_apply() {
    let pki = Pki::generate();
    let (_auth_dir, auth_config) = crate::support::auth_config();
    let mut args = tls_args(&pki);
    args.extend([
        "--tls-client-ca".to_string(),
        pki.arg("ca.pem"),
        "--config".to_string(),
        auth_config.to_str().unwrap().to_string(),
    ]);
    let server = start(&args);
    let client = tls_client(server.addr(), &pki, Some(("client.pem", "client.key")))
        .await
        .expect("mTLS connect");
    // The certificate is not an identity: bearer AUTH is still required.
    let err = client.list_machines().await.expect_err("unauthenticated");
    assert_eq!(error_code(&err), "UNAUTHORIZED");
    let authed = tls_client_with_token(
        server.addr(),
        &pki,
        Some(("client.pem", "client.key")),
        Some(crate::support::AUTH_TOKEN),
    )
    .await
    .expect("mTLS connect with a token");
    authed.list_machines().await.expect("after AUTH");
}
