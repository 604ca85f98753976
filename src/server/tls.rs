//! Server-side TLS (docs/PROTOCOL.md §13.4): the rustls configuration built once at
//! start-up from PEM files, and the per-connection handshake.
//!
//! Every connection on a TLS port must start with a handshake; there is no
//! plaintext fallback. The certificate chain, the key and (for mTLS) the
//! client CA bundle are read before the server listens, so a missing or
//! malformed file stops the start with an error that names the file
//! (`main` exits 2). With a client CA, a client that presents no
//! certificate, or one the CA did not sign, fails the handshake; the
//! certificate is not mapped to an identity (bearer AUTH still applies).
//!
//! The crypto provider is always named (`ring`): a process that links
//! rustls with two providers (a test build pulls aws-lc-rs through the Rust
//! client) cannot pick a default one, and the plain builders panic then.
//!
//! The handshake runs in the connection's own task with a time limit
//! (`TLS_HANDSHAKE_TIMEOUT_MS`), so a slow or silent peer never holds up the
//! accept loop or any other connection.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_rustls::server::TlsStream;
use futures_rustls::TlsAcceptor;
use glommio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::config::TlsConfig;

/// Longest a client may take to complete the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Largest PEM file read (certificate chain, key or CA bundle).
pub const TLS_PEM_FILE_SIZE_BYTES_MAX: u64 = 1024 * 1024;

/// A TLS setting that cannot be used; `key` names the setting, `path` the
/// file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSetupError {
    pub key: &'static str,
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invalid TLS setup: {} {}: {}",
            self.key, self.path, self.message
        )
    }
}

impl std::error::Error for TlsSetupError {}

fn setup_error(key: &'static str, path: &Path, message: impl Into<String>) -> TlsSetupError {
    TlsSetupError {
        key,
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// The whole of a PEM file, refusing absurd sizes.
fn read_pem(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsSetupError> {
    let meta =
        std::fs::metadata(path).map_err(|e| setup_error(key, path, format!("cannot open: {e}")))?;
    if !meta.is_file() {
        return Err(setup_error(key, path, "not a regular file"));
    }
    if meta.len() > TLS_PEM_FILE_SIZE_BYTES_MAX {
        return Err(setup_error(
            key,
            path,
            format!("larger than {TLS_PEM_FILE_SIZE_BYTES_MAX} bytes"),
        ));
    }
    std::fs::read(path).map_err(|e| setup_error(key, path, format!("cannot read: {e}")))
}

fn read_certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem = read_pem(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| setup_error(key, path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(setup_error(
            key,
            path,
            "no PEM certificate (BEGIN CERTIFICATE) found",
        ));
    }
    Ok(certs)
}

fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    let key = "tls.key_path";
    let pem = read_pem(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        setup_error(
            key,
            path,
            format!("no usable PEM private key (PKCS#1, PKCS#8 or SEC1): {e}"),
        )
    })
}

/// Build the acceptor from the configuration; `None` when TLS is off.
/// Reads every file now, so errors surface before the server listens.
pub fn load(cfg: &TlsConfig) -> Result<Option<TlsAcceptor>, TlsSetupError> {
    if !cfg.enabled {
        return Ok(None);
    }
    // The configuration module guarantees both paths when TLS is on.
    let (Some(cert_path), Some(key_path)) = (&cfg.cert_path, &cfg.key_path) else {
        return Err(TlsSetupError {
            key: "tls.cert_path",
            path: String::new(),
            message: "TLS is enabled without a certificate and key".into(),
        });
    };
    let chain = read_certificates("tls.cert_path", cert_path)?;
    let private_key = read_private_key(key_path)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| setup_error("tls", cert_path, format!("no usable TLS version: {e}")))?;
    let builder = if cfg.require_client_cert {
        let Some(ca_path) = &cfg.client_ca_path else {
            return Err(TlsSetupError {
                key: "tls.client_ca_path",
                path: String::new(),
                message: "client certificates are required but no CA bundle is set".into(),
            });
        };
        let mut roots = RootCertStore::empty();
        for cert in read_certificates("tls.client_ca_path", ca_path)? {
            roots.add(cert).map_err(|e| {
                setup_error(
                    "tls.client_ca_path",
                    ca_path,
                    format!("unusable CA certificate: {e}"),
                )
            })?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| {
                setup_error(
                    "tls.client_ca_path",
                    ca_path,
                    format!("unusable CA bundle: {e}"),
                )
            })?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder.with_single_cert(chain, private_key).map_err(|e| {
        setup_error(
            "tls.key_path",
            key_path,
            format!(
                "does not fit the certificate in {}: {e}",
                cert_path.display()
            ),
        )
    })?;
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// Why a handshake did not complete.
#[derive(Debug)]
pub enum HandshakeError {
    TimedOut,
    Failed(std::io::Error),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::TimedOut => {
                write!(
                    f,
                    "no complete handshake within {TLS_HANDSHAKE_TIMEOUT_MS} ms"
                )
            }
            HandshakeError::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// Run the server side of the handshake on `stream`, bounded in time.
pub async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
) -> Result<TlsStream<TcpStream>, HandshakeError> {
    let accept = async {
        acceptor
            .accept(stream)
            .await
            .map_err(HandshakeError::Failed)
    };
    futures_lite::future::or(accept, async {
        glommio::timer::sleep(Duration::from_millis(TLS_HANDSHAKE_TIMEOUT_MS)).await;
        Err(HandshakeError::TimedOut)
    })
    .await
}
