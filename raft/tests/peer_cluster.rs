//! Three members, each on its own thread and glommio executor, talking over
//! the peer transport on real TCP (127.0.0.1, fresh ports), every directed
//! link through a fault proxy: election, replication, leadership transfer,
//! failover when a member's thread stops, catch-up by chunked snapshot
//! after a cut, and a partitioned leader that is replaced and steps down.

#[path = "support/fault_proxy.rs"]
mod fault_proxy;
#[path = "support/mem_store.rs"]
mod mem_store;
#[path = "support/member_thread.rs"]
mod member_thread;
#[path = "support/memlock.rs"]
mod memlock;
#[path = "support/peer_member.rs"]
mod peer_member;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fault_proxy::{FaultProxy, Mode};
use mem_store::KvSnapshot;
use openraft::{BasicNode, Config, ServerState, SnapshotPolicy};
use peer_member::{wait_until, PeerMember};

const MEMBER_IDS: [u64; 3] = [1, 2, 3];

/// Small, so a snapshot of a few dozen keys spans many chunks.
const TEST_SNAPSHOT_CHUNK_BYTES: u64 = 256;

/// The longest failover the tests accept (the goal of issue 14 is ≤ 2 s;
/// this leaves room for a loaded 2-core CI machine).
const FAILOVER_MAX: Duration = Duration::from_secs(3);

/// Leader changes one write may follow before the test gives up.
const WRITE_LEADER_CHANGES_MAX: u32 = 5;

struct Cluster {
    members: BTreeMap<u64, PeerMember>,
    /// (from, to) → the proxy `from` dials to reach `to`.
    proxies: BTreeMap<(u64, u64), FaultProxy>,
}

impl Cluster {
    fn start() -> Cluster {
        let config = Arc::new(
            Config {
                cluster_name: peer_member::CLUSTER_NAME.to_string(),
                // Snapshot and purge often, so a member that misses a few
                // writes can only catch up by snapshot.
                snapshot_policy: SnapshotPolicy::LogsSinceLast(10),
                max_in_snapshot_log_to_keep: 0,
                purge_batch_size: 1,
                snapshot_max_chunk_size: TEST_SNAPSHOT_CHUNK_BYTES,
                ..Config::default()
            }
            .validate()
            .expect("valid config"),
        );
        let mut members = BTreeMap::new();
        let mut books = BTreeMap::new();
        for id in MEMBER_IDS {
            let (book, peers) = flume::bounded(1);
            members.insert(id, PeerMember::spawn(id, config.clone(), peers));
            books.insert(id, book);
        }
        let mut proxies = BTreeMap::new();
        for from in MEMBER_IDS {
            let mut book = BTreeMap::new();
            for to in MEMBER_IDS.into_iter().filter(|&to| to != from) {
                let proxy = FaultProxy::start(members[&to].addr);
                book.insert(to, proxy.addr());
                proxies.insert((from, to), proxy);
            }
            books[&from].send(book).expect("member waits for its peers");
        }
        let voters = members
            .values()
            .map(|m| (m.id, BasicNode::new(m.addr.to_string())))
            .collect();
        members[&1].initialize(voters);
        Cluster { members, proxies }
    }

    fn member(&self, id: u64) -> &PeerMember {
        &self.members[&id]
    }

    /// Waits until every member in `ids` follows one leader other than
    /// `not`; returns it and its term.
    fn agreed_leader(&self, ids: &[u64], not: Option<u64>) -> (u64, u64) {
        let mut found = (0, 0);
        wait_until("the members to agree on a leader", || {
            let statuses: Vec<_> = ids.iter().map(|&id| self.member(id).status()).collect();
            let leader = statuses[0].current_leader;
            let agreed = leader.is_some()
                && leader != not
                && statuses.iter().all(|s| s.current_leader == leader);
            if let (true, Some(leader)) = (agreed, leader) {
                let status = self.member(leader).status();
                found = (leader, status.term);
                return status.state == ServerState::Leader;
            }
            false
        });
        found
    }

    /// Writes `count` keys through `leader`, following the lead among
    /// `among` if it moves — on a loaded machine a heartbeat can come late
    /// enough for an election, which is not what these tests are about (a
    /// put retried with the same value changes nothing).
    fn write_many(
        &self,
        leader: &mut u64,
        among: &[u64],
        prefix: &str,
        count: usize,
        expected: &mut KvSnapshot,
    ) -> u64 {
        let mut last = 0;
        for n in 0..count {
            let (key, value) = (format!("{prefix}{n}"), format!("{prefix}-value-{n:0>40}"));
            let mut tries = 0;
            let index = loop {
                match self.member(*leader).try_write(&key, &value) {
                    Ok(index) => break index,
                    Err(err) if tries < WRITE_LEADER_CHANGES_MAX => {
                        tries += 1;
                        let (now, term) = self.agreed_leader(among, None);
                        println!("{key} refused by {leader} ({err}); {now} leads in term {term}");
                        *leader = now;
                    }
                    Err(err) => panic!("{key} refused by {leader}: {err}"),
                }
            };
            assert!(index > last, "log indexes increase");
            last = index;
            expected.insert(key, value);
        }
        last
    }

    fn all_applied(&self, ids: &[u64], index: u64, expected: &KvSnapshot) {
        for &id in ids {
            wait_until(&format!("member {id} to apply up to {index}"), || {
                self.member(id).status().last_applied >= Some(index)
            });
            assert_eq!(&self.member(id).contents(), expected, "member {id}'s state");
        }
    }

    /// Sets every link to and from `id` to `mode`.
    fn isolate(&self, id: u64, mode: Mode) {
        for ((from, to), proxy) in &self.proxies {
            if *from == id || *to == id {
                proxy.set_mode(mode);
            }
        }
    }
}

fn others(ids: &[u64], not: u64) -> Vec<u64> {
    ids.iter().copied().filter(|&id| id != not).collect()
}

#[test]
fn three_members_over_tcp_elect_replicate_transfer_and_fail_over() {
    let mut cluster = Cluster::start();
    let (mut leader, term) = cluster.agreed_leader(&MEMBER_IDS, None);

    let mut expected = KvSnapshot::new();
    let last = cluster.write_many(&mut leader, &MEMBER_IDS, "k", 20, &mut expected);
    cluster.all_applied(&MEMBER_IDS, last, &expected);

    // Leadership moves to the member it is transferred to.
    let target = others(&MEMBER_IDS, leader)[0];
    cluster.member(leader).transfer_leader(target);
    let (mut new_leader, new_term) = cluster.agreed_leader(&MEMBER_IDS, Some(leader));
    assert_eq!(new_leader, target);
    assert!(new_term > term);
    let last = cluster.write_many(&mut new_leader, &MEMBER_IDS, "moved", 1, &mut expected);
    cluster.all_applied(&MEMBER_IDS, last, &expected);

    // The leader's thread stops: the others elect a new leader in time and
    // lose nothing committed.
    let stopped_at = Instant::now();
    cluster.members.get_mut(&new_leader).expect("leader").stop();
    let survivors = others(&MEMBER_IDS, new_leader);
    let (mut after, after_term) = cluster.agreed_leader(&survivors, Some(new_leader));
    let failover = stopped_at.elapsed();
    println!("failover: a new leader {after} (term {after_term}) {failover:?} after the leader's thread stopped");
    assert!(after_term > new_term);
    assert!(failover < FAILOVER_MAX, "failover took {failover:?}");
    let last = cluster.write_many(&mut after, &survivors, "after", 3, &mut expected);
    cluster.all_applied(&survivors, last, &expected);
}

#[test]
fn a_cut_off_member_catches_up_by_a_chunked_snapshot() {
    let cluster = Cluster::start();
    let (mut leader, _) = cluster.agreed_leader(&MEMBER_IDS, None);
    let lagging = others(&MEMBER_IDS, leader)[0];
    let connected = others(&MEMBER_IDS, lagging);
    // Settle first: the leader's first entries may still be on their way
    // to the member when the election is agreed.
    wait_until("the member to apply what the leader applied", || {
        cluster.member(lagging).status().last_applied
            >= cluster.member(leader).status().last_applied
    });
    let before = cluster.member(lagging).status().last_applied;

    // The cluster commits without it and purges the log it would need.
    cluster.isolate(lagging, Mode::Drop);
    let mut expected = KvSnapshot::new();
    let last = cluster.write_many(&mut leader, &connected, "k", 40, &mut expected);
    assert_eq!(
        cluster.member(lagging).status().last_applied,
        before,
        "the cut-off member applied nothing"
    );
    wait_until("the leader to purge past the lagging member", || {
        cluster.member(leader).status().purged > before
    });
    let snapshot_bytes = serde_json::to_vec(&expected).expect("json").len() as u64;
    assert!(
        snapshot_bytes > 4 * TEST_SNAPSHOT_CHUNK_BYTES,
        "the snapshot ({snapshot_bytes} bytes) spans several chunks"
    );

    // Reconnected, it can only catch up by snapshot.
    cluster.isolate(lagging, Mode::Pass);
    cluster.all_applied(&[lagging], last, &expected);
    let status = cluster.member(lagging).status();
    assert!(
        status.snapshot.is_some_and(|index| Some(index) > before),
        "the member installed a snapshot: {status:?}"
    );

    // And takes part in later commits as usual.
    let last = cluster.write_many(&mut leader, &MEMBER_IDS, "after", 2, &mut expected);
    cluster.all_applied(&MEMBER_IDS, last, &expected);
}

#[test]
fn an_isolated_leader_is_replaced_then_steps_down_when_healed() {
    let cluster = Cluster::start();
    let (mut leader, term) = cluster.agreed_leader(&MEMBER_IDS, None);
    let mut expected = KvSnapshot::new();
    let last = cluster.write_many(&mut leader, &MEMBER_IDS, "k", 5, &mut expected);
    cluster.all_applied(&MEMBER_IDS, last, &expected);

    // A partition: nothing reaches the leader and nothing leaves it.
    let partitioned_at = Instant::now();
    cluster.isolate(leader, Mode::Blackhole);
    let majority = others(&MEMBER_IDS, leader);
    let (mut new_leader, new_term) = cluster.agreed_leader(&majority, Some(leader));
    println!(
        "partition: a new leader {new_leader} (term {new_term}) {:?} after the leader was cut off",
        partitioned_at.elapsed()
    );
    assert!(new_term > term);
    let last = cluster.write_many(&mut new_leader, &majority, "majority", 5, &mut expected);
    cluster.all_applied(&majority, last, &expected);

    // Healed: the old leader learns of the new term, follows, converges.
    cluster.isolate(leader, Mode::Pass);
    wait_until("the old leader to step down and follow", || {
        let status = cluster.member(leader).status();
        status.state == ServerState::Follower && status.current_leader == Some(new_leader)
    });
    cluster.all_applied(&MEMBER_IDS, last, &expected);
}
