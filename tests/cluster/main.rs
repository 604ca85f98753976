//! Replicated corestate (`corestate.cluster`) with real processes: three
//! nodes (one shard each, or several), each shard a Raft group with a
//! replica on every node. Writes are acknowledged after a majority has
//! them; any node serves any request (a follower forwards to the leader);
//! SIGKILL of the leader leaves a node that serves every acknowledged write.

#[path = "../support/mod.rs"]
mod support;

mod balance;
mod batch;
mod failover;
mod failover_time;
mod forwarding;
mod large_values;
mod storage_ops;
// The Raft crate's fault proxy (its tests: raft/tests/fault_proxy.rs).
#[path = "../../raft/tests/support/fault_proxy.rs"]
mod fault_proxy;
mod graceful;
mod harness;
mod leader_restart;
mod membership;
mod metrics;
mod operator_ruling;
mod partition;
mod peer_tls;
// The Raft crate's test PKI (its tests: raft/tests/peer_tls.rs).
#[path = "../../raft/tests/support/peer_pki.rs"]
mod peer_pki;
mod process_faults;
mod watch;
