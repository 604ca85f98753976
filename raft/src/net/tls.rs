//! TLS and mTLS on peer links: the rustls configurations of a node's peer
//! listener and of its dialers, built once from PEM files, and the
//! per-connection TLS handshakes (bounded in time).
//!
//! The settings are the client port's (`tls.cert_path`, `tls.key_path`,
//! `tls.require_client_cert`, `tls.client_ca_path`), plus two a dialer
//! needs: the CA bundle it trusts for the peers' certificates and the rule
//! for the name it checks them against ([`PeerServerName`]). A node has one
//! certificate: its listener serves it, and its dialers present it when a
//! listener asks for one (mTLS), so it must be usable for both server and
//! client authentication (no extended key usage, or both).
//!
//! A client certificate is checked against the CA only; it is not mapped
//! to a node id (the cluster token handshake, which runs inside TLS, names
//! the node). The crypto provider is named (`ring`), as in the server crate,
//! so a process that links two providers still builds these configs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_rustls::{client, server, TlsAcceptor, TlsConnector};
use futures_util::io::{AsyncRead, AsyncWrite};
use openraft::AsyncRuntime;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::GlommioRuntime;

/// Longest a TLS handshake on a peer link may take, on either side.
pub const PEER_TLS_HANDSHAKE_TIMEOUT_MS: u64 = 2_000;

/// Largest PEM file read (certificate chain, key or CA bundle).
pub const PEER_TLS_PEM_FILE_SIZE_BYTES_MAX: u64 = 1024 * 1024;

/// The name a dialer checks a listener's certificate against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerServerName {
    /// The host part of the address dialled (the membership's
    /// `BasicNode::addr`, or `PeerPool::set_address`'s override): a DNS
    /// name, or an IP address the certificate must carry as an IP SAN.
    AddressHost,
    /// One name for every peer, whatever its address (every node's
    /// certificate carries it): for nodes reached through NAT or proxies.
    Fixed(String),
}

/// Where a node's peer TLS material is, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTlsFiles {
    /// This node's certificate chain, leaf first.
    pub cert_path: PathBuf,
    /// Its private key (PKCS#1, PKCS#8 or SEC1).
    pub key_path: PathBuf,
    /// mTLS: the listener refuses a dialer without a certificate signed by
    /// a CA in `client_ca_path`.
    pub require_client_cert: bool,
    /// CA bundle for dialers' certificates; required with
    /// `require_client_cert`, ignored without.
    pub client_ca_path: Option<PathBuf>,
    /// CA bundle a dialer trusts for listeners' certificates (a CA, or the
    /// peers' self-signed certificates themselves).
    pub peer_ca_path: PathBuf,
    pub server_name: PeerServerName,
}

/// A peer TLS setting that cannot be used: which setting, which file, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTlsError {
    pub setting: &'static str,
    pub path: PathBuf,
    pub message: String,
}

impl fmt::Display for PeerTlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "peer TLS: {} {}: {}",
            self.setting,
            self.path.display(),
            self.message
        )
    }
}

impl std::error::Error for PeerTlsError {}

fn refuse(setting: &'static str, path: &Path, message: impl Into<String>) -> PeerTlsError {
    PeerTlsError {
        setting,
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The whole of a PEM file, refusing anything but a regular file of a sane
/// size.
fn read_pem(setting: &'static str, path: &Path) -> Result<Vec<u8>, PeerTlsError> {
    let meta = std::fs::metadata(path)
        .map_err(|err| refuse(setting, path, format!("cannot open: {err}")))?;
    if !meta.is_file() {
        return Err(refuse(setting, path, "not a regular file"));
    }
    if meta.len() > PEER_TLS_PEM_FILE_SIZE_BYTES_MAX {
        return Err(refuse(
            setting,
            path,
            format!("larger than PEER_TLS_PEM_FILE_SIZE_BYTES_MAX ({PEER_TLS_PEM_FILE_SIZE_BYTES_MAX} bytes)"),
        ));
    }
    std::fs::read(path).map_err(|err| refuse(setting, path, format!("cannot read: {err}")))
}

/// Every certificate in a PEM file; at least one.
pub fn read_certificates(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, PeerTlsError> {
    let pem = read_pem(setting, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| refuse(setting, path, format!("bad PEM: {err}")))?;
    if certs.is_empty() {
        return Err(refuse(setting, path, "no BEGIN CERTIFICATE block"));
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub fn read_private_key(
    setting: &'static str,
    path: &Path,
) -> Result<PrivateKeyDer<'static>, PeerTlsError> {
    let pem = read_pem(setting, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|err| {
        refuse(
            setting,
            path,
            format!("no PKCS#1, PKCS#8 or SEC1 private key: {err}"),
        )
    })
}

/// A CA bundle as trust anchors.
pub fn read_trust_roots(setting: &'static str, path: &Path) -> Result<RootCertStore, PeerTlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(setting, path)? {
        roots
            .add(cert)
            .map_err(|err| refuse(setting, path, format!("not a usable CA: {err}")))?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A node's peer TLS: how its listener accepts and how its dialers
/// connect. Cheap to clone (two `Arc`s); `Send`, so it can be built once
/// and handed to every executor.
#[derive(Clone)]
pub struct PeerTls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    server_name: PeerServerName,
}

impl fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl PeerTls {
    /// From configurations built elsewhere (tests; a caller with its own
    /// certificate store).
    pub fn new(
        listener: Arc<ServerConfig>,
        dialer: Arc<ClientConfig>,
        server_name: PeerServerName,
    ) -> PeerTls {
        PeerTls {
            acceptor: TlsAcceptor::from(listener),
            connector: TlsConnector::from(dialer),
            server_name,
        }
    }

    /// Reads every file now, so a bad setting stops the node before it
    /// listens, with an error naming the setting and the file.
    pub fn load(files: &PeerTlsFiles) -> Result<PeerTls, PeerTlsError> {
        let chain = read_certificates("cert_path", &files.cert_path)?;
        let key = read_private_key("key_path", &files.key_path)?;
        let peer_roots = read_trust_roots("peer_ca_path", &files.peer_ca_path)?;
        let client_roots = if files.require_client_cert {
            let Some(ca_path) = &files.client_ca_path else {
                return Err(refuse(
                    "client_ca_path",
                    Path::new(""),
                    "require_client_cert is set but no CA bundle is given",
                ));
            };
            Some((read_trust_roots("client_ca_path", ca_path)?, ca_path))
        } else {
            None
        };
        let key_mismatch = |err: rustls::Error| {
            refuse(
                "key_path",
                &files.key_path,
                format!(
                    "does not fit the certificate in {}: {err}",
                    files.cert_path.display()
                ),
            )
        };
        let no_version = |err: rustls::Error| {
            refuse(
                "cert_path",
                &files.cert_path,
                format!("no TLS version: {err}"),
            )
        };

        let listener = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(no_version)?;
        let listener = match client_roots {
            None => listener.with_no_client_auth(),
            Some((roots, ca_path)) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|err| {
                            refuse(
                                "client_ca_path",
                                ca_path,
                                format!("not a usable CA bundle: {err}"),
                            )
                        })?;
                listener.with_client_cert_verifier(verifier)
            }
        };
        let listener = listener
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(key_mismatch)?;

        // The dialer always carries the node's certificate; rustls sends it
        // only to a listener that asks for one.
        let dialer = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(no_version)?
            .with_root_certificates(peer_roots)
            .with_client_auth_cert(chain, key)
            .map_err(key_mismatch)?;
        Ok(PeerTls::new(
            Arc::new(listener),
            Arc::new(dialer),
            files.server_name.clone(),
        ))
    }

    /// The name `addr`'s certificate must carry under this node's rule.
    pub fn name_to_verify(&self, addr: &str) -> Result<ServerName<'static>, String> {
        let name = match &self.server_name {
            PeerServerName::AddressHost => address_host(addr),
            PeerServerName::Fixed(name) => name.as_str(),
        };
        ServerName::try_from(name.to_string())
            .map_err(|err| format!("{name:?} is not a name to verify a certificate by: {err}"))
    }

    /// Dialer side: the TLS handshake with the listener at `addr`.
    pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        addr: &str,
        stream: S,
    ) -> Result<client::TlsStream<S>, String> {
        let name = self.name_to_verify(addr)?;
        GlommioRuntime::timeout(
            tls_handshake_timeout(),
            self.connector.connect(name, stream),
        )
        .await
        .map_err(|_| timed_out())?
        .map_err(|err| format!("TLS: {err}"))
    }

    /// Listener side: the TLS handshake with a dialer.
    pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
    ) -> Result<server::TlsStream<S>, String> {
        GlommioRuntime::timeout(tls_handshake_timeout(), self.acceptor.accept(stream))
            .await
            .map_err(|_| timed_out())?
            .map_err(|err| format!("TLS: {err}"))
    }
}

fn tls_handshake_timeout() -> Duration {
    Duration::from_millis(PEER_TLS_HANDSHAKE_TIMEOUT_MS)
}

fn timed_out() -> String {
    format!("TLS: no handshake within {PEER_TLS_HANDSHAKE_TIMEOUT_MS} ms")
}

/// The host of `host:port` or `[v6]:port`; a bare host as it is.
fn address_host(addr: &str) -> &str {
    let host = match addr.rsplit_once(':') {
        // A bare IPv6 address has colons but no port.
        Some((host, _port)) if !host.contains(':') || host.ends_with(']') => host,
        _ => addr,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_is_the_address_without_its_port() {
        assert_eq!(address_host("127.0.0.1:7001"), "127.0.0.1");
        assert_eq!(
            address_host("node-2.peers.internal:7001"),
            "node-2.peers.internal"
        );
        assert_eq!(address_host("[::1]:7001"), "::1");
        assert_eq!(address_host("::1"), "::1");
        assert_eq!(address_host("node-2"), "node-2");
    }

    #[test]
    fn a_missing_file_is_named_in_the_error() {
        let files = PeerTlsFiles {
            cert_path: PathBuf::from("/nonexistent/peer.pem"),
            key_path: PathBuf::from("/nonexistent/peer.key"),
            require_client_cert: false,
            client_ca_path: None,
            peer_ca_path: PathBuf::from("/nonexistent/ca.pem"),
            server_name: PeerServerName::AddressHost,
        };
        let err = PeerTls::load(&files).expect_err("no such file");
        assert_eq!(err.setting, "cert_path");
        assert!(err.to_string().contains("/nonexistent/peer.pem"), "{err}");
    }
}
