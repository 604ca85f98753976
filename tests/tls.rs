//! TLS and mTLS against the real binary (spec §13.4), with the official
//! Rust client's own TLS support and certificates generated per test
//! (rcgen): the client verifies the server against a test CA; with a client
//! CA configured, a client without a certificate signed by it is refused.
//! Plain TCP on a TLS port fails cleanly and disturbs nobody; a stalled
//! handshake does not hold up other connections; unusable certificate files
//! stop the start with exit status 2 and the file's name.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rstmdb_client::{Client, ClientError, ConnectionConfig, TlsClientConfig};
use serde_json::json;
use tempfile::TempDir;

use support::{error_code, Server, RESPONSE_TIMEOUT};

/// How long a refused TLS client may take to notice.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// PEM files of a test PKI: a CA, a server certificate for
/// localhost/127.0.0.1 signed by it, a client certificate signed by it, and
/// a client certificate from an unrelated CA.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn generate() -> Pki {
        let dir = TempDir::new().expect("temp dir");
        let ca = make_ca("corestate test CA");
        let rogue_ca = make_ca("someone else's CA");

        let mut server = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        server
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        server
            .distinguished_name
            .push(DnType::CommonName, "corestate test server");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate().unwrap();
        let server_cert = server.signed_by(&server_key, &ca).unwrap();

        let client = |issuer: &CertifiedIssuer<'static, KeyPair>| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, "corestate test client");
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (client_cert, client_key) = client(&ca);
        let (rogue_cert, rogue_key) = client(&rogue_ca);

        let files = [
            ("ca.pem", ca.pem()),
            ("server.pem", server_cert.pem()),
            ("server.key", server_key.serialize_pem()),
            ("client.pem", client_cert),
            ("client.key", client_key),
            ("rogue-client.pem", rogue_cert),
            ("rogue-client.key", rogue_key),
            ("garbage.pem", "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n".to_string()),
            ("empty.pem", String::new()),
        ];
        for (name, pem) in files {
            std::fs::write(dir.path().join(name), pem).expect("write PEM");
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).to_str().expect("utf-8 path").to_string()
    }
}

fn make_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// The test process links rustls with two providers (ring for the server
/// crate, aws-lc-rs through rstmdb-client), so the client's
/// `ClientConfig::builder()` needs a process default.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Connect the official Rust client over TLS and spawn its read loop.
async fn tls_client(
    addr: SocketAddr,
    pki: &Pki,
    client_cert: Option<(&str, &str)>,
) -> Result<Client, ClientError> {
    tls_client_with_token(addr, pki, client_cert, None).await
}

async fn tls_client_with_token(
    addr: SocketAddr,
    pki: &Pki,
    client_cert: Option<(&str, &str)>,
    token: Option<&str>,
) -> Result<Client, ClientError> {
    install_crypto_provider();
    let mut tls = TlsClientConfig::new().with_ca_cert(pki.path("ca.pem"));
    if let Some((cert, key)) = client_cert {
        tls = tls.with_client_cert(pki.path(cert), pki.path(key));
    }
    let mut config = ConnectionConfig::new(addr)
        .with_client_name("corestate-tls-tests")
        .with_connect_timeout(Duration::from_secs(5))
        .with_request_timeout(RESPONSE_TIMEOUT)
        .with_tls(tls);
    if let Some(token) = token {
        config = config.with_auth_token(token);
    }
    let client = Client::new(config);
    client.connect().await?;
    let conn = client.connection();
    tokio::spawn(async move {
        let _ = conn.read_loop().await;
    });
    Ok(client)
}

/// A short session that writes and reads back: the connection works.
async fn round_trip(client: &Client, tag: &str) {
    let machine = json!({
        "states": ["open", "closed"],
        "initial": "open",
        "transitions": [{"from": "open", "event": "CLOSE", "to": "closed"}]
    });
    client
        .put_machine("door", 1, machine)
        .await
        .expect("PUT_MACHINE over TLS");
    let id = format!("door-{tag}");
    client
        .create_instance("door", 1, Some(&id), None, None)
        .await
        .expect("CREATE_INSTANCE over TLS");
    let applied = client
        .apply_event(&id, "CLOSE", None, None, None)
        .await
        .expect("APPLY_EVENT over TLS");
    assert_eq!(applied.to_state, "closed");
    let got = client
        .get_instance(&id)
        .await
        .expect("GET_INSTANCE over TLS");
    assert_eq!(got.state, "closed");
}

/// Bytes a raw socket receives until the server closes it (or the timeout).
fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    stream
        .set_read_timeout(Some(REFUSAL_TIMEOUT))
        .expect("set read timeout");
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + REFUSAL_TIMEOUT;
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("server did not close the connection: {e} (got {got:?})"),
        }
        assert!(Instant::now() < deadline, "server kept the connection open");
    }
}

fn tls_args(pki: &Pki) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        pki.arg("server.pem"),
        "--tls-key".into(),
        pki.arg("server.key"),
    ]
}

fn start(args: &[String]) -> Server {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_speaks_tls_and_verifies_the_server() {
    let pki = Pki::generate();
    let server = start(&tls_args(&pki));
    let client = tls_client(server.addr(), &pki, None)
        .await
        .expect("TLS connect with the test CA");
    round_trip(&client, "tls").await;
    assert!(
        server.stderr().contains("(TLS)"),
        "{}",
        server.stderr_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tcp_on_a_tls_port_is_closed_without_an_answer_and_disturbs_nobody() {
    let pki = Pki::generate();
    let mut server = start(&tls_args(&pki));
    let client = tls_client(server.addr(), &pki, None)
        .await
        .expect("TLS connect");

    // An RCPX PING in clear text: the handshake fails, the socket closes.
    let mut plain = TcpStream::connect(server.addr()).expect("connect");
    let ping = support::rcpx_json(&support::request("p1", "PING", serde_json::Value::Null));
    plain.write_all(&ping).expect("write");
    let got = read_until_closed(&mut plain);
    assert!(
        !got.windows(4).any(|w| w == b"RCPX"),
        "a TLS port must not answer RCP in clear text: {got:?}"
    );
    // At most a TLS alert record (content type 21).
    assert!(got.is_empty() || got[0] == 0x15, "unexpected bytes {got:?}");

    // The TLS connection opened before still works, and new ones do too.
    round_trip(&client, "after-plain").await;
    let again = tls_client(server.addr(), &pki, None)
        .await
        .expect("reconnect");
    again.ping().await.expect("PING over TLS");
    assert!(server.is_running());
    let log = server.stderr();
    assert!(
        log.contains("TLS handshake failed") && log.contains("tls_handshake"),
        "the refusal must be logged:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_does_not_block_the_accept_loop() {
    let pki = Pki::generate();
    let server = start(&tls_args(&pki));
    // Ten peers that connect and never send a ClientHello.
    let stalled: Vec<TcpStream> = (0..10)
        .map(|_| TcpStream::connect(server.addr()).expect("connect"))
        .collect();
    let started = Instant::now();
    let client = tls_client(server.addr(), &pki, None)
        .await
        .expect("TLS connect while others stall");
    client.ping().await.expect("PING");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a TLS client waited {:?} behind stalled handshakes",
        started.elapsed()
    );
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_from_the_config_file_refuses_clients_without_a_valid_certificate() {
    let pki = Pki::generate();
    let yaml = format!(
        "tls:\n  enabled: true\n  cert_path: \"{}\"\n  key_path: \"{}\"\n  require_client_cert: true\n  client_ca_path: \"{}\"\n",
        pki.arg("server.pem"),
        pki.arg("server.key"),
        pki.arg("ca.pem")
    );
    let config = support::write_config(pki.dir.path(), &yaml);
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
    let (_auth_dir, auth_config) = support::auth_config();
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
        Some(support::AUTH_TOKEN),
    )
    .await
    .expect("mTLS connect with a token");
    authed.list_machines().await.expect("after AUTH");
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_connection_limit_a_tls_client_is_told_rate_limited() {
    let pki = Pki::generate();
    let mut args = tls_args(&pki);
    args.extend(["--max-connections".to_string(), "1".to_string()]);
    let server = start(&args);
    let first = loop {
        match tls_client(server.addr(), &pki, None).await {
            Ok(c) => break c,
            // The readiness probe may still hold the one slot for a moment.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    match tls_client(server.addr(), &pki, None).await {
        Err(e) => assert_eq!(error_code(&e), "RATE_LIMITED", "{e}"),
        Ok(_) => panic!("a second TLS connection must be refused"),
    }
    first
        .ping()
        .await
        .expect("the accepted TLS connection still works");
}
