//! The live page at `/` in a real browser (headless Chromium): it draws a
//! machine's states and transitions, lists instances, and shows an event
//! applied over RCP in its live stream (the WebSocket of `/v1/watch`) —
//! with and without a token.

use serde_json::{json, Value};

use crate::browser::Browser;
use crate::client::{order_definition, start};
use crate::support::{auth_config, put_machine, RawClient, AUTH_TOKEN};

/// Draw, list, and stream one applied event; `rcp` is ready to write.
fn page_shows_graph_instances_and_live_events(browser: &Browser, rcp: &mut RawClient) {
    let states = browser.wait_for(
        "the order machine's graph",
        "return [...document.querySelectorAll('[data-machine=\"order\"] svg .state')]\
         .map(g => g.dataset.state)",
        |v| v.as_array().is_some_and(|a| a.len() == 3),
    );
    assert_eq!(states, json!(["created", "paid", "shipped"]));
    let labels = browser.run(
        "return [...document.querySelectorAll('[data-machine=\"order\"] svg .edge text')]\
         .map(t => t.textContent)",
    );
    assert_eq!(labels, json!(["PAY", "SHIP"]));
    browser.wait_for(
        "the instance in the list",
        "return document.getElementById('instances').textContent",
        |v| v.as_str().is_some_and(|t| t.contains("o-page")),
    );
    browser.wait_for(
        "the live stream subscribed",
        "return document.getElementById('status').textContent",
        |v| {
            v.as_str()
                .is_some_and(|t| t.starts_with("live from offset"))
        },
    );
    let applied = rcp.ok(
        "APPLY_EVENT",
        json!({"instance_id": "o-page", "event": "PAY", "payload": {"amount": 5}}),
    );
    let offset = applied["wal_offset"].as_u64().unwrap();
    let shown = browser.wait_for(
        "the applied event in the live stream",
        "const li = document.querySelector('#events li'); \
         return li ? [li.dataset.offset, li.textContent] : null",
        |v| !v.is_null(),
    );
    assert_eq!(shown[0], Value::String(offset.to_string()));
    let text = shown[1].as_str().unwrap();
    assert!(text.contains("order/o-page PAY: created → paid"), "{text}");
    browser.wait_for(
        "the listed instance's new state",
        "return document.querySelector('#instances tr[data-id=\"o-page\"]').children[3].textContent",
        |v| v == "paid",
    );
    // To look at the page: CORESTATE_PAGE_SCREENSHOT=/tmp/page.png
    if let Ok(path) = std::env::var("CORESTATE_PAGE_SCREENSHOT") {
        std::fs::write(&path, browser.screenshot()).expect("write the screenshot");
    }
}

fn order_with_instance(rcp: &mut RawClient) {
    put_machine(rcp, "order", order_definition());
    rcp.ok(
        "CREATE_INSTANCE",
        json!({"machine": "order", "version": 1, "instance_id": "o-page",
            "initial_ctx": {"amount": 5}}),
    );
}

#[test]
fn the_page_draws_machines_and_shows_an_event_applied_over_rcp() {
    let (server, api) = start(&[]);
    let mut rcp = server.raw();
    order_with_instance(&mut rcp);
    let browser = Browser::start();
    browser.open(&format!("http://{}/", api.addr));
    page_shows_graph_instances_and_live_events(&browser, &mut rcp);
}

#[test]
fn with_tokens_the_page_uses_the_token_it_is_given() {
    let (_dir, config) = auth_config();
    let (server, api) = start(&["--config", config.to_str().unwrap()]);
    let mut rcp = server.raw();
    rcp.ok("AUTH", json!({"method": "bearer", "token": AUTH_TOKEN}));
    order_with_instance(&mut rcp);
    let browser = Browser::start();
    browser.open(&format!("http://{}/", api.addr));
    // Without a token the API refuses and the stream is closed (1008).
    browser.wait_for(
        "the stream refused",
        "return document.getElementById('status').textContent",
        |v| v.as_str().is_some_and(|t| t.contains("1008")),
    );
    browser.run(&format!(
        "document.getElementById('token').value = '{AUTH_TOKEN}'; \
         document.getElementById('auth').requestSubmit();"
    ));
    page_shows_graph_instances_and_live_events(&browser, &mut rcp);
}
