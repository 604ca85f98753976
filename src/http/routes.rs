//! The route table of the HTTP API — the one list the router matches
//! against, the OpenAPI test compares with, and the README documents — and
//! the translation of a matched route into the RCP operation behind it.
//!
//! Every route except health, the OpenAPI document and the webhook routes
//! (`crate::webhooks`, which RCP does not have) is one RCP operation:
//! path parameters, query parameters and the JSON body become that
//! operation's `params`, and the operation runs through the same dispatch
//! code as over RCP (`crate::server::dispatch::run_request`). Values are
//! passed on as the client wrote them, so the operation's own parameter
//! checks produce the same `BAD_REQUEST` messages as over RCP (a `limit`
//! of `abc` arrives as the string `"abc"` and is refused as one).

use serde_json::{Map, Value};

use super::errors::HttpError;
use crate::protocol::op::Op;

/// HTTP methods the API serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Put,
    Post,
    Delete,
}

impl Verb {
    pub fn from_method(method: &hyper::Method) -> Option<Verb> {
        match method.as_str() {
            "GET" => Some(Verb::Get),
            "PUT" => Some(Verb::Put),
            "POST" => Some(Verb::Post),
            "DELETE" => Some(Verb::Delete),
            _ => None,
        }
    }

    /// Upper case, as in an `Allow` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Put => "PUT",
            Verb::Post => "POST",
            Verb::Delete => "DELETE",
        }
    }
}

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `{"status":"ok"}`, without authentication and without asking a shard.
    Health,
    /// The OpenAPI document, without authentication.
    OpenApi,
    /// One RCP operation.
    Op(Op),
    /// A watch stream over WebSocket (`http::ws`).
    Watch,
    /// A file of the live page (`http::page`), without authentication.
    Page(Asset),
    /// An operation on webhook subscriptions (`crate::webhooks`).
    Webhook(WebhookOp),
}

/// The webhook routes: no RCP operation behind them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOp {
    Create,
    List,
    Get,
    Delete,
    Resume,
}

pub use super::page::Asset;

/// Where a parameter of the RCP operation comes from, besides the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyUse {
    /// No body is read.
    None,
    /// The body is a JSON object: the operation's parameters.
    Params,
    /// The body is the machine definition (`PUT_MACHINE`'s `definition`).
    Definition,
}

impl BodyUse {
    /// How many levels an RCP request nests around what the body holds
    /// (its envelope, and `params` around a definition): the body may nest
    /// only as deep as the same values can over RCP
    /// (`request::parse_json_document`).
    pub fn levels_around(self) -> usize {
        match self {
            BodyUse::None | BodyUse::Params => 1,
            BodyUse::Definition => 2,
        }
    }
}

/// One route: method, path template (OpenAPI syntax, `{name}` for a path
/// parameter, which becomes the RCP parameter of that name), what it runs.
#[derive(Debug)]
pub struct Route {
    pub verb: Verb,
    pub path: &'static str,
    pub action: Action,
    pub body: BodyUse,
    /// Query parameters accepted (passed on as RCP parameters); others are
    /// refused with 400 so a misspelt filter never silently matches all.
    pub query: &'static [&'static str],
    /// Needs `Authorization: Bearer` when authentication is required.
    pub auth: bool,
    /// Takes an `Idempotency-Key` header (mapped to `idempotency_key`).
    pub idempotency_key: bool,
}

const fn webhook_route(verb: Verb, path: &'static str, op: WebhookOp, body: BodyUse) -> Route {
    Route {
        action: Action::Webhook(op),
        ..route(verb, path, Op::Ping, body)
    }
}

const fn route(verb: Verb, path: &'static str, op: Op, body: BodyUse) -> Route {
    Route {
        verb,
        path,
        action: Action::Op(op),
        body,
        query: &[],
        auth: true,
        idempotency_key: false,
    }
}

/// Every route of the API.
pub const ROUTES: &[Route] = &[
    Route {
        auth: false,
        action: Action::Health,
        ..route(Verb::Get, "/v1/health", Op::Ping, BodyUse::None)
    },
    Route {
        auth: false,
        action: Action::OpenApi,
        ..route(Verb::Get, "/openapi.json", Op::Ping, BodyUse::None)
    },
    Route {
        auth: false,
        action: Action::Page(Asset::Index),
        ..route(Verb::Get, "/", Op::Ping, BodyUse::None)
    },
    Route {
        auth: false,
        action: Action::Page(Asset::Script),
        ..route(Verb::Get, "/app.js", Op::Ping, BodyUse::None)
    },
    Route {
        auth: false,
        action: Action::Page(Asset::Style),
        ..route(Verb::Get, "/style.css", Op::Ping, BodyUse::None)
    },
    // Authentication is checked by `http::ws` (header or first message).
    Route {
        action: Action::Watch,
        query: super::ws::WATCH_QUERY,
        ..route(Verb::Get, "/v1/watch", Op::WatchAll, BodyUse::None)
    },
    route(Verb::Get, "/v1/info", Op::Info, BodyUse::None),
    route(Verb::Get, "/v1/machines", Op::ListMachines, BodyUse::None),
    route(
        Verb::Put,
        "/v1/machines/{machine}/versions/{version}",
        Op::PutMachine,
        BodyUse::Definition,
    ),
    route(
        Verb::Get,
        "/v1/machines/{machine}/versions/{version}",
        Op::GetMachine,
        BodyUse::None,
    ),
    Route {
        idempotency_key: true,
        ..route(
            Verb::Post,
            "/v1/instances",
            Op::CreateInstance,
            BodyUse::Params,
        )
    },
    Route {
        query: &["machine", "state", "limit", "offset"],
        ..route(Verb::Get, "/v1/instances", Op::ListInstances, BodyUse::None)
    },
    route(
        Verb::Get,
        "/v1/instances/{instance_id}",
        Op::GetInstance,
        BodyUse::None,
    ),
    Route {
        idempotency_key: true,
        ..route(
            Verb::Delete,
            "/v1/instances/{instance_id}",
            Op::DeleteInstance,
            BodyUse::None,
        )
    },
    Route {
        idempotency_key: true,
        ..route(
            Verb::Post,
            "/v1/instances/{instance_id}/events",
            Op::ApplyEvent,
            BodyUse::Params,
        )
    },
    route(Verb::Post, "/v1/batch", Op::Batch, BodyUse::Params),
    Route {
        query: &["from_offset", "limit"],
        ..route(Verb::Get, "/v1/wal", Op::WalRead, BodyUse::None)
    },
    route(Verb::Get, "/v1/wal/stats", Op::WalStats, BodyUse::None),
    webhook_route(
        Verb::Post,
        "/v1/webhooks",
        WebhookOp::Create,
        BodyUse::Params,
    ),
    webhook_route(Verb::Get, "/v1/webhooks", WebhookOp::List, BodyUse::None),
    webhook_route(
        Verb::Get,
        "/v1/webhooks/{id}",
        WebhookOp::Get,
        BodyUse::None,
    ),
    webhook_route(
        Verb::Delete,
        "/v1/webhooks/{id}",
        WebhookOp::Delete,
        BodyUse::None,
    ),
    webhook_route(
        Verb::Post,
        "/v1/webhooks/{id}/resume",
        WebhookOp::Resume,
        BodyUse::None,
    ),
];

/// Query and path parameters whose values are numbers in RCP.
const NUMERIC_PARAMS: &[&str] = &["version", "limit", "offset", "from_offset"];

/// A request matched to a route, with its decoded path parameters.
#[derive(Debug)]
pub struct Matched {
    pub route: &'static Route,
    pub path_params: Vec<(&'static str, String)>,
}

/// Why no route was matched.
#[derive(Debug, PartialEq, Eq)]
pub enum NoRoute {
    /// No route has this path.
    NotFound,
    /// Routes have this path, with these methods.
    MethodNotAllowed(Vec<Verb>),
    /// A path segment is not valid percent-encoded UTF-8.
    BadPath,
}

/// Find the route for `method` and `path` (without the query string).
pub fn find(method: &hyper::Method, path: &str) -> Result<Matched, NoRoute> {
    let verb = Verb::from_method(method);
    let segments: Vec<&str> = path.split('/').collect();
    let mut allowed = Vec::new();
    for route in ROUTES {
        let Some(path_params) = match_template(route.path, &segments)? else {
            continue;
        };
        if Some(route.verb) == verb {
            return Ok(Matched { route, path_params });
        }
        allowed.push(route.verb);
    }
    if allowed.is_empty() {
        Err(NoRoute::NotFound)
    } else {
        Err(NoRoute::MethodNotAllowed(allowed))
    }
}

/// The path parameters when `segments` fit `template`; `None` otherwise.
fn match_template(
    template: &'static str,
    segments: &[&str],
) -> Result<Option<Vec<(&'static str, String)>>, NoRoute> {
    let parts: Vec<&'static str> = template.split('/').collect();
    if parts.len() != segments.len() {
        return Ok(None);
    }
    let mut params = Vec::new();
    for (part, segment) in parts.iter().zip(segments) {
        match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            Some(name) => {
                if segment.is_empty() {
                    return Ok(None);
                }
                params.push((name, percent_decode(segment).ok_or(NoRoute::BadPath)?));
            }
            None if part == segment => {}
            None => return Ok(None),
        }
    }
    Ok(Some(params))
}

/// Decode `%XX` escapes; `None` for a bad escape or a result that is not UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `key=value&…` of a query string (`+` is a space), keys in order.
pub fn parse_query(query: &str) -> Result<Vec<(String, String)>, HttpError> {
    let mut pairs = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_decode(&s.replace('+', " ")).ok_or_else(|| {
                HttpError::bad_request(format_args!("query parameter `{key}` is not valid"))
            })
        };
        pairs.push((decode(key)?, decode(value)?));
    }
    Ok(pairs)
}

/// A path or query value as the RCP parameter: a number where RCP wants
/// one and the text is one, else the text (which the operation refuses with
/// its usual type error if it wanted a number).
fn param_value(name: &str, text: String) -> Value {
    if NUMERIC_PARAMS.contains(&name) {
        if let Ok(n) = text.parse::<u64>() {
            return Value::from(n);
        }
    }
    Value::String(text)
}

/// The inputs of one request that become RCP parameters.
pub struct Inputs {
    pub path_params: Vec<(&'static str, String)>,
    pub query: Vec<(String, String)>,
    /// The parsed body when the route reads one (`Value::Null` if empty).
    pub body: Value,
    pub idempotency_key: Option<String>,
}

/// The RCP `params` of a route's operation.
pub fn build_params(route: &Route, inputs: Inputs) -> Result<Value, HttpError> {
    let mut params = match (route.body, inputs.body) {
        (BodyUse::Params, Value::Object(map)) => map,
        (BodyUse::Params, Value::Null) => Map::new(),
        (BodyUse::Params, _) => {
            return Err(HttpError::bad_request(
                "the request body must be a JSON object",
            ))
        }
        (BodyUse::Definition, definition) => {
            let mut map = Map::new();
            map.insert("definition".into(), definition);
            map
        }
        (BodyUse::None, _) => Map::new(),
    };
    for (key, value) in inputs.query {
        let Some(name) = route.query.iter().find(|q| **q == key) else {
            return Err(HttpError::bad_request(format_args!(
                "unknown query parameter `{key}` (this route takes: {})",
                if route.query.is_empty() {
                    "none".to_string()
                } else {
                    route.query.join(", ")
                }
            )));
        };
        params.insert(name.to_string(), param_value(name, value));
    }
    if let Some(key) = inputs.idempotency_key {
        match params.get("idempotency_key") {
            Some(Value::String(own)) if *own != key => {
                return Err(HttpError::bad_request(
                    "the Idempotency-Key header and the body's idempotency_key differ",
                ))
            }
            _ => {
                params.insert("idempotency_key".into(), Value::String(key));
            }
        }
    }
    // The path names the resource: it wins over the same key in the body.
    for (name, value) in inputs.path_params {
        params.insert(name.to_string(), param_value(name, value));
    }
    Ok(Value::Object(params))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Method;
    use serde_json::json;

    #[test]
    fn paths_match_their_route_and_decode_parameters() {
        let m = find(&Method::GET, "/v1/instances/order%2F1%20a").unwrap();
        assert_eq!(m.route.action, Action::Op(Op::GetInstance));
        assert_eq!(
            m.path_params,
            vec![("instance_id", "order/1 a".to_string())]
        );
        let m = find(&Method::PUT, "/v1/machines/order/versions/3").unwrap();
        assert_eq!(m.route.action, Action::Op(Op::PutMachine));
        assert_eq!(
            find(&Method::GET, "/v1/nope").unwrap_err(),
            NoRoute::NotFound
        );
        assert_eq!(
            find(&Method::GET, "/v1/instances/").unwrap_err(),
            NoRoute::NotFound
        );
        assert_eq!(
            find(&Method::PATCH, "/v1/instances/x").unwrap_err(),
            NoRoute::MethodNotAllowed(vec![Verb::Get, Verb::Delete])
        );
        assert_eq!(
            find(&Method::GET, "/v1/instances/%zz").unwrap_err(),
            NoRoute::BadPath
        );
        assert_eq!(
            find(&Method::GET, "/v1/instances/%ff").unwrap_err(),
            NoRoute::BadPath
        );
    }

    #[test]
    fn every_route_is_unique() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert!(
                    a.verb != b.verb || a.path != b.path,
                    "{} {}",
                    a.verb.as_str(),
                    a.path
                );
            }
        }
    }

    #[test]
    fn query_values_become_typed_params_and_unknown_keys_are_refused() {
        let m = find(&Method::GET, "/v1/instances").unwrap();
        let query = parse_query("machine=a+b&limit=10&offset=x%21&").unwrap();
        let inputs = Inputs {
            path_params: m.path_params,
            query,
            body: Value::Null,
            idempotency_key: None,
        };
        assert_eq!(
            build_params(m.route, inputs).unwrap(),
            json!({"machine": "a b", "limit": 10, "offset": "x!"})
        );
        let inputs = Inputs {
            path_params: vec![],
            query: parse_query("machines=a").unwrap(),
            body: Value::Null,
            idempotency_key: None,
        };
        let e = build_params(m.route, inputs).unwrap_err();
        assert_eq!(e.status.as_u16(), 400);
    }

    #[test]
    fn the_path_wins_and_the_idempotency_header_must_agree_with_the_body() {
        let m = find(&Method::POST, "/v1/instances/i-1/events").unwrap();
        let inputs = |body: Value, key: Option<&str>| Inputs {
            path_params: m.path_params.clone(),
            query: vec![],
            body,
            idempotency_key: key.map(str::to_string),
        };
        assert_eq!(
            build_params(
                m.route,
                inputs(json!({"event": "GO", "instance_id": "x"}), Some("k"))
            )
            .unwrap(),
            json!({"event": "GO", "instance_id": "i-1", "idempotency_key": "k"})
        );
        assert!(build_params(m.route, inputs(json!({"idempotency_key": "j"}), Some("k"))).is_err());
        assert!(build_params(m.route, inputs(json!([1]), None)).is_err());
    }
}
