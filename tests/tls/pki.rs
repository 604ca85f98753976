//! Certificates generated per test (rcgen), TLS clients built with
//! `rstmdb-client`'s own TLS support, and a server started with TLS on.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rstmdb_client::{Client, ClientError, ConnectionConfig, TlsClientConfig};
use serde_json::json;
use tempfile::TempDir;

use crate::support::{Server, RESPONSE_TIMEOUT};

/// How long a refused TLS client may take to notice.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// PEM files of a test PKI: a CA, a server certificate for
/// localhost/127.0.0.1 signed by it, a client certificate signed by it, and
/// a client certificate from an unrelated CA.
pub struct Pki {
    pub dir: TempDir,
}

impl Pki {
    pub fn generate() -> Pki {
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

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn arg(&self, name: &str) -> String {
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
pub async fn tls_client(
    addr: SocketAddr,
    pki: &Pki,
    client_cert: Option<(&str, &str)>,
) -> Result<Client, ClientError> {
    tls_client_with_token(addr, pki, client_cert, None).await
}

pub async fn tls_client_with_token(
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
pub async fn round_trip(client: &Client, tag: &str) {
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
pub fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
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

pub fn tls_args(pki: &Pki) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        pki.arg("server.pem"),
        "--tls-key".into(),
        pki.arg("server.key"),
    ]
}

pub fn start(args: &[String]) -> Server {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&args)
}
