//! Peer links over TLS, on real TCP (127.0.0.1, fresh ports) with
//! certificates made per test: one link between a listener and a dialer
//! (up when both sides agree; refused, quickly and again on every redial,
//! when they do not), and three members that elect and replicate over
//! mTLS, or cannot when one of them presents no certificate.

#[path = "support/mem_store.rs"]
mod mem_store;
#[path = "support/member_thread.rs"]
mod member_thread;
#[path = "support/memlock.rs"]
mod memlock;
#[path = "support/peer_member.rs"]
mod peer_member;
#[path = "support/peer_pki.rs"]
mod peer_pki;

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use corestate_raft::net::client::REDIAL_BACKOFF_MIN_MS;
use corestate_raft::net::frame::FrameKind;
use corestate_raft::net::wire::ErrorCode;
use corestate_raft::net::{
    CallError, ClusterCredentials, GroupDirectory, PeerClient, PeerServer, PeerServerName, PeerTls,
};
use corestate_raft::GlommioRuntime;
use mem_store::KvSnapshot;
use openraft::{AsyncRuntime, BasicNode, Config, ServerState};
use peer_member::{wait_until, PeerMember, CLUSTER_NAME, CLUSTER_TOKEN};
use peer_pki::{PeerPki, PEERS_DNS_NAME};

const LISTENER_NODE: u64 = 1;
const DIALER_NODE: u64 = 2;
/// A group no listener has: a link that is up answers `unknown_group`.
const NO_SUCH_GROUP: u64 = 99;

/// One call's own bound: far above any refusal, so a hang shows as
/// `Timeout`, not `Unreachable`.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// A refused link must be known refused within this: well under both the
/// TLS and the cluster handshake timeouts (2 s each), so a refusal is an
/// answer, not a timeout.
const REFUSAL_MAX: Duration = Duration::from_millis(1_000);
/// Dials per link test: the first, and a redial after the backoff.
const DIALS_PER_LINK_TEST: usize = 2;

/// What each of [`DIALS_PER_LINK_TEST`] calls from a dialer with
/// `dialer_tls` to a listener with `listener_tls` got, and how long it
/// took. Both ends run on one executor on the test thread.
fn link_outcomes(
    listener_tls: Option<PeerTls>,
    dialer_tls: Option<PeerTls>,
) -> Vec<(Result<Vec<u8>, CallError>, Duration)> {
    memlock::raise_memlock_limit();
    let mut rt = GlommioRuntime::new(1);
    rt.block_on(async move {
        let listener = ClusterCredentials::new(CLUSTER_NAME, CLUSTER_TOKEN, LISTENER_NODE);
        let server = PeerServer::start_with_tls(
            "127.0.0.1:0",
            listener,
            Arc::new(GroupDirectory::new()),
            listener_tls,
        )
        .expect("bind");
        let dialer = ClusterCredentials::new(CLUSTER_NAME, CLUSTER_TOKEN, DIALER_NODE);
        let client = PeerClient::with_tls(
            Rc::new(dialer),
            dialer_tls,
            LISTENER_NODE,
            server.local_addr().to_string(),
        );
        let mut outcomes = Vec::new();
        for _ in 0..DIALS_PER_LINK_TEST {
            let started = Instant::now();
            let result = client
                .call(FrameKind::Vote, NO_SUCH_GROUP, b"{}", CALL_TIMEOUT)
                .await;
            outcomes.push((result, started.elapsed()));
            // Past the backoff, so the next call dials again.
            glommio::timer::sleep(Duration::from_millis(4 * REDIAL_BACKOFF_MIN_MS)).await;
        }
        drop(server);
        outcomes
    })
}

fn assert_link_up(outcomes: &[(Result<Vec<u8>, CallError>, Duration)]) {
    for (result, _) in outcomes {
        assert!(
            matches!(result, Err(CallError::Remote(body)) if body.code == ErrorCode::UnknownGroup),
            "the link is up (the listener answered the request): {result:?}"
        );
    }
}

fn assert_link_refused(outcomes: &[(Result<Vec<u8>, CallError>, Duration)]) {
    for (result, took) in outcomes {
        println!("refused in {took:?}: {result:?}");
        assert!(
            matches!(
                result,
                Err(CallError::NotSent(_) | CallError::Unreachable(_))
            ),
            "the link is unreachable: {result:?}"
        );
        assert!(*took < REFUSAL_MAX, "refused in {took:?}, not at once");
    }
}

#[test]
fn a_dialer_with_its_node_certificate_passes_mtls_and_the_cluster_handshake() {
    let pki = PeerPki::generate();
    let outcomes = link_outcomes(Some(pki.tls(1, true)), Some(pki.tls(2, true)));
    assert_link_up(&outcomes);
}

#[test]
fn a_dialer_without_a_client_certificate_is_refused_by_an_mtls_listener() {
    let pki = PeerPki::generate();
    let refused = link_outcomes(Some(pki.tls(1, true)), Some(pki.tls_without_client_cert(2)));
    assert_link_refused(&refused);
    // The same dialer is welcome where certificates are not required.
    let welcome = link_outcomes(
        Some(pki.tls(1, false)),
        Some(pki.tls_without_client_cert(2)),
    );
    assert_link_up(&welcome);
}

#[test]
fn a_dialer_that_does_not_trust_the_listeners_ca_cannot_connect() {
    let pki = PeerPki::generate();
    let mut files = pki.files(2, false);
    files.peer_ca_path = pki.path("rogue-ca.pem");
    let untrusting = PeerTls::load(&files).expect("load");
    assert_link_refused(&link_outcomes(Some(pki.tls(1, false)), Some(untrusting)));
}

#[test]
fn a_plaintext_dialer_is_refused_by_a_tls_listener_without_a_hang() {
    let pki = PeerPki::generate();
    assert_link_refused(&link_outcomes(Some(pki.tls(1, false)), None));
}

#[test]
fn a_tls_dialer_is_refused_by_a_plaintext_listener_without_a_hang() {
    let pki = PeerPki::generate();
    assert_link_refused(&link_outcomes(None, Some(pki.tls(2, false))));
}

#[test]
fn the_listener_is_verified_by_its_address_or_by_a_fixed_name() {
    let pki = PeerPki::generate();
    // A listener certificate that names `PEERS_DNS_NAME` but not 127.0.0.1.
    let mut files = pki.files(1, false);
    files.cert_path = pki.path("named-only.pem");
    files.key_path = pki.path("named-only.key");
    let listener = PeerTls::load(&files).expect("load");
    let dialer_by = |server_name: PeerServerName| {
        let mut files = pki.files(2, false);
        files.server_name = server_name;
        PeerTls::load(&files).expect("load")
    };
    let by_address = dialer_by(PeerServerName::AddressHost);
    assert_link_refused(&link_outcomes(Some(listener.clone()), Some(by_address)));
    let by_name = dialer_by(PeerServerName::Fixed(PEERS_DNS_NAME.to_string()));
    assert_link_up(&link_outcomes(Some(listener.clone()), Some(by_name)));
    let by_other_name = dialer_by(PeerServerName::Fixed("elsewhere.test".to_string()));
    assert_link_refused(&link_outcomes(Some(listener), Some(by_other_name)));
}

#[test]
fn a_key_that_does_not_fit_the_certificate_is_named_in_the_error() {
    let pki = PeerPki::generate();
    let mut files = pki.files(1, true);
    files.key_path = pki.path("node-2.key");
    let err = PeerTls::load(&files).expect_err("node 1's certificate with node 2's key");
    assert_eq!(err.setting, "key_path");
    assert!(err.to_string().contains("node-2.key"), "{err}");
}

/// Long enough for several election rounds (openraft's default election
/// timeout is 150–300 ms).
const ELECTION_ROUNDS_WAIT: Duration = Duration::from_millis(1_000);

/// Three members over peer TLS, each dialling the others' listeners
/// directly; `tls[i]` is member `i + 1`'s.
fn start_members(tls: [PeerTls; 3]) -> BTreeMap<u64, PeerMember> {
    let config = Arc::new(
        Config {
            cluster_name: CLUSTER_NAME.to_string(),
            ..Config::default()
        }
        .validate()
        .expect("valid config"),
    );
    let mut members = BTreeMap::new();
    let mut books = BTreeMap::new();
    for (id, tls) in (1..).zip(tls) {
        let (book, peers) = flume::bounded(1);
        let member = PeerMember::spawn_with_tls(id, config.clone(), peers, Some(tls));
        members.insert(id, member);
        books.insert(id, book);
    }
    for (id, book) in books {
        let peers = members
            .values()
            .filter(|m| m.id != id)
            .map(|m| (m.id, m.addr))
            .collect();
        book.send(peers).expect("member waits for its peers");
    }
    members
}

fn voters(members: &BTreeMap<u64, PeerMember>, ids: &[u64]) -> BTreeMap<u64, BasicNode> {
    ids.iter()
        .map(|id| (*id, BasicNode::new(members[id].addr.to_string())))
        .collect()
}

/// Waits until every member in `ids` follows the same leader; returns it.
fn agreed_leader(members: &BTreeMap<u64, PeerMember>, ids: &[u64]) -> u64 {
    let mut leader = 0;
    wait_until("the members to agree on a leader", || {
        let statuses: Vec<_> = ids.iter().map(|id| members[id].status()).collect();
        match statuses[0].current_leader {
            Some(first) if statuses.iter().all(|s| s.current_leader == Some(first)) => {
                leader = first;
                members[&first].status().state == ServerState::Leader
            }
            _ => false,
        }
    });
    leader
}

/// Writes `count` keys through `leader`; all of `ids` apply them.
fn replicate(members: &BTreeMap<u64, PeerMember>, leader: u64, ids: &[u64], count: usize) {
    let mut expected = KvSnapshot::new();
    let mut last = 0;
    for n in 0..count {
        let (key, value) = (format!("k{n}"), format!("value-{n}"));
        last = members[&leader].write(&key, &value);
        expected.insert(key, value);
    }
    for id in ids {
        wait_until(&format!("member {id} to apply up to {last}"), || {
            members[id].status().last_applied >= Some(last)
        });
        assert_eq!(members[id].contents(), expected, "member {id}'s state");
    }
}

#[test]
fn three_members_elect_and_replicate_over_mtls() {
    let pki = PeerPki::generate();
    let members = start_members([pki.tls(1, true), pki.tls(2, true), pki.tls(3, true)]);
    let all = [1, 2, 3];
    members[&1].initialize(voters(&members, &all));
    let leader = agreed_leader(&members, &all);
    replicate(&members, leader, &all, 5);
}

#[test]
fn a_member_without_a_client_certificate_gets_no_vote_while_the_others_work() {
    let pki = PeerPki::generate();
    let members = start_members([
        pki.tls(1, true),
        pki.tls(2, true),
        pki.tls_without_client_cert(3),
    ]);
    // Member 3 tries to lead all three; none of its requests gets through.
    members[&3].initialize(voters(&members, &[1, 2, 3]));
    thread::sleep(ELECTION_ROUNDS_WAIT);
    let status = members[&3].status();
    assert_ne!(status.state, ServerState::Leader, "member 3 got no votes");
    for id in [1, 2] {
        let status = members[&id].status();
        assert_eq!(
            (status.term, status.current_leader),
            (0, None),
            "member {id} never heard from member 3: {status:?}"
        );
    }

    // Members 1 and 2, whose links pass mTLS, form a group and replicate.
    members[&1].initialize(voters(&members, &[1, 2]));
    let leader = agreed_leader(&members, &[1, 2]);
    replicate(&members, leader, &[1, 2], 3);
    assert_ne!(members[&3].status().state, ServerState::Leader);
}
