//! A throwaway PKI for the peer TLS tests, made per test with rcgen: a CA,
//! a certificate per node signed by it (IP SAN 127.0.0.1 and a DNS name,
//! usable for server and client authentication, as a node's certificate
//! must be), a certificate that carries only the DNS name, and an unrelated
//! CA. Written as PEM files into a temporary directory, because that is
//! what a node reads.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;

use corestate_raft::net::tls::{read_certificates, read_private_key, read_trust_roots};
use corestate_raft::net::{PeerServerName, PeerTls, PeerTlsFiles};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};
use tempfile::TempDir;

/// The DNS name every node certificate carries (for `PeerServerName::Fixed`).
pub const PEERS_DNS_NAME: &str = "peers.corestate.test";

/// Nodes that get a certificate.
pub const NODES_WITH_CERTIFICATES: [u64; 3] = [1, 2, 3];

pub struct PeerPki {
    dir: TempDir,
}

impl PeerPki {
    pub fn generate() -> PeerPki {
        let dir = TempDir::new().expect("temp dir");
        let ca = make_ca("corestate peer test CA");
        let rogue_ca = make_ca("someone else's CA");
        let mut files = vec![
            ("ca.pem".to_string(), ca.pem()),
            ("rogue-ca.pem".to_string(), rogue_ca.pem()),
        ];
        for node in NODES_WITH_CERTIFICATES {
            let (cert, key) = node_certificate(&ca, &format!("node {node}"), true);
            files.push((format!("node-{node}.pem"), cert));
            files.push((format!("node-{node}.key"), key));
        }
        let (cert, key) = node_certificate(&ca, "named only", false);
        files.push(("named-only.pem".to_string(), cert));
        files.push(("named-only.key".to_string(), key));
        for (name, pem) in files {
            std::fs::write(dir.path().join(name), pem).expect("write PEM");
        }
        PeerPki { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Node `node`'s settings: its certificate, the test CA for both
    /// directions, peers' names taken from the address dialled.
    pub fn files(&self, node: u64, require_client_cert: bool) -> PeerTlsFiles {
        PeerTlsFiles {
            cert_path: self.path(&format!("node-{node}.pem")),
            key_path: self.path(&format!("node-{node}.key")),
            require_client_cert,
            client_ca_path: Some(self.path("ca.pem")),
            peer_ca_path: self.path("ca.pem"),
            server_name: PeerServerName::AddressHost,
        }
    }

    pub fn tls(&self, node: u64, require_client_cert: bool) -> PeerTls {
        PeerTls::load(&self.files(node, require_client_cert)).expect("load peer TLS")
    }

    /// Node `node` with an mTLS listener as usual, but dialers that present
    /// no certificate.
    pub fn tls_without_client_cert(&self, node: u64) -> PeerTls {
        let files = self.files(node, true);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client_roots = read_trust_roots("ca", &self.path("ca.pem")).expect("CA");
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(client_roots), provider.clone())
                .build()
                .expect("client verifier");
        let listener = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                read_certificates("cert", &files.cert_path).expect("cert"),
                read_private_key("key", &files.key_path).expect("key"),
            )
            .expect("listener config");
        let dialer = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(read_trust_roots("ca", &files.peer_ca_path).expect("CA"))
            .with_no_client_auth();
        PeerTls::new(
            Arc::new(listener),
            Arc::new(dialer),
            PeerServerName::AddressHost,
        )
    }
}

fn make_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA")
}

/// A node certificate signed by `ca`: `(certificate PEM, key PEM)`.
fn node_certificate(
    ca: &CertifiedIssuer<'static, KeyPair>,
    common_name: &str,
    with_loopback_ip: bool,
) -> (String, String) {
    let mut params = CertificateParams::new(vec![PEERS_DNS_NAME.to_string()]).expect("node params");
    if with_loopback_ip {
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, ca).expect("sign");
    (cert.pem(), key.serialize_pem())
}
