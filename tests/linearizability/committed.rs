//! What the server holds after the run, as the checker wants it: the
//! committed log of the instances under test (WAL_READ, page by page) and
//! a final GET of each, recorded as operations of one more client.

use std::collections::{BTreeMap, HashSet};

use corestate_checker::{Call, Change, ClientLog, Committed, FinalRead, Outcome, Reply};
use serde_json::{json, Value};

use crate::support::RawClient;
use crate::workload::outcome_of;

/// Records per WAL_READ page (the server's maximum).
const WAL_PAGE_RECORDS: u64 = 1000;

/// Attempts at one final GET. The load has stopped, but shard leaders may
/// still move (the balancer, an election after the last fault): a GET
/// caught in a move is refused with the retryable failover error and
/// `outcome: not_applied`, and is asked again, as a client would.
const FINAL_GET_ATTEMPTS_MAX: usize = 100;
/// Pause between two attempts at a final GET.
const FINAL_GET_RETRY_PAUSE_MS: u64 = 50;

/// Every create and apply of `instances` in the log, in log order.
pub fn read_committed(client: &mut RawClient, instances: &[String]) -> Vec<Committed> {
    let instances: HashSet<&str> = instances.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    let mut from = json!(0);
    loop {
        let page = client.ok(
            "WAL_READ",
            json!({"from_offset": from, "limit": WAL_PAGE_RECORDS}),
        );
        let records = page["records"].as_array().expect("records").clone();
        for record in &records {
            if let Some(c) = committed_of(record, &instances) {
                out.push(c);
            }
        }
        if page["next_offset"].is_null() {
            return out;
        }
        from = page["next_offset"].clone();
    }
}

fn committed_of(record: &Value, instances: &HashSet<&str>) -> Option<Committed> {
    let entry = &record["entry"];
    let instance = entry["instance_id"].as_str()?;
    if !instances.contains(instance) {
        return None;
    }
    let text = |key: &str| entry[key].as_str().map(str::to_string);
    let change = match entry["type"].as_str()? {
        "create_instance" => Change::Create {
            state: text("initial_state")?,
        },
        "apply_event" => Change::Apply {
            event: text("event")?,
            from_state: text("from_state")?,
            to_state: text("to_state")?,
        },
        other => panic!("unexpected {other} entry for {instance}: {record}"),
    };
    Some(Committed {
        offset: record["offset"].as_u64().expect("offset"),
        instance: instance.to_string(),
        change,
        key: text("idempotency_key"),
    })
}

/// GET every instance after the load (every client has stopped), into
/// `log` and as final reads.
pub fn final_reads(
    client: &mut RawClient,
    log: &mut ClientLog,
    instances: &[String],
) -> BTreeMap<String, FinalRead> {
    let mut out = BTreeMap::new();
    for instance in instances {
        let pending = log.invoke(instance, Call::Get);
        let response = get_retrying(client, instance);
        let outcome = outcome_of(&Call::Get, &response);
        if let Outcome::Ok(Reply::Got {
            state,
            last_wal_offset,
        }) = &outcome
        {
            out.insert(
                instance.clone(),
                FinalRead {
                    state: state.clone(),
                    last_wal_offset: *last_wal_offset,
                },
            );
        }
        assert_ne!(
            outcome,
            Outcome::Unknown,
            "final GET {instance}: {response}"
        );
        log.complete(pending, outcome);
    }
    out
}

/// GET_INSTANCE of `instance`, asked again while a leadership move refuses
/// it without running it. The one operation it is recorded as spans every
/// attempt, so the read it returns lies inside it.
fn get_retrying(client: &mut RawClient, instance: &str) -> Value {
    let mut attempts = 1;
    loop {
        let response = client.call("GET_INSTANCE", json!({"instance_id": instance}));
        let error = &response["error"];
        let moved = response["status"] == "error"
            && error["retryable"] == true
            && error["details"]["outcome"] == "not_applied";
        if !moved || attempts == FINAL_GET_ATTEMPTS_MAX {
            return response;
        }
        attempts += 1;
        std::thread::sleep(std::time::Duration::from_millis(FINAL_GET_RETRY_PAUSE_MS));
    }
}
