//! Concurrent writers that record every acknowledged write and the request
//! in flight, until a SIGKILL ends them.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{AsyncRawClient, Server};

/// Concurrent connections writing during the kill test.
const LOAD_CONNECTIONS: usize = 4;

/// Requests the extra pipelining connection keeps unanswered at a time.
const PIPELINE_WINDOW: usize = 32;

/// Events applied to each instance before the connection moves on.
const APPLIES_PER_INSTANCE: u64 = 12;

/// Every this-many-th instance is deleted after its events.
const DELETE_EVERY: u64 = 5;

/// How long the load runs before the SIGKILL.
const LOAD_BEFORE_KILL: Duration = Duration::from_millis(1500);

pub fn state_after(n: u64) -> &'static str {
    if n.is_multiple_of(2) {
        "a"
    } else {
        "b"
    }
}

/// What the server told one connection about one instance, last seen.
#[derive(Debug, Clone, PartialEq)]
pub struct Known {
    pub state: String,
    pub ctx: Value,
    pub wal_offset: u64,
    pub deleted: bool,
}

/// The one request a connection had in flight when the server died.
#[derive(Debug, Clone)]
pub enum InFlight {
    Create { id: String, ctx: Value },
    Apply { id: String, payload: Value },
    Delete { id: String },
}

#[derive(Debug, Default)]
pub struct ConnectionLog {
    pub known: BTreeMap<String, Known>,
    pub acks: usize,
    /// Requests sent but not answered, in the order sent (one for a
    /// request-response connection, several for a pipelining one).
    pub in_flight: Vec<InFlight>,
    /// Responses that were errors or had the wrong content (server bugs).
    pub problems: Vec<String>,
    pub ended_by: String,
}

/// One connection's workload: create instances, flip each a few times,
/// delete some; record every acknowledged result until the server dies.
async fn run_load(addr: std::net::SocketAddr, conn: usize, prefix: String) -> ConnectionLog {
    let mut log = ConnectionLog::default();
    let mut client = match AsyncRawClient::connect(addr).await {
        Ok(client) => client,
        Err(e) => {
            log.problems
                .push(format!("connection {conn} could not connect: {e}"));
            return log;
        }
    };
    for k in 0u64.. {
        let id = format!("{prefix}-c{conn}-i{k:04}");
        let ctx = json!({"n": 0, "owner": conn});
        log.in_flight = vec![InFlight::Create {
            id: id.clone(),
            ctx: ctx.clone(),
        }];
        let params = json!({"machine": "flip", "version": 1, "instance_id": id,
                            "initial_ctx": ctx});
        let response = match client.call("CREATE_INSTANCE", params).await {
            Ok(r) => r,
            Err(e) => {
                log.ended_by = e.to_string();
                return log;
            }
        };
        let result = &response["result"];
        if response["status"] != "ok" || result["state"] != "a" {
            log.problems
                .push(format!("CREATE {id}: unexpected response {response}"));
            return log;
        }
        log.known.insert(
            id.clone(),
            Known {
                state: "a".into(),
                ctx,
                wal_offset: result["wal_offset"].as_u64().unwrap_or(0),
                deleted: false,
            },
        );
        log.acks += 1;

        for n in 1..=APPLIES_PER_INSTANCE {
            let payload = json!({"n": n, "by": conn});
            log.in_flight = vec![InFlight::Apply {
                id: id.clone(),
                payload: payload.clone(),
            }];
            let params = json!({"instance_id": id, "event": "FLIP", "payload": payload});
            let response = match client.call("APPLY_EVENT", params).await {
                Ok(r) => r,
                Err(e) => {
                    log.ended_by = e.to_string();
                    return log;
                }
            };
            let result = &response["result"];
            let previous = log.known[&id].clone();
            let expected_ctx = merged(&previous.ctx, &payload);
            let offset = result["wal_offset"].as_u64().unwrap_or(0);
            if response["status"] != "ok"
                || result["to_state"] != state_after(n)
                || result["ctx"] != expected_ctx
                || offset <= previous.wal_offset
            {
                log.problems.push(format!(
                    "APPLY {id} #{n}: unexpected response {response} (previous {previous:?})"
                ));
                return log;
            }
            log.known.insert(
                id.clone(),
                Known {
                    state: state_after(n).into(),
                    ctx: expected_ctx,
                    wal_offset: offset,
                    deleted: false,
                },
            );
            log.acks += 1;
        }

        if k % DELETE_EVERY == DELETE_EVERY - 1 {
            log.in_flight = vec![InFlight::Delete { id: id.clone() }];
            let response = match client
                .call("DELETE_INSTANCE", json!({"instance_id": id}))
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    log.ended_by = e.to_string();
                    return log;
                }
            };
            if response["status"] != "ok" || response["result"]["deleted"] != true {
                log.problems
                    .push(format!("DELETE {id}: unexpected response {response}"));
                return log;
            }
            if let Some(known) = log.known.get_mut(&id) {
                known.deleted = true;
            }
            log.acks += 1;
        }
    }
    unreachable!("the load runs until the server dies")
}

/// A connection that pipelines applies on one instance, keeping
/// `PIPELINE_WINDOW` of them unanswered, until the server dies.
async fn run_pipelined_load(addr: std::net::SocketAddr, prefix: String) -> ConnectionLog {
    let mut log = ConnectionLog::default();
    let mut client = match AsyncRawClient::connect(addr).await {
        Ok(client) => client,
        Err(e) => {
            log.problems
                .push(format!("pipelined connection could not connect: {e}"));
            return log;
        }
    };
    let id = format!("{prefix}-pipe");
    let ctx = json!({"n": 0, "owner": "pipe"});
    log.in_flight = vec![InFlight::Create {
        id: id.clone(),
        ctx: ctx.clone(),
    }];
    let params = json!({"machine": "flip", "version": 1, "instance_id": id, "initial_ctx": ctx});
    let response = match client.call("CREATE_INSTANCE", params).await {
        Ok(r) => r,
        Err(e) => {
            log.ended_by = e.to_string();
            return log;
        }
    };
    if response["status"] != "ok" {
        log.problems.push(format!("CREATE {id}: {response}"));
        return log;
    }
    let mut current = Known {
        state: "a".into(),
        ctx,
        wal_offset: response["result"]["wal_offset"].as_u64().unwrap_or(0),
        deleted: false,
    };
    log.known.insert(id.clone(), current.clone());
    log.acks += 1;
    log.in_flight.clear();

    let mut ids = VecDeque::new();
    let mut next_n = 1u64;
    loop {
        while log.in_flight.len() < PIPELINE_WINDOW {
            let payload = json!({"n": next_n});
            // Recorded before the write: a failed write may still have
            // delivered the request.
            log.in_flight.push(InFlight::Apply {
                id: id.clone(),
                payload: payload.clone(),
            });
            let params = json!({"instance_id": id, "event": "FLIP", "payload": payload});
            match client.send("APPLY_EVENT", params).await {
                Ok(request_id) => ids.push_back(request_id),
                Err(e) => {
                    log.ended_by = e.to_string();
                    return log;
                }
            }
            next_n += 1;
        }
        let response = match client.next_response().await {
            Ok(r) => r,
            Err(e) => {
                log.ended_by = e.to_string();
                return log;
            }
        };
        let request_id = ids.pop_front().expect("a request awaiting its answer");
        let InFlight::Apply { payload, .. } = log.in_flight.remove(0) else {
            unreachable!("only applies are pipelined")
        };
        let n = payload["n"].as_u64().unwrap();
        let result = &response["result"];
        let offset = result["wal_offset"].as_u64().unwrap_or(0);
        let expected_ctx = merged(&current.ctx, &payload);
        if response["id"] != request_id.as_str()
            || response["status"] != "ok"
            || result["to_state"] != state_after(n)
            || result["ctx"] != expected_ctx
            || offset <= current.wal_offset
        {
            log.problems.push(format!(
                "pipelined APPLY {id} #{n} (request {request_id}): unexpected response \
                 {response} (previous {current:?})"
            ));
            return log;
        }
        current = Known {
            state: state_after(n).into(),
            ctx: expected_ctx,
            wal_offset: offset,
            deleted: false,
        };
        log.known.insert(id.clone(), current.clone());
        log.acks += 1;
    }
}

/// Shallow merge of an object payload into an object context (docs/PROTOCOL.md §7.2).
pub fn merged(ctx: &Value, payload: &Value) -> Value {
    let mut out = ctx.clone();
    if let (Some(out), Some(payload)) = (out.as_object_mut(), payload.as_object()) {
        for (k, v) in payload {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// Run the load on every connection, SIGKILL the server in the middle of
/// it, and collect what each connection saw acknowledged.
pub async fn load_round(server: &mut Server, prefix: &str) -> Vec<ConnectionLog> {
    let addr = server.addr();
    let mut tasks: Vec<_> = (0..LOAD_CONNECTIONS)
        .map(|conn| tokio::spawn(run_load(addr, conn, prefix.to_string())))
        .collect();
    tasks.push(tokio::spawn(run_pipelined_load(addr, prefix.to_string())));
    tokio::time::sleep(LOAD_BEFORE_KILL).await;
    server.sigkill();
    let mut logs = Vec::new();
    for task in tasks {
        logs.push(task.await.expect("load task"));
    }
    logs
}
