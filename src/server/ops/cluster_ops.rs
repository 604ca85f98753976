//! CLUSTER_ADD_NODE and CLUSTER_REMOVE_NODE: changing a cluster's members
//! at run time (issue 14, item 11). corestate's own operations — rstmdb
//! has none — sent to any node like every other request.
//!
//! * `CLUSTER_ADD_NODE {"node_id": 4, "peer": "10.0.0.4:7501"}` adds the
//!   node (started with `join: true`) to every shard's group: as a learner
//!   first, until it has caught up by snapshot and log, then as a voter.
//!   Optional `catch_up_timeout_ms` (default 300,000): a node that has not
//!   caught up by then is taken out again and the request refused.
//! * `CLUSTER_REMOVE_NODE {"node_id": 3}` takes the node out of every
//!   shard's group (a leader that removes itself steps down).
//!
//! * `CLUSTER_RESOLVE_BATCH {"txid": "…", "outcome": "commit"|"abort"}`
//!   settles the parts of a cross-shard batch left in doubt that nothing
//!   else can settle (`shards::operator_ruling`): the decider's decision
//!   wins where its log holds one; an undecided batch can only be
//!   aborted; the operator's outcome stands only where the decider forgot.
//!   `txid` as REPLICATION_STATUS's `batches_in_doubt` and the node's log
//!   name it: a decimal string (or a JSON integer).
//!
//! Each group's leader runs the change (a shard whose node does not lead
//! its group forwards it there), through openraft's joint consensus. The
//! groups change side by side; the answer lists each group's voters after
//! the change. If a group refuses or fails, the error says which groups
//! did change (`details.shards`): the change is safe to send again.

use corestate_raft::shard_group::{
    MEMBER_CATCH_UP_TIMEOUT_MS_DEFAULT, MEMBER_CATCH_UP_TIMEOUT_MS_MAX,
};
use serde_json::{json, Value};
use shards::shard::group_link::MemberChange;
use shards::shard::{ShardMsg, Verdict};
use shards::{EngineError, EngineResult};

use crate::protocol::params::Params;
use crate::server::context::ServerCtx;

/// The node to add, and where its peer listener is.
pub fn parse_add(params: &Value) -> EngineResult<MemberChange> {
    let p = Params::strict(params, "ClusterAddNodeParams")?;
    let node = node_id(&p)?;
    let peer = p.str("peer")?;
    if peer.parse::<std::net::SocketAddr>().is_err() {
        return Err(EngineError::bad_request(format_args!(
            "peer: expected an IP address and port (\"10.0.0.4:7501\"), got {peer:?}"
        )));
    }
    let catch_up_timeout_ms = match p.opt_u64("catch_up_timeout_ms")? {
        None => MEMBER_CATCH_UP_TIMEOUT_MS_DEFAULT,
        Some(ms) if (1..=MEMBER_CATCH_UP_TIMEOUT_MS_MAX).contains(&ms) => ms,
        Some(_) => {
            return Err(EngineError::bad_request(format_args!(
                "catch_up_timeout_ms: from 1 to {MEMBER_CATCH_UP_TIMEOUT_MS_MAX}"
            )))
        }
    };
    Ok(MemberChange::Add {
        node,
        peer: peer.to_string(),
        catch_up_timeout_ms,
    })
}

/// The node to remove.
pub fn parse_remove(params: &Value) -> EngineResult<MemberChange> {
    let p = Params::strict(params, "ClusterRemoveNodeParams")?;
    Ok(MemberChange::Remove { node: node_id(&p)? })
}

fn node_id(p: &Params<'_>) -> EngineResult<u64> {
    match p.opt_u64("node_id")? {
        Some(id) if id >= 1 => Ok(id),
        Some(_) => Err(EngineError::bad_request("node_id: a node id is at least 1")),
        None => Err(EngineError::bad_request("missing field `node_id`")),
    }
}

/// CLUSTER_RESOLVE_BATCH's batch id and ruling (`true`: commit).
pub fn parse_ruling(params: &Value) -> EngineResult<(u64, bool)> {
    let p = Params::strict(params, "ClusterResolveBatchParams")?;
    let txid = match p.get("txid") {
        Some(Value::String(s)) => s.parse::<u64>().map_err(|_| {
            EngineError::bad_request(format_args!(
                "txid: expected a batch id in decimal digits, got {s:?}"
            ))
        })?,
        Some(Value::Number(_)) => p.opt_u64("txid")?.unwrap_or_default(),
        Some(Value::Null) | None => {
            return Err(EngineError::bad_request("missing field `txid`"));
        }
        Some(_) => {
            return Err(EngineError::bad_request(
                "txid: expected a batch id (a decimal string or an integer)",
            ))
        }
    };
    let commit = match p.str("outcome")? {
        "commit" => true,
        "abort" => false,
        other => {
            return Err(EngineError::bad_request(format_args!(
                "outcome: expected \"commit\" or \"abort\", got {other:?}"
            )))
        }
    };
    Ok((txid, commit))
}

/// Rule on batch `txid` (`commit` or abort) on every shard holding a part
/// of it in doubt. The answer lists each part: the decider's answer, and
/// the decision its log now holds (`decided`, and `by`: `decider` or
/// `operator`). A part left in doubt makes the whole an error naming why
/// (`details.parts`); sending it again is safe.
pub async fn rule_batch(ctx: &ServerCtx, txid: u64, commit: bool) -> EngineResult<Vec<u8>> {
    let rulings = shards::operator_ruling::rule_batch(ctx.router.all(), txid, commit).await?;
    let parts: Vec<Value> = rulings.iter().map(part_json).collect();
    match rulings.iter().find_map(|r| r.settled.as_ref().err()) {
        None => Ok(json!({"txid": txid.to_string(), "parts": parts})
            .to_string()
            .into_bytes()),
        Some(why) => {
            let mut details = serde_json::Map::new();
            details.insert("txid".into(), txid.to_string().into());
            details.insert("parts".into(), Value::Array(parts));
            Err(EngineError::new(
                shards::ErrorCode::Conflict,
                format!("batch {txid}: a part is still in doubt: {why}"),
            )
            .with_details(details))
        }
    }
}

fn part_json(r: &shards::operator_ruling::PartRuling) -> Value {
    let said = match r.decider_said {
        None => "no answer",
        Some(Verdict::Committed) => "committed",
        Some(Verdict::Aborted) => "aborted",
        Some(Verdict::Undecided) => "undecided",
        Some(Verdict::Forgotten) => "forgotten",
    };
    let mut part = json!({"shard": r.shard, "decider": r.decider, "decider_said": said});
    match &r.settled {
        Ok(commit) => {
            part["decided"] = if *commit { "commit" } else { "abort" }.into();
            part["by"] = if r.by_operator { "operator" } else { "decider" }.into();
        }
        Err(why) => part["still_in_doubt"] = why.as_str().into(),
    }
    part
}

/// Run `change` on every shard's group; each group's voters after it.
pub async fn change_members(ctx: &ServerCtx, change: MemberChange) -> EngineResult<Vec<u8>> {
    let answers = ctx
        .router
        .ask_all(|done| ShardMsg::ChangeMembers {
            change: change.clone(),
            done,
        })
        .await?;
    let node = match &change {
        MemberChange::Add { node, .. } | MemberChange::Remove { node } => *node,
    };
    let shards: Vec<Value> = answers
        .iter()
        .enumerate()
        .map(|(shard, answer)| match answer {
            Ok(done) => done.clone(),
            Err(e) => json!({"shard": shard, "error": e.message}),
        })
        .collect();
    match answers.into_iter().find_map(Result::err) {
        None => Ok(json!({"node_id": node, "shards": shards})
            .to_string()
            .into_bytes()),
        Some(first) => {
            let mut details = first.details.map(|d| *d).unwrap_or_default();
            details.insert("shards".into(), Value::Array(shards));
            Err(EngineError::new(first.code, first.message).with_details(details))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_checked() {
        let add = parse_add(&json!({"node_id": 4, "peer": "127.0.0.1:7504"})).unwrap();
        assert_eq!(
            add,
            MemberChange::Add {
                node: 4,
                peer: "127.0.0.1:7504".into(),
                catch_up_timeout_ms: MEMBER_CATCH_UP_TIMEOUT_MS_DEFAULT,
            }
        );
        assert_eq!(
            parse_remove(&json!({"node_id": 2})).unwrap(),
            MemberChange::Remove { node: 2 }
        );
        for bad in [
            json!({"node_id": 0, "peer": "127.0.0.1:1"}),
            json!({"node_id": "4", "peer": "127.0.0.1:1"}),
            json!({"node_id": 4, "peer": "nowhere"}),
            json!({"node_id": 4}),
            json!({"node_id": 4, "peer": "127.0.0.1:1", "catch_up_timeout_ms": 0}),
            json!({"peer": "127.0.0.1:1"}),
            json!(null),
        ] {
            let err = parse_add(&bad).expect_err(&bad.to_string());
            assert_eq!(err.code, shards::ErrorCode::BadRequest, "{bad}");
        }
        assert!(parse_remove(&json!({})).is_err());

        let big = u64::MAX - 1;
        assert_eq!(
            parse_ruling(&json!({"txid": big.to_string(), "outcome": "commit"})).unwrap(),
            (big, true)
        );
        assert_eq!(
            parse_ruling(&json!({"txid": 42, "outcome": "abort"})).unwrap(),
            (42, false)
        );
        for bad in [
            json!({"txid": "42", "outcome": "Commit"}),
            json!({"txid": "4 2", "outcome": "abort"}),
            json!({"txid": 4.5, "outcome": "abort"}),
            json!({"txid": [], "outcome": "abort"}),
            json!({"txid": null, "outcome": "abort"}),
            json!({"txid": "42"}),
        ] {
            let err = parse_ruling(&bad).expect_err(&bad.to_string());
            assert_eq!(err.code, shards::ErrorCode::BadRequest, "{bad}");
        }
        assert!(parse_remove(&json!({"node_id": -1})).is_err());
    }
}
