//! The official Rust client, `rstmdb-client` 0.3.0, connected to a server
//! under test, and the RCP code of its errors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::raw_client::RESPONSE_TIMEOUT;

/// Connect the official Rust client and spawn its read loop (rstmdb-client
/// 0.3.0 has no one-call connect: without the loop every request times out).
pub async fn rstmdb_connect(
    addr: SocketAddr,
    token: Option<&str>,
) -> Result<rstmdb_client::Client, rstmdb_client::ClientError> {
    let mut config = rstmdb_client::ConnectionConfig::new(addr)
        .with_client_name("corestate-tests")
        .with_connect_timeout(Duration::from_secs(5))
        .with_request_timeout(RESPONSE_TIMEOUT);
    if let Some(token) = token {
        config = config.with_auth_token(token);
    }
    let client = rstmdb_client::Client::new(config);
    client.connect().await?;
    let conn: Arc<rstmdb_client::Connection> = client.connection();
    tokio::spawn(async move {
        let _ = conn.read_loop().await;
    });
    Ok(client)
}

/// The RCP code of a client error, or a description of a non-server error.
pub fn error_code(err: &rstmdb_client::ClientError) -> String {
    match err {
        rstmdb_client::ClientError::ServerError { code, .. } => code.to_string(),
        other => format!("<not a server error: {other}>"),
    }
}
