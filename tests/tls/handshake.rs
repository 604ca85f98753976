//! The client verifies the server against the test CA; plain TCP on the TLS
//! port is closed without an answer; a stalled handshake blocks nobody.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::pki::{read_until_closed, round_trip, start, tls_args, tls_client, Pki};
use crate::support::{rcpx_json, request};

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
    let ping = rcpx_json(&request("p1", "PING", serde_json::Value::Null));
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
