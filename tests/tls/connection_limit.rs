//! Over the connection limit, a TLS client is told RATE_LIMITED.

use std::time::Duration;

use crate::pki::{start, tls_args, tls_client, Pki};
use crate::support::error_code;

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
