//! WATCH_ALL filters: AND across machines, from/to states and events, OR
//! within a list, empty means everything.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::conn::WatchConn;
use crate::events::{
    apply, create, expected_event, ids_on_all_shards, order_definition, ticket_definition, Acked,
};
use crate::support::{put_machine, Server};

/// What a WATCH_ALL filter lets through (docs/PROTOCOL.md §10.2: AND across
/// categories, OR within a list, empty = everything).
#[derive(Clone, Debug)]
struct FilterSpec {
    params: Value,
}

impl FilterSpec {
    fn allows(&self, a: &Acked) -> bool {
        let ok = |key: &str, value: &str| match self.params.get(key).and_then(Value::as_array) {
            None => true,
            Some(list) if list.is_empty() => true,
            Some(list) => list.iter().any(|v| v == value),
        };
        ok("machines", &a.machine)
            && ok("from_states", &a.from_state)
            && ok("to_states", &a.to_state)
            && ok("events", &a.event)
    }
}

#[test]
fn watch_all_filters_select_by_machine_states_and_event() {
    let server = Server::start(&[]);
    let mut writer = server.raw();
    put_machine(&mut writer, "order", order_definition());
    put_machine(&mut writer, "ticket", ticket_definition());
    let orders = ids_on_all_shards("order", 2);
    let tickets = ids_on_all_shards("ticket", 1);
    for id in &orders {
        create(&mut writer, "order", id);
    }
    for id in &tickets {
        create(&mut writer, "ticket", id);
    }

    let filters: Vec<FilterSpec> = [
        json!({}),
        json!({"machines": ["order"]}),
        json!({"machines": ["ticket", "nothing"]}),
        json!({"from_states": ["paid"]}),
        json!({"to_states": ["cancelled", "closed"]}),
        json!({"events": ["NOTE"]}),
        json!({"machines": ["order"], "events": ["NOTE"]}),
        json!({"machines": ["ticket"], "from_states": ["closed"], "to_states": ["open"],
               "events": ["REOPEN"]}),
        json!({"machines": [], "events": []}),
        json!({"machines": ["Order"]}),
    ]
    .into_iter()
    .map(|params| FilterSpec { params })
    .collect();

    // All subscriptions on one connection (one message per subscription),
    // plus one filter on a connection of its own.
    let mut conn = WatchConn::connect(server.addr(), "filters");
    let mut subs: Vec<String> = Vec::new();
    for f in &filters {
        let mut params = f.params.clone();
        params["include_ctx"] = json!(false);
        let r = conn.ok("WATCH_ALL", params);
        subs.push(r["subscription_id"].as_str().unwrap().to_string());
    }
    let mut alone = WatchConn::connect(server.addr(), "alone");
    let alone_filter = FilterSpec {
        params: json!({"machines": ["order"], "from_states": ["created"], "to_states": ["paid"]}),
    };
    let alone_sub = alone.ok("WATCH_ALL", alone_filter.params.clone())["subscription_id"]
        .as_str()
        .unwrap()
        .to_string();

    let script: Vec<(&str, &str, &str)> = vec![
        ("order", &orders[0], "PAY"),
        ("order", &orders[1], "NOTE"),
        ("ticket", &tickets[0], "CLOSE"),
        ("order", &orders[0], "SHIP"),
        ("order", &orders[2], "PAY"),
        ("ticket", &tickets[1], "NOTE"),
        ("order", &orders[2], "CANCEL"),
        ("ticket", &tickets[0], "REOPEN"),
        ("order", &orders[3], "CANCEL"),
        ("ticket", &tickets[1], "CLOSE"),
        ("order", &orders[0], "NOTE"),
        ("order", &orders[1], "PAY"),
    ];
    let mut acked = Vec::new();
    for (machine, id, event) in script {
        acked.push(apply(
            &mut writer,
            machine,
            id,
            event,
            Some(json!({"e": event})),
        ));
    }
    acked.sort_by_key(|a| a.offset);

    // Expected per subscription, then collect everything the connection gets.
    let mut want: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (f, sub) in filters.iter().zip(&subs) {
        let list = acked
            .iter()
            .filter(|a| f.allows(a))
            .map(|a| expected_event(sub, 1, a, false))
            .collect();
        want.insert(sub.clone(), list);
    }
    let total: usize = want.values().map(Vec::len).sum();
    let got = conn.expect_events(total, "all filters on one connection");
    let mut by_sub: BTreeMap<String, Vec<Value>> =
        subs.iter().map(|s| (s.clone(), Vec::new())).collect();
    for e in got {
        let sub = e["subscription_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        by_sub
            .get_mut(&sub)
            .unwrap_or_else(|| panic!("event for an unknown subscription: {e}"))
            .push(e);
    }
    for (f, sub) in filters.iter().zip(&subs) {
        assert_eq!(
            by_sub[sub], want[sub],
            "filter {} delivered the wrong events",
            f.params
        );
    }
    // Sanity: the script exercises every filter both ways.
    assert_eq!(want[&subs[0]].len(), acked.len());
    assert!(want[&subs[9]].is_empty(), "filters are case-sensitive");
    assert_eq!(want[&subs[7]].len(), 1);

    let alone_want: Vec<Value> = acked
        .iter()
        .filter(|a| alone_filter.allows(a))
        .map(|a| {
            let mut e = expected_event(&alone_sub, 1, a, true);
            e["ctx"] = a.ctx.clone();
            e
        })
        .collect();
    assert_eq!(alone_want.len(), 3);
    let got = alone.expect_events(alone_want.len(), "filter on its own connection");
    assert_eq!(got, alone_want);
}
