//! The 25 RCP operation names (docs/PROTOCOL.md §2.1), and corestate's
//! own cluster operations: membership, and an operator's ruling on a batch
//! left in doubt (README, "Cluster").

macro_rules! ops {
    ($($variant:ident => $name:literal),* $(,)?) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Op { $($variant),* }

        impl Op {
            pub fn from_name(name: &str) -> Option<Op> {
                match name { $($name => Some(Op::$variant),)* _ => None }
            }

            pub fn name(self) -> &'static str {
                match self { $(Op::$variant => $name),* }
            }
        }
    };
}

ops! {
    Hello => "HELLO",
    Auth => "AUTH",
    Ping => "PING",
    Bye => "BYE",
    Info => "INFO",
    ReplicationStatus => "REPLICATION_STATUS",
    PutMachine => "PUT_MACHINE",
    GetMachine => "GET_MACHINE",
    ListMachines => "LIST_MACHINES",
    CreateInstance => "CREATE_INSTANCE",
    GetInstance => "GET_INSTANCE",
    ListInstances => "LIST_INSTANCES",
    DeleteInstance => "DELETE_INSTANCE",
    ApplyEvent => "APPLY_EVENT",
    Batch => "BATCH",
    SnapshotInstance => "SNAPSHOT_INSTANCE",
    WalRead => "WAL_READ",
    WalStats => "WAL_STATS",
    Compact => "COMPACT",
    WatchInstance => "WATCH_INSTANCE",
    WatchAll => "WATCH_ALL",
    Unwatch => "UNWATCH",
    FlushAll => "FLUSH_ALL",
    Replicate => "REPLICATE",
    ReplicateAck => "REPLICATE_ACK",
    ClusterAddNode => "CLUSTER_ADD_NODE",
    ClusterRemoveNode => "CLUSTER_REMOVE_NODE",
    ClusterResolveBatch => "CLUSTER_RESOLVE_BATCH",
}

impl Op {
    /// Operations served before AUTH when authentication is required.
    pub fn allowed_unauthenticated(self) -> bool {
        matches!(self, Op::Hello | Op::Auth | Op::Ping | Op::Bye)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_case_sensitive() {
        for name in ["HELLO", "APPLY_EVENT", "REPLICATE_ACK", "WATCH_ALL"] {
            assert_eq!(Op::from_name(name).unwrap().name(), name);
        }
        assert_eq!(Op::from_name("ping"), None);
        assert_eq!(Op::from_name("NOPE"), None);
    }
}
