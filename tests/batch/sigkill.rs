//! A SIGKILL at any moment of cross-shard transfers leaves every batch
//! whole: applied everywhere or nowhere.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use tempfile::TempDir;

use crate::elements::apply_op;
use crate::instances::{account_definition, create, get, INITIAL_BALANCE};
use crate::rng::Rng;
use crate::support::{ids_on_shard, put_machine, AsyncRawClient, RawClient, Server};

/// One connection's accounts and what it knows was committed.
#[derive(Debug, Clone)]
struct Owner {
    conn: usize,
    /// Two accounts on shard 0, two on shard 1.
    left: Vec<String>,
    right: Vec<String>,
    /// Acknowledged (bal, seq) per account.
    known: BTreeMap<String, (i64, i64)>,
    next_seq: i64,
}

/// The batch a connection had in flight at the kill: account → (bal, seq) after it.
type InFlight = BTreeMap<String, (i64, i64)>;

#[derive(Debug, Default)]
struct RoundLog {
    acks: usize,
    in_flight: Option<InFlight>,
    problems: Vec<String>,
    ended_by: String,
    ended_at: Option<Instant>,
}

async fn transfer_load(addr: SocketAddr, owner: &mut Owner, seed: u64) -> RoundLog {
    let mut log = RoundLog::default();
    let mut rng = Rng(seed | 1);
    let mut c = match AsyncRawClient::connect(addr).await {
        Ok(c) => c,
        Err(e) => {
            log.problems
                .push(format!("conn {}: connect: {e}", owner.conn));
            return log;
        }
    };
    loop {
        let seq = owner.next_seq;
        let x = owner.left[rng.below(2) as usize].clone();
        let y = owner.right[rng.below(2) as usize].clone();
        let k = 1 + rng.below(100) as i64;
        let (bx, by) = (owner.known[&x].0, owner.known[&y].0);
        let (nx, ny) = if rng.below(2) == 0 {
            (bx - k, by + k)
        } else {
            (bx + k, by - k)
        };
        let tx = format!("c{}-{seq}", owner.conn);
        let mut ops = vec![
            apply_op(&x, "MOVE", json!({"bal": nx, "seq": seq, "tx": tx})),
            apply_op(&y, "MOVE", json!({"bal": ny, "seq": seq, "tx": tx})),
        ];
        if rng.below(2) == 0 {
            ops.reverse();
        }
        let after: InFlight = BTreeMap::from([(x.clone(), (nx, seq)), (y.clone(), (ny, seq))]);
        log.in_flight = Some(after.clone());
        let r = match c.call("BATCH", json!({"mode": "atomic", "ops": ops})).await {
            Ok(r) => r,
            Err(e) => {
                log.ended_by = e.to_string();
                log.ended_at = Some(Instant::now());
                return log;
            }
        };
        if r["status"] != "ok" {
            log.problems
                .push(format!("conn {}: transfer {tx} failed: {r}", owner.conn));
            return log;
        }
        for (id, v) in after {
            owner.known.insert(id, v);
        }
        owner.next_seq += 1;
        log.in_flight = None;
        log.acks += 1;
    }
}

/// (bal, seq) of every account of `owner`, read from the server.
fn read_accounts(c: &mut RawClient, owner: &Owner) -> BTreeMap<String, (i64, i64)> {
    owner
        .left
        .iter()
        .chain(&owner.right)
        .map(|id| {
            let r = get(c, id).unwrap_or_else(|| panic!("account {id} vanished"));
            let ctx = &r["ctx"];
            (
                id.clone(),
                (
                    ctx["bal"].as_i64().unwrap_or(i64::MIN),
                    ctx["seq"].as_i64().unwrap_or(-1),
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_cross_shard_transfers_keeps_every_batch_whole() {
    const CONNECTIONS: usize = 4;
    const CYCLES: usize = 5;
    const ACCOUNTS_PER_SHARD_PER_CONN: usize = 2;
    const MIN_ACKS_PER_CYCLE: usize = 10;

    let dir = TempDir::new().unwrap();
    let mut server = Server::start_in(dir.path(), &[]);
    let mut c = server.raw();
    put_machine(&mut c, "acct", account_definition());
    let left = ids_on_shard("kill", 0, CONNECTIONS * ACCOUNTS_PER_SHARD_PER_CONN);
    let right = ids_on_shard("kill", 1, CONNECTIONS * ACCOUNTS_PER_SHARD_PER_CONN);
    let mut owners: Vec<Owner> = (0..CONNECTIONS)
        .map(|conn| {
            let l = left[conn * 2..conn * 2 + 2].to_vec();
            let r = right[conn * 2..conn * 2 + 2].to_vec();
            let known = l
                .iter()
                .chain(&r)
                .map(|id| (id.clone(), (INITIAL_BALANCE, 0)))
                .collect();
            Owner {
                conn,
                left: l,
                right: r,
                known,
                next_seq: 1,
            }
        })
        .collect();
    for id in left.iter().chain(&right) {
        create(
            &mut c,
            "acct",
            id,
            json!({"bal": INITIAL_BALANCE, "seq": 0}),
        );
    }
    let total = INITIAL_BALANCE * (left.len() + right.len()) as i64;
    let mut rng = Rng::seeded("kill test");
    let started = Instant::now();

    for cycle in 1..=CYCLES {
        let kill_after = Duration::from_millis(500 + rng.below(1000));
        let addr = server.addr();
        let tasks: Vec<_> = owners
            .iter()
            .cloned()
            .map(|mut owner| {
                let seed = rng.next();
                tokio::spawn(async move {
                    let log = transfer_load(addr, &mut owner, seed).await;
                    (owner, log)
                })
            })
            .collect();
        tokio::time::sleep(kill_after).await;
        let killed_at = Instant::now();
        server.sigkill();
        let mut logs = Vec::new();
        owners.clear();
        for t in tasks {
            let (owner, log) = t.await.expect("load task");
            owners.push(owner);
            logs.push(log);
        }
        let acks: usize = logs.iter().map(|l| l.acks).sum();
        let mut problems: Vec<String> = logs.iter().flat_map(|l| l.problems.clone()).collect();
        for (i, l) in logs.iter().enumerate() {
            if l.ended_at
                .is_some_and(|t| t + Duration::from_millis(5) < killed_at)
            {
                problems.push(format!("conn {i} ended before the kill: {}", l.ended_by));
            }
        }
        assert!(
            problems.is_empty(),
            "cycle {cycle}: {problems:#?}\nserver stderr:\n{}",
            server.stderr_tail()
        );
        assert!(
            acks >= MIN_ACKS_PER_CYCLE,
            "cycle {cycle}: only {acks} batches acknowledged before the kill\n{}",
            server.stderr_tail()
        );

        server.restart();
        let mut c = server.raw();
        let mut failures = Vec::new();
        let mut sum = 0i64;
        let mut in_flight_applied = 0;
        for (owner, log) in owners.iter_mut().zip(&logs) {
            let observed = read_accounts(&mut c, owner);
            sum += observed.values().map(|(b, _)| b).sum::<i64>();
            let flight = log.in_flight.clone().unwrap_or_default();
            // The in-flight batch: both of its accounts before it, or both after.
            let before_ok = flight.keys().all(|id| observed[id] == owner.known[id]);
            let after_ok = flight.iter().all(|(id, v)| observed[id] == *v);
            if !(before_ok || after_ok) {
                failures.push(format!(
                    "conn {}: in-flight batch {flight:?} half applied: observed {:?}, known {:?}",
                    owner.conn, observed, owner.known
                ));
            }
            if after_ok && !before_ok {
                in_flight_applied += 1;
            }
            // Everything acknowledged (and not touched by the in-flight batch) is there.
            for (id, want) in &owner.known {
                if !flight.contains_key(id) && observed[id] != *want {
                    failures.push(format!(
                        "conn {}: account {id} is {:?}, acknowledged {want:?}",
                        owner.conn, observed[id]
                    ));
                }
            }
            // Settle: what is on the server is what we know from now on.
            owner.known = observed;
            if after_ok && !before_ok {
                owner.next_seq += 1;
            }
        }
        if sum != total {
            failures.push(format!("sum of balances is {sum}, expected {total}"));
        }
        assert!(
            failures.is_empty(),
            "cycle {cycle} (killed after {kill_after:?}, {acks} acks):\n{}\nserver stderr:\n{}",
            failures.join("\n"),
            server.stderr_tail()
        );
        eprintln!(
            "cycle {cycle}: killed after {kill_after:?}; {acks} acknowledged transfers; \
             {in_flight_applied} of {} in-flight batches applied after restart; sum {sum}",
            logs.iter().filter(|l| l.in_flight.is_some()).count()
        );
    }

    // Nothing is left locked or in doubt: every account takes a new batch.
    let mut c = server.raw();
    for owner in &owners {
        let (x, y) = (&owner.left[0], &owner.right[0]);
        let (bx, by) = (owner.known[x].0, owner.known[y].0);
        let r = c.ok(
            "BATCH",
            json!({"mode": "atomic", "ops": [
                apply_op(x, "MOVE", json!({"bal": bx - 1, "seq": owner.next_seq})),
                apply_op(y, "MOVE", json!({"bal": by + 1, "seq": owner.next_seq})),
            ]}),
        );
        assert_eq!(r["results"].as_array().map(Vec::len), Some(2), "{r}");
    }
    let final_sum: i64 = owners
        .iter()
        .map(|o| {
            read_accounts(&mut c, o)
                .values()
                .map(|(b, _)| b)
                .sum::<i64>()
        })
        .sum();
    assert_eq!(final_sum, total);
    eprintln!(
        "kill test: {CYCLES} cycles in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
