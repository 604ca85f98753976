//! With TLS configured the API speaks HTTPS with the same certificate (and,
//! with a client CA, requires client certificates like RCP does).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};

use crate::client::{agent_config, wait_listening, Api};
use crate::pki::{tls_args, Pki};
use crate::support::{fresh_port, Server};

fn tls_agent(pki: &Pki, client: Option<(&str, &str)>) -> ureq::Agent {
    let read = |name: &str| std::fs::read(pki.path(name)).expect("read PEM");
    let ca = Certificate::from_pem(&read("ca.pem"))
        .expect("CA")
        .to_owned();
    let mut tls = TlsConfig::builder().root_certs(RootCerts::Specific(Arc::new(vec![ca])));
    if let Some((cert, key)) = client {
        let cert = Certificate::from_pem(&read(cert)).expect("cert").to_owned();
        let key = PrivateKey::from_pem(&read(key)).expect("key").to_owned();
        tls = tls.client_cert(Some(ClientCert::new_with_certs(&[cert], key)));
    }
    agent_config().tls_config(tls.build()).build().into()
}

fn start_tls(pki: &Pki, extra: &[String]) -> (Server, std::net::SocketAddr) {
    let port = fresh_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args: Vec<String> = vec!["--http-listen".into(), listen.clone()];
    args.extend(tls_args(pki));
    args.extend_from_slice(extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(&args);
    let addr = listen.parse().unwrap();
    wait_listening(addr);
    (server, addr)
}

#[test]
fn the_api_speaks_https_with_the_servers_certificate() {
    let pki = Pki::generate();
    let (_server, addr) = start_tls(&pki, &[]);
    let api = Api::new(addr, "https", tls_agent(&pki, None));
    api.get("/v1/health").expect(200);
    assert_eq!(
        api.get("/v1/info").expect(200).json()["server_name"],
        "corestate"
    );
    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    plain
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(!got.starts_with(b"HTTP/1.1 200"), "{got:?}");
    // A client that does not trust the test CA fails its handshake.
    let untrusting = Api::new(addr, "https", agent_config().build().into());
    assert!(untrusting.request("GET", "/v1/health", None, &[]).is_err());
    // The server still serves.
    api.get("/v1/health").expect(200);
}

#[test]
fn with_a_client_ca_the_api_requires_a_client_certificate() {
    let pki = Pki::generate();
    let (_server, addr) = start_tls(&pki, &["--tls-client-ca".into(), pki.arg("ca.pem")]);
    let anonymous = Api::new(addr, "https", tls_agent(&pki, None));
    assert!(anonymous.request("GET", "/v1/health", None, &[]).is_err());
    let rogue = Api::new(
        addr,
        "https",
        tls_agent(&pki, Some(("rogue-client.pem", "rogue-client.key"))),
    );
    assert!(rogue.request("GET", "/v1/health", None, &[]).is_err());
    let known = Api::new(
        addr,
        "https",
        tls_agent(&pki, Some(("client.pem", "client.key"))),
    );
    known.get("/v1/health").expect(200);
}
