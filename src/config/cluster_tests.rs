//! Tests of `corestate.cluster` parsing (`cluster.rs`).

use super::*;

fn parse(text: &str) -> Result<Option<ClusterConfig>, ConfigError> {
    from_yaml(&serde_yaml::from_str(text).unwrap())
}

const GOOD: &str = "
corestate:
  cluster:
    node_id: 2
    name: orders
    token: 0123456789abcdef-token
    peer_listen: 127.0.0.1:7502
    members:
      - {id: 1, peer: 127.0.0.1:7501}
      - {id: 2, peer: 127.0.0.1:7502}
";

#[test]
fn a_cluster_section_parses_and_its_absence_is_standalone() {
    let c = parse(GOOD).unwrap().expect("a cluster");
    assert_eq!(c.node_id, 2);
    assert_eq!(c.members.len(), 2);
    assert_eq!(c.members[&1], "127.0.0.1:7501".parse().unwrap());
    assert_eq!(
        c.snapshot_every_entries,
        CLUSTER_SNAPSHOT_EVERY_ENTRIES_DEFAULT
    );
    let more = GOOD.replace(
        "    name: orders\n",
        "    name: orders\n    snapshot_every_entries: 500\n",
    );
    assert_eq!(parse(&more).unwrap().unwrap().snapshot_every_entries, 500);
    assert_eq!(
        c.snapshot_log_growth_percent,
        CLUSTER_SNAPSHOT_LOG_GROWTH_PERCENT_DEFAULT
    );
    let entries_only = GOOD.replace(
        "    name: orders\n",
        "    name: orders\n    snapshot_log_growth_percent: 0\n",
    );
    assert_eq!(
        parse(&entries_only)
            .unwrap()
            .unwrap()
            .snapshot_log_growth_percent,
        0
    );
    assert_eq!(
        c.log_kept_behind_snapshot_entries,
        CLUSTER_LOG_KEPT_BEHIND_SNAPSHOT_ENTRIES_DEFAULT
    );
    let none_kept = GOOD.replace(
        "    name: orders\n",
        "    name: orders\n    log_kept_behind_snapshot_entries: 0\n",
    );
    assert_eq!(
        parse(&none_kept)
            .unwrap()
            .unwrap()
            .log_kept_behind_snapshot_entries,
        0
    );
    assert_eq!(c.election_timeout_ms, CLUSTER_ELECTION_TIMEOUT_MS_DEFAULT);
    let slower = GOOD.replace(
        "    name: orders\n",
        "    name: orders\n    election_timeout_ms: 1000\n",
    );
    assert_eq!(parse(&slower).unwrap().unwrap().election_timeout_ms, 1000);
    assert_eq!(
        c.in_doubt_resolve_after_ms,
        CLUSTER_IN_DOUBT_RESOLVE_AFTER_MS_DEFAULT
    );
    let sooner = GOOD.replace(
        "    name: orders\n",
        "    name: orders\n    in_doubt_resolve_after_ms: 2000\n",
    );
    assert_eq!(
        parse(&sooner).unwrap().unwrap().in_doubt_resolve_after_ms,
        2000
    );
    assert!(!c.join);
    assert!(c.balance_leaders);
    let fixed = GOOD.replace(
        "    name: orders\n",
        "    name: orders\n    balance_leaders: false\n",
    );
    assert!(!parse(&fixed).unwrap().unwrap().balance_leaders);
    let joining = GOOD.replace("    name: orders\n", "    name: orders\n    join: true\n");
    assert!(parse(&joining).unwrap().unwrap().join);
    assert_eq!(parse("corestate: {shards: 2}").unwrap(), None);
    assert_eq!(parse("{}").unwrap(), None);
}

#[test]
fn peer_tls_defaults_to_mutual_tls_with_the_peers_ca_and_address_names() {
    assert_eq!(parse(GOOD).unwrap().unwrap().tls, None);
    let tls = "    tls:\n      cert_path: /c/node.pem\n      key_path: /c/node.key\n      \
                   peer_ca_path: /c/ca.pem\n";
    let with = GOOD.replace("    name: orders\n", &format!("    name: orders\n{tls}"));
    let files = parse(&with).unwrap().unwrap().tls.expect("tls");
    assert_eq!(files.cert_path, PathBuf::from("/c/node.pem"));
    assert_eq!(files.key_path, PathBuf::from("/c/node.key"));
    assert!(files.require_client_cert);
    assert_eq!(files.client_ca_path, Some(PathBuf::from("/c/ca.pem")));
    assert_eq!(files.server_name, PeerServerName::AddressHost);
    let more = format!(
        "{tls}      require_client_cert: false\n      client_ca_path: /c/clients.pem\n      \
             server_name: peers.internal\n"
    );
    let with = GOOD.replace("    name: orders\n", &format!("    name: orders\n{more}"));
    let files = parse(&with).unwrap().unwrap().tls.expect("tls");
    assert!(!files.require_client_cert);
    assert_eq!(files.client_ca_path, Some(PathBuf::from("/c/clients.pem")));
    assert_eq!(
        files.server_name,
        PeerServerName::Fixed("peers.internal".into())
    );
    for (setting, broken) in [
        (
            "cert_path",
            tls.replace("      cert_path: /c/node.pem\n", ""),
        ),
        (
            "peer_ca_path",
            tls.replace("      peer_ca_path: /c/ca.pem\n", ""),
        ),
        ("ca_path", format!("{tls}      ca_path: /c/ca.pem\n")),
        ("server_name", format!("{tls}      server_name: \"\"\n")),
        (
            "require_client_cert",
            format!("{tls}      require_client_cert: 1\n"),
        ),
    ] {
        let text = GOOD.replace("    name: orders\n", &format!("    name: orders\n{broken}"));
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key, format!("corestate.cluster.tls.{setting}"), "{e:?}");
    }
}

#[test]
fn each_mistake_is_named_by_its_key() {
    let cases = [
        (
            GOOD.replace("node_id: 2", "node_id: 9"),
            "corestate.cluster.node_id",
        ),
        (
            GOOD.replace("0123456789abcdef-token", "short"),
            "corestate.cluster.token",
        ),
        (
            GOOD.replace("{id: 1,", "{id: 2,"),
            "corestate.cluster.members[1]",
        ),
        (
            GOOD.replace("peer_listen", "peer_lisen"),
            "corestate.cluster.peer_lisen",
        ),
        (
            GOOD.replace("peer: 127.0.0.1:7501", "peer: nowhere"),
            "corestate.cluster.members[0].peer",
        ),
        (
            GOOD.replace("    name: orders\n", ""),
            "corestate.cluster.name",
        ),
        (
            GOOD.replace(
                "    name: orders\n",
                "    name: orders\n    snapshot_every_entries: 5\n",
            ),
            "corestate.cluster.snapshot_every_entries",
        ),
        (
            GOOD.replace(
                "    name: orders\n",
                "    name: orders\n    snapshot_log_growth_percent: 10001\n",
            ),
            "corestate.cluster.snapshot_log_growth_percent",
        ),
        (
            GOOD.replace(
                "    name: orders\n",
                "    name: orders\n    log_kept_behind_snapshot_entries: 2000000\n",
            ),
            "corestate.cluster.log_kept_behind_snapshot_entries",
        ),
        (
            GOOD.replace(
                "    name: orders\n",
                "    name: orders\n    election_timeout_ms: 5\n",
            ),
            "corestate.cluster.election_timeout_ms",
        ),
        (
            GOOD.replace("    name: orders\n", "    name: orders\n    join: 1\n"),
            "corestate.cluster.join",
        ),
    ];
    for (text, key) in cases {
        let err = parse(&text).expect_err(key);
        assert_eq!(err.key, key, "{err}");
    }
}
