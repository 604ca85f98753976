//! An operator's ruling on a cross-shard batch left in doubt
//! (CLUSTER_RESOLVE_BATCH): the way out for a part nothing else can settle.
//!
//! On a cluster a batch part stays in doubt — its instances locked — when
//! its decider no longer knows whether the batch committed
//! (`Verdict::Forgotten`, `shard::committed_ids`): `coordinator::resolve_stale`
//! then refuses to guess and logs the batch. The operator, who can look at
//! the batch's other parts (their records in WAL_READ, their instances),
//! rules `commit` or `abort`.
//!
//! The ruling never overrides what the logs know:
//! * the decider's decision, when its log holds one, settles every part —
//!   whatever the operator asked;
//! * a batch nothing has decided yet (the decider's own part still in
//!   doubt) can be aborted — the decider logs the abort first, as
//!   `resolve_stale` would after `in_doubt_resolve_after_ms` — but not
//!   committed: a commit needs every part's yes vote, which only the
//!   batch's coordinator saw;
//! * only a part whose decider answers `Forgotten` takes the operator's
//!   word.
//!
//! It runs wherever the request came in: which shards hold a part comes
//! from this node's members (what they applied), and the decider and each
//! part are asked through their mailboxes, which forward to the groups'
//! leaders.

use crate::error::EngineResult;
use crate::router::{ask, ask_all};
use crate::shard::{ShardMsg, Verdict};

/// What became of one part the ruling found in doubt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartRuling {
    pub shard: usize,
    pub decider: u32,
    /// The decider's answer about the batch (`None`: it did not answer).
    pub decider_said: Option<Verdict>,
    /// The decision the part's log holds now; `Err`: why the part is
    /// still in doubt.
    pub settled: Result<bool, String>,
    /// Whether the decision is the operator's: the decider had forgotten
    /// the batch, or had not decided it and aborted it when told to.
    pub by_operator: bool,
}

/// Settle every part of batch `txid` this node's members hold in doubt,
/// `commit` being the operator's ruling (see the module comment). An empty
/// list: no shard holds a part of it in doubt (decided already, or never
/// prepared). `Err`: a standalone node, or a shard gone.
pub async fn rule_batch(
    mailboxes: &[flume::Sender<ShardMsg>],
    txid: u64,
    commit: bool,
) -> EngineResult<Vec<PartRuling>> {
    let held = ask_all(mailboxes, |done| ShardMsg::PartInDoubt { txid, done }).await?;
    let mut rulings = Vec::new();
    for (shard, part) in held.into_iter().enumerate() {
        if let Some(decider) = part? {
            rulings.push(rule_part(mailboxes, shard, decider, txid, commit).await);
        }
    }
    Ok(rulings)
}

async fn rule_part(
    mailboxes: &[flume::Sender<ShardMsg>],
    shard: usize,
    decider: u32,
    txid: u64,
    commit: bool,
) -> PartRuling {
    let ruling = |decider_said, settled| PartRuling {
        shard,
        decider,
        decider_said,
        settled,
        by_operator: false,
    };
    let Some(at_decider) = mailboxes.get(decider as usize) else {
        let why = format!(
            "its decider shard {decider} is not one of this node's {} shards",
            mailboxes.len()
        );
        return ruling(None, Err(why));
    };
    let no_answer = || {
        "its decider's group did not answer (no leader, or out of reach): send it again".to_string()
    };
    let said = match ask(at_decider, |done| ShardMsg::Decision { txid, done }).await {
        Ok(said) => said,
        Err(_) => return ruling(None, Err(no_answer())),
    };
    let (decision, by_operator) = match said {
        Verdict::Committed => (true, false),
        Verdict::Aborted => (false, false),
        Verdict::Forgotten => (commit, true),
        Verdict::Undecided if commit => {
            let why = "nothing has decided the batch yet: it can be aborted, not committed \
                       (a commit needs every part's vote, which only its coordinator saw)";
            return ruling(Some(said), Err(why.into()));
        }
        Verdict::Undecided => {
            // Abort it where it is decided; a decider that committed it
            // meanwhile answers so and changes nothing.
            match ask(at_decider, |done| ShardMsg::Decide {
                txid,
                commit: false,
                done,
            })
            .await
            .map(Verdict::decided)
            {
                // Committed instead: it was decided meanwhile, not by us.
                Ok(Some(decided)) => (decided, !decided),
                Ok(None) | Err(_) => return ruling(Some(said), Err(no_answer())),
            }
        }
    };
    let told = ask(&mailboxes[shard], |done| ShardMsg::Decide {
        txid,
        commit: decision,
        done,
    })
    .await;
    let settled = match told {
        Ok(held) => held.decided().ok_or_else(|| {
            format!("the part's group answered {held:?} instead of taking the decision")
        }),
        Err(_) => Err("the part's group did not answer: send it again".to_string()),
    };
    PartRuling {
        by_operator: by_operator && settled.is_ok(),
        ..ruling(Some(said), settled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::EngineError;
    use std::sync::{Arc, Mutex};

    /// Each Decide a fake shard was sent: (shard, commit).
    type Told = Arc<Mutex<Vec<(usize, bool)>>>;

    /// Fake shards: shard 1 holds `txid` in doubt with decider shard 0,
    /// whose log says `decider_says`; each Decide is recorded and answered
    /// the way a shard does (the decision it was told, or the decider's
    /// own when it knows one).
    fn shards(decider_says: Verdict) -> (Vec<flume::Sender<ShardMsg>>, Told) {
        let told = Arc::new(Mutex::new(Vec::new()));
        let mailboxes = (0..2)
            .map(|shard| {
                let (tx, rx) = flume::unbounded::<ShardMsg>();
                let told = told.clone();
                std::thread::spawn(move || {
                    for msg in rx.iter() {
                        match msg {
                            ShardMsg::PartInDoubt { done, .. } => {
                                let _ = done.send(Ok((shard == 1).then_some(0)));
                            }
                            ShardMsg::Decision { done, .. } => {
                                let _ = done.send(if shard == 0 {
                                    decider_says
                                } else {
                                    Verdict::Undecided
                                });
                            }
                            ShardMsg::Decide { commit, done, .. } => {
                                told.lock().unwrap().push((shard, commit));
                                let held = match (shard, decider_says.decided()) {
                                    (0, Some(known)) => known,
                                    _ => commit,
                                };
                                let _ = done.send(Verdict::of(held));
                            }
                            _ => {}
                        }
                    }
                });
                tx
            })
            .collect();
        (mailboxes, told)
    }

    fn rule(decider_says: Verdict, commit: bool) -> (Vec<PartRuling>, Vec<(usize, bool)>) {
        let (mailboxes, told) = shards(decider_says);
        let rulings = futures_lite::future::block_on(rule_batch(&mailboxes, 7, commit)).unwrap();
        let told = told.lock().unwrap().clone();
        (rulings, told)
    }

    #[test]
    fn a_forgotten_batch_takes_the_operators_word() {
        for commit in [true, false] {
            let (rulings, told) = rule(Verdict::Forgotten, commit);
            assert_eq!(rulings.len(), 1);
            assert_eq!(rulings[0].shard, 1);
            assert_eq!(rulings[0].settled, Ok(commit));
            assert!(rulings[0].by_operator);
            assert_eq!(told, vec![(1, commit)], "only the part is told");
        }
    }

    #[test]
    fn what_the_decider_knows_wins_over_the_operator() {
        for (says, decided) in [(Verdict::Committed, true), (Verdict::Aborted, false)] {
            for commit in [true, false] {
                let (rulings, told) = rule(says, commit);
                assert_eq!(rulings[0].settled, Ok(decided), "{says:?}, asked {commit}");
                assert!(!rulings[0].by_operator);
                assert_eq!(told, vec![(1, decided)]);
            }
        }
    }

    #[test]
    fn an_undecided_batch_can_be_aborted_but_not_committed() {
        let (rulings, told) = rule(Verdict::Undecided, true);
        assert!(rulings[0].settled.is_err(), "{rulings:?}");
        assert!(told.is_empty(), "nothing decided: {told:?}");

        let (rulings, told) = rule(Verdict::Undecided, false);
        assert_eq!(rulings[0].settled, Ok(false));
        assert!(rulings[0].by_operator);
        assert_eq!(
            told,
            vec![(0, false), (1, false)],
            "the decider aborts first"
        );
    }

    #[test]
    fn a_standalone_node_refuses_and_a_silent_decider_leaves_the_part() {
        let (tx, rx) = flume::unbounded::<ShardMsg>();
        std::thread::spawn(move || {
            for msg in rx.iter() {
                if let ShardMsg::PartInDoubt { done, .. } = msg {
                    let _ = done.send(Err(EngineError::bad_request("not a member")));
                }
            }
        });
        let refused = futures_lite::future::block_on(rule_batch(&[tx], 7, true));
        assert!(refused.is_err());

        // Shard 1 holds the part; its decider (shard 0) holds none and
        // drops every other ask unanswered (its reply channel closes).
        let (silent, dropped) = flume::unbounded::<ShardMsg>();
        std::thread::spawn(move || {
            for msg in dropped.iter() {
                if let ShardMsg::PartInDoubt { done, .. } = msg {
                    let _ = done.send(Ok(None));
                }
            }
        });
        let (holder, inbox) = flume::unbounded::<ShardMsg>();
        std::thread::spawn(move || {
            for msg in inbox.iter() {
                if let ShardMsg::PartInDoubt { done, .. } = msg {
                    let _ = done.send(Ok(Some(0)));
                }
            }
        });
        let rulings =
            futures_lite::future::block_on(rule_batch(&[silent, holder], 7, true)).unwrap();
        assert_eq!(rulings.len(), 1);
        assert_eq!(rulings[0].decider_said, None);
        assert!(rulings[0].settled.is_err());
    }
}
