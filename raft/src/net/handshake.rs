//! The first exchange on a peer connection: the dialer says who it is and
//! proves it knows the cluster token; the listener welcomes it or refuses
//! with an `Error` frame and closes.
//!
//! The token is compared as SHA-256 digests with a constant-time equality,
//! so the time a refusal takes says nothing about how much of the token
//! was right. With peer TLS (`tls.rs`) the handshake runs inside the TLS
//! session; without it the token crosses the network in clear text.

use std::fmt;
use std::time::Duration;

use futures_util::io::{AsyncRead, AsyncWrite};
use openraft::AsyncRuntime;
use sha2::{Digest, Sha256};

use super::frame::{
    encode_frame, read_frame, write_frame, FrameError, FrameKind, HANDSHAKE_BODY_MAX_BYTES,
    PROTOCOL_VERSION,
};
use super::wire::{from_json, to_json, ErrorBody, ErrorCode, Hello, Welcome};
use crate::GlommioRuntime;

/// How long either side waits for the other's handshake frame.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 2_000;

/// Who this node is in the cluster, and the secret every member shares.
#[derive(Clone)]
pub struct ClusterCredentials {
    pub cluster_name: String,
    cluster_token: String,
    token_digest: [u8; 32],
    pub node_id: u64,
}

impl fmt::Debug for ClusterCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCredentials")
            .field("cluster_name", &self.cluster_name)
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl ClusterCredentials {
    pub fn new(
        cluster_name: impl Into<String>,
        cluster_token: impl Into<String>,
        node_id: u64,
    ) -> ClusterCredentials {
        let cluster_token = cluster_token.into();
        let token_digest = Sha256::digest(cluster_token.as_bytes()).into();
        ClusterCredentials {
            cluster_name: cluster_name.into(),
            cluster_token,
            token_digest,
            node_id,
        }
    }

    fn token_matches(&self, offered: &str) -> bool {
        let offered: [u8; 32] = Sha256::digest(offered.as_bytes()).into();
        constant_time_eq(&offered, &self.token_digest)
    }
}

/// Equality whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(difference) == 0
}

/// Why a handshake did not complete.
#[derive(Debug)]
pub enum HandshakeError {
    /// The other side did not answer within [`HANDSHAKE_TIMEOUT_MS`].
    TimedOut,
    /// The stream failed or carried something that is not a frame.
    Frame(FrameError),
    /// The other side sent a frame that does not belong in a handshake.
    Unexpected(String),
    /// The listener refused us (dialer side), or we refused the dialer
    /// (listener side).
    Refused(String),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::TimedOut => {
                write!(f, "no handshake within {HANDSHAKE_TIMEOUT_MS} ms")
            }
            HandshakeError::Frame(err) => write!(f, "handshake: {err}"),
            HandshakeError::Unexpected(what) => write!(f, "handshake: unexpected {what}"),
            HandshakeError::Refused(why) => write!(f, "handshake refused: {why}"),
        }
    }
}

impl std::error::Error for HandshakeError {}

fn handshake_timeout() -> Duration {
    Duration::from_millis(HANDSHAKE_TIMEOUT_MS)
}

/// Dialer side: introduces `me`; returns the listener's node id.
pub async fn dial<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    me: &ClusterCredentials,
) -> Result<u64, HandshakeError> {
    let exchange = async {
        let hello = Hello {
            cluster_name: me.cluster_name.clone(),
            cluster_token: me.cluster_token.clone(),
            node_id: me.node_id,
            protocol_version: PROTOCOL_VERSION,
        };
        let frame = encode_frame(FrameKind::Hello, 0, 0, &to_json(&hello));
        write_frame(stream, &frame)
            .await
            .map_err(|err| HandshakeError::Frame(FrameError::Io(err)))?;
        let answer = read_frame(stream, HANDSHAKE_BODY_MAX_BYTES)
            .await
            .map_err(HandshakeError::Frame)?;
        match answer.kind {
            FrameKind::Welcome => from_json::<Welcome>(&answer.body)
                .map(|welcome| welcome.node_id)
                .map_err(|err| HandshakeError::Unexpected(format!("welcome body: {err}"))),
            FrameKind::Error => Err(HandshakeError::Refused(
                from_json::<ErrorBody>(&answer.body)
                    .map(|body| body.message)
                    .unwrap_or_else(|err| format!("(undecodable refusal: {err})")),
            )),
            other => Err(HandshakeError::Unexpected(format!("{other:?} frame"))),
        }
    };
    GlommioRuntime::timeout(handshake_timeout(), exchange)
        .await
        .unwrap_or(Err(HandshakeError::TimedOut))
}

/// Listener side: checks the dialer's hello against `me`; returns the
/// dialer's node id, or refuses it (an `Error` frame; the caller closes).
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    me: &ClusterCredentials,
) -> Result<u64, HandshakeError> {
    let exchange = async {
        let frame = read_frame(stream, HANDSHAKE_BODY_MAX_BYTES)
            .await
            .map_err(HandshakeError::Frame)?;
        if frame.kind != FrameKind::Hello {
            return Err(HandshakeError::Unexpected(format!(
                "{:?} frame before hello",
                frame.kind
            )));
        }
        let verdict = match from_json::<Hello>(&frame.body) {
            Err(err) => Err(format!("undecodable hello: {err}")),
            Ok(hello) => check_hello(&hello, me).map(|()| hello.node_id),
        };
        match verdict {
            Ok(node_id) => {
                let welcome = Welcome {
                    node_id: me.node_id,
                };
                let frame = encode_frame(FrameKind::Welcome, 0, 0, &to_json(&welcome));
                write_frame(stream, &frame)
                    .await
                    .map_err(|err| HandshakeError::Frame(FrameError::Io(err)))?;
                Ok(node_id)
            }
            Err(why) => {
                let body = ErrorBody::new(ErrorCode::HandshakeRefused, why.clone());
                let frame = encode_frame(FrameKind::Error, 0, 0, &to_json(&body));
                // Best effort: the dialer may already be gone.
                let _ = write_frame(stream, &frame).await;
                Err(HandshakeError::Refused(why))
            }
        }
    };
    GlommioRuntime::timeout(handshake_timeout(), exchange)
        .await
        .unwrap_or(Err(HandshakeError::TimedOut))
}

fn check_hello(hello: &Hello, me: &ClusterCredentials) -> Result<(), String> {
    // The token first, so a stranger learns nothing else about us.
    if !me.token_matches(&hello.cluster_token) {
        return Err("wrong cluster token".to_string());
    }
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} is not {PROTOCOL_VERSION}",
            hello.protocol_version
        ));
    }
    if hello.cluster_name != me.cluster_name {
        return Err(format!(
            "cluster {:?} is not {:?}",
            hello.cluster_name, me.cluster_name
        ));
    }
    if hello.node_id == me.node_id {
        return Err(format!("node id {} is this node's own", hello.node_id));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_by_digest() {
        let me = ClusterCredentials::new("c", "secret", 1);
        assert!(me.token_matches("secret"));
        assert!(!me.token_matches("secreT"));
        assert!(!me.token_matches(""));
    }

    #[test]
    fn a_hello_from_another_cluster_or_version_is_refused() {
        let me = ClusterCredentials::new("c", "t", 1);
        let hello = |name: &str, token: &str, node_id, version| Hello {
            cluster_name: name.to_string(),
            cluster_token: token.to_string(),
            node_id,
            protocol_version: version,
        };
        assert!(check_hello(&hello("c", "t", 2, PROTOCOL_VERSION), &me).is_ok());
        assert!(check_hello(&hello("c", "x", 2, PROTOCOL_VERSION), &me).is_err());
        assert!(check_hello(&hello("d", "t", 2, PROTOCOL_VERSION), &me).is_err());
        assert!(check_hello(&hello("c", "t", 2, PROTOCOL_VERSION + 1), &me).is_err());
        assert!(check_hello(&hello("c", "t", 1, PROTOCOL_VERSION), &me).is_err());
    }
}
