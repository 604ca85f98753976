//! Peer links inside TLS (`corestate.cluster.tls`): three nodes whose
//! links run over mutual TLS replicate and forward as over plain TCP; a
//! peer port then refuses a plaintext dialer at its first bytes and closes
//! a silent one after the TLS handshake's timeout; a node
//! whose TLS files cannot be read refuses to start, naming the setting.
//! Certificates are made per test (the Raft crate's test PKI).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use tempfile::TempDir;

use crate::harness::{peer_tls_settings, Cluster};
use crate::peer_pki::PeerPki;
use crate::support::Server;

/// The cluster settings of peer links over mutual TLS, every node with
/// `pki`'s certificate `cert` (the test PKI's carry 127.0.0.1).
fn tls_settings(pki: &PeerPki, cert: &str) -> String {
    peer_tls_settings(
        &pki.path(&format!("{cert}.pem")),
        &pki.path(&format!("{cert}.key")),
        &pki.path("ca.pem"),
    )
}

/// How long a peer port may take to refuse a plaintext dialer: well under
/// the cluster handshake's own timeout (2 s), which is all a plaintext
/// listener would give a dialer that sent half a frame.
const PLAINTEXT_REFUSED_WITHIN: Duration = Duration::from_millis(1_000);

/// How long a peer port may keep a dialer that sends nothing: its TLS
/// handshake timeout (2 s) and a margin for a busy machine.
const SILENT_DIALER_CLOSED_WITHIN: Duration = Duration::from_millis(5_000);

#[test]
fn a_cluster_over_mutual_tls_replicates_and_refuses_plaintext_peers() {
    let pki = PeerPki::generate();
    let mut cluster = Cluster::start_with(3, false, &tls_settings(&pki, "node-1"));
    assert!(cluster.peer_tls());
    let leader = cluster.leader();
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    // Through a follower: forwarded to the leader over a TLS link.
    cluster.flip_instances(follower, &["d-1"]);
    cluster.ok_on(
        follower,
        "APPLY_EVENT",
        json!({"instance_id": "d-1", "event": "FLIP"}),
    );
    // Every node holds it: replicated over TLS links.
    cluster.all_converge();
    for node in 1..=3 {
        let got = cluster.ok_on(node, "GET_INSTANCE", json!({"instance_id": "d-1"}));
        assert_eq!(got["state"], "b", "node {node}: {got}");
    }

    // A plaintext dialer's first bytes (the peer frame magic) are not a
    // TLS record: the listener answers with a TLS alert or closes.
    let port = cluster.peers[&leader];
    let mut plain = TcpStream::connect(("127.0.0.1", port)).expect("dial the peer port");
    plain
        .set_read_timeout(Some(PLAINTEXT_REFUSED_WITHIN))
        .unwrap();
    let started = Instant::now();
    plain.write_all(b"CSRP\0\0\0\0").expect("write");
    let mut first = [0u8; 1];
    match plain.read(&mut first) {
        Ok(0) => {}
        Ok(_) => assert_eq!(first[0], 0x15, "a TLS alert record, not a peer frame"),
        Err(e) => panic!(
            "the peer port kept a plaintext dialer for {:?}: {e}",
            started.elapsed()
        ),
    }
    assert!(started.elapsed() < PLAINTEXT_REFUSED_WITHIN);

    // A dialer that sends nothing is closed once the TLS handshake's time
    // (2 s, `PEER_TLS_HANDSHAKE_TIMEOUT_MS`) is up: it holds no connection.
    let mut silent = TcpStream::connect(("127.0.0.1", port)).expect("dial the peer port");
    silent
        .set_read_timeout(Some(SILENT_DIALER_CLOSED_WITHIN))
        .unwrap();
    let started = Instant::now();
    match silent.read(&mut first) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("a silent dialer was kept for {:?}: {e}", started.elapsed()),
    }
    assert!(started.elapsed() < SILENT_DIALER_CLOSED_WITHIN);
}

#[test]
fn a_node_whose_peer_certificate_cannot_be_read_refuses_to_start() {
    let pki = PeerPki::generate();
    let dir = TempDir::new().unwrap();
    let settings = tls_settings(&pki, "node-1").replace("node-1.pem", "missing.pem");
    let yaml = format!(
        "corestate:\n  cluster:\n    node_id: 1\n    name: cluster-tests\n    token: {}\n    \
         peer_listen: \"127.0.0.1:{}\"\n{settings}    members:\n      - {{id: 1, peer: \"127.0.0.1:1\"}}\n",
        crate::harness::CLUSTER_TOKEN,
        crate::support::fresh_port()
    );
    let config = dir.path().join("node.yaml");
    std::fs::write(&config, yaml).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let exited = Server::expect_exit_in(
        &data,
        &["--config", &config.display().to_string()],
        Duration::from_secs(20),
    );
    // A configuration error, as for the client port's TLS files.
    assert_eq!(exited.status.code(), Some(2), "{}", exited.stderr);
    assert!(
        exited.stderr.contains("corestate.cluster.tls")
            && exited.stderr.contains("cert_path")
            && exited.stderr.contains("missing.pem"),
        "{}",
        exited.stderr
    );
}
