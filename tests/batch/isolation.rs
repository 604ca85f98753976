//! Concurrent readers never see half of an atomic cross-shard batch.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::elements::{apply_op, get_op};
use crate::instances::{account_definition, create, get, INITIAL_BALANCE};
use crate::rng::Rng;
use crate::support::{ids_on_shard, put_machine, AsyncRawClient, Server};

/// What a transfer writer committed, by seq: (balance of a, balance of b).
type Ledger = BTreeMap<i64, (i64, i64)>;

/// One writer: transfers within its pair (a on shard 0, b on shard 1) for
/// `run_for`; every fourth round first tries a batch that must fail after
/// staging poison on shard 0. Returns the committed ledger.
async fn transfer_writer(
    addr: SocketAddr,
    a: String,
    b: String,
    run_for: Duration,
    seed: u64,
) -> Result<Ledger, String> {
    let mut c = AsyncRawClient::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut rng = Rng(seed | 1);
    let mut ledger = Ledger::new();
    let (mut bal_a, mut bal_b) = (INITIAL_BALANCE, INITIAL_BALANCE);
    ledger.insert(0, (bal_a, bal_b));
    let started = Instant::now();
    let mut seq = 0i64;
    while started.elapsed() < run_for {
        seq += 1;
        if seq % 4 == 0 {
            let poison = json!({"bal": -999_999, "seq": -1, "poison": true});
            let ops = json!([
                apply_op(&a, "MOVE", poison.clone()),
                apply_op(&b, "MOVE", poison),
                apply_op(&b, "NOPE", Value::Null),
            ]);
            let r = c
                .call("BATCH", json!({"mode": "atomic", "ops": ops}))
                .await
                .map_err(|e| format!("poisoned batch: {e}"))?;
            if r["status"] != "error" || r["error"]["details"]["failed_op_index"] != 2 {
                return Err(format!("poisoned batch must fail at op 2: {r}"));
            }
        }
        let k = 1 + rng.below(100) as i64;
        let (na, nb) = if rng.below(2) == 0 {
            (bal_a - k, bal_b + k)
        } else {
            (bal_a + k, bal_b - k)
        };
        let mut ops = vec![
            apply_op(&a, "MOVE", json!({"bal": na, "seq": seq})),
            apply_op(&b, "MOVE", json!({"bal": nb, "seq": seq})),
        ];
        if rng.below(2) == 0 {
            ops.reverse();
        }
        let r = c
            .call("BATCH", json!({"mode": "atomic", "ops": ops}))
            .await
            .map_err(|e| format!("transfer {seq}: {e}"))?;
        if r["status"] != "ok" {
            return Err(format!("transfer {seq} failed: {r}"));
        }
        bal_a = na;
        bal_b = nb;
        ledger.insert(seq, (na, nb));
    }
    Ok(ledger)
}

/// (seq, bal) from a GET_INSTANCE result.
fn seq_bal(result: &Value) -> Result<(i64, i64), String> {
    let ctx = &result["ctx"];
    if ctx.get("poison").is_some() {
        return Err(format!(
            "a reader saw staged state of a failed batch: {result}"
        ));
    }
    match (ctx["seq"].as_i64(), ctx["bal"].as_i64()) {
        (Some(s), Some(b)) => Ok((s, b)),
        _ => Err(format!("unexpected ctx: {result}")),
    }
}

/// Observations of one reader: (pair, seq of a, bal a, seq of b, bal b, how).
type Observation = (usize, i64, i64, i64, i64, &'static str);

/// A reader: in a loop over both pairs, GET a then b, GET b then a, and an
/// atomic BATCH of both GETs. Checks what needs no ledger on the fly.
async fn reader(
    addr: SocketAddr,
    pairs: Vec<(String, String)>,
    run_for: Duration,
) -> Result<Vec<Observation>, String> {
    let mut c = AsyncRawClient::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut seen = Vec::new();
    let started = Instant::now();
    let mut round = 0usize;
    while started.elapsed() < run_for {
        let p = round % pairs.len();
        let (a, b) = &pairs[p];
        let get = |id: &str| json!({"instance_id": id});
        let how = ["a-then-b", "b-then-a", "atomic-batch"][round % 3];
        let (sa, ba, sb, bb) = match how {
            "a-then-b" | "b-then-a" => {
                let first_is_a = how == "a-then-b";
                let (first, second) = if first_is_a { (a, b) } else { (b, a) };
                let r1 = c
                    .call("GET_INSTANCE", get(first))
                    .await
                    .map_err(|e| e.to_string())?;
                let r2 = c
                    .call("GET_INSTANCE", get(second))
                    .await
                    .map_err(|e| e.to_string())?;
                let (s1, b1) = seq_bal(&r1["result"])?;
                let (s2, b2) = seq_bal(&r2["result"])?;
                // Once any part of a batch is visible, all of it is: the
                // second read can never be older than the first.
                if s2 < s1 {
                    return Err(format!(
                        "{how}: read {first} at seq {s1}, then {second} at older seq {s2}: \
                         a batch was half visible"
                    ));
                }
                if first_is_a {
                    (s1, b1, s2, b2)
                } else {
                    (s2, b2, s1, b1)
                }
            }
            _ => {
                let ops = json!([get_op(a), get_op(b)]);
                let r = c
                    .call("BATCH", json!({"mode": "atomic", "ops": ops}))
                    .await
                    .map_err(|e| e.to_string())?;
                if r["status"] != "ok" {
                    return Err(format!("atomic read batch failed: {r}"));
                }
                let (s1, b1) = seq_bal(&r["result"]["results"][0]["result"])?;
                let (s2, b2) = seq_bal(&r["result"]["results"][1]["result"])?;
                if s1 != s2 || b1 + b2 != 2 * INITIAL_BALANCE {
                    return Err(format!(
                        "an atomic batch of two GETs saw a at seq {s1} (bal {b1}) and b at seq \
                         {s2} (bal {b2}): not one consistent state"
                    ));
                }
                (s1, b1, s2, b2)
            }
        };
        if sa == sb && ba + bb != 2 * INITIAL_BALANCE {
            return Err(format!(
                "{how}: both at seq {sa} but {ba} + {bb} != {}",
                2 * INITIAL_BALANCE
            ));
        }
        seen.push((p, sa, ba, sb, bb, how));
        round += 1;
    }
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_readers_never_see_half_of_an_atomic_batch() {
    const PAIRS: usize = 2;
    const READERS: usize = 3;
    const RUN_FOR: Duration = Duration::from_secs(4);

    let server = Server::start(&[]);
    let mut c = server.raw();
    put_machine(&mut c, "acct", account_definition());
    let a = ids_on_shard("iso", 0, PAIRS);
    let b = ids_on_shard("iso", 1, PAIRS);
    let pairs: Vec<(String, String)> = a.into_iter().zip(b).collect();
    for (x, y) in &pairs {
        create(&mut c, "acct", x, json!({"bal": INITIAL_BALANCE, "seq": 0}));
        create(&mut c, "acct", y, json!({"bal": INITIAL_BALANCE, "seq": 0}));
    }
    let mut rng = Rng::seeded("isolation");
    let addr = server.addr();
    let writers: Vec<_> = pairs
        .iter()
        .map(|(x, y)| {
            tokio::spawn(transfer_writer(
                addr,
                x.clone(),
                y.clone(),
                RUN_FOR,
                rng.next(),
            ))
        })
        .collect();
    let readers: Vec<_> = (0..READERS)
        .map(|_| tokio::spawn(reader(addr, pairs.clone(), RUN_FOR)))
        .collect();
    let mut ledgers = Vec::new();
    for (i, w) in writers.into_iter().enumerate() {
        match w.await.expect("writer task") {
            Ok(l) => ledgers.push(l),
            Err(e) => panic!("writer {i}: {e}\nserver stderr:\n{}", server.stderr_tail()),
        }
    }
    let mut observations = Vec::new();
    for (i, r) in readers.into_iter().enumerate() {
        match r.await.expect("reader task") {
            Ok(o) => observations.extend(o),
            Err(e) => panic!("reader {i}: {e}\nserver stderr:\n{}", server.stderr_tail()),
        }
    }
    // Every value read is one some committed batch wrote.
    let mut by_how: BTreeMap<&str, usize> = BTreeMap::new();
    for (p, sa, ba, sb, bb, how) in &observations {
        let ledger = &ledgers[*p];
        assert_eq!(
            ledger.get(sa).map(|v| v.0),
            Some(*ba),
            "pair {p} a at seq {sa} read {ba} ({how})"
        );
        assert_eq!(
            ledger.get(sb).map(|v| v.1),
            Some(*bb),
            "pair {p} b at seq {sb} read {bb} ({how})"
        );
        *by_how.entry(how).or_default() += 1;
    }
    let transfers: usize = ledgers.iter().map(|l| l.len() - 1).sum();
    eprintln!(
        "isolation: {transfers} transfers ({:.0}/s atomic 2-op cross-shard batches, 1 writer per \
         pair, plus failing ones), reads checked: {by_how:?}",
        transfers as f64 / RUN_FOR.as_secs_f64()
    );
    assert!(
        transfers >= 20,
        "too few transfers to mean anything: {transfers}"
    );
    assert!(
        by_how.len() == 3 && by_how.values().all(|&n| n >= 10),
        "{by_how:?}"
    );
    // Final state is the last ledger entry.
    for ((x, y), ledger) in pairs.iter().zip(&ledgers) {
        let (last_seq, (ba, bb)) = ledger.iter().next_back().map(|(s, v)| (*s, *v)).unwrap();
        assert_eq!(seq_bal(&get(&mut c, x).unwrap()).unwrap(), (last_seq, ba));
        assert_eq!(seq_bal(&get(&mut c, y).unwrap()).unwrap(), (last_seq, bb));
    }
}
