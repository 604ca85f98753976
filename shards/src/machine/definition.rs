//! Machine definitions (spec §5): turning the JSON DSL sent with PUT_MACHINE
//! into a validated `MachineDef`, its normal form and CRC-32C checksum, and
//! choosing the transition an event fires.
//!
//! Two decisions differ from 0.3. Every validation failure is `BAD_REQUEST`
//! (not 0.3's retryable `INTERNAL_ERROR`, §15 row 27), and several
//! transitions may share a (source state, event): they are guarded
//! alternatives tried in definition order (§15 row 28).

use hashbrown::{HashMap, HashSet};
use serde_json::{Map, Value};

use crate::error::{EngineError, ErrorCode};
use crate::json::canonical;
use crate::machine::guard::{self, Guard};

/// Most entries a `states` list may have (duplicates count).
pub const MACHINE_STATES_MAX: usize = 10_000;

/// Most transitions one definition may have.
pub const MACHINE_TRANSITIONS_MAX: usize = 10_000;

/// Most `from` entries summed over all transitions: this bounds the size of
/// the (state, event) index built at parse time.
pub const MACHINE_TRANSITION_SOURCES_MAX: usize = 100_000;

/// One transition as declared. `from` is always a list (a string in the
/// DSL becomes a one-element list).
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: Vec<String>,
    pub event: String,
    pub to: String,
    pub guard: Option<Guard>,
}

/// A validated machine definition, immutable once registered.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineDef {
    pub machine: String,
    pub version: u32,
    pub states: Vec<String>,
    pub initial: String,
    pub transitions: Vec<Transition>,
    /// `None` when absent or `null`.
    pub meta: Option<Value>,
    /// CRC-32C of `normalized_json()`, 8 lower-case hex digits.
    pub checksum: String,
    state_set: HashSet<String>,
    /// event → source state → indices into `transitions`, in definition
    /// order. Keyed event-first so a lookup borrows both `&str`s.
    candidates: HashMap<String, HashMap<String, Vec<usize>>>,
}

/// What an event does in a given state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Selection<'a> {
    /// The first candidate whose guard passed (or that has no guard).
    Fire(&'a Transition),
    /// No transition leaves this state on this event.
    NoTransition,
    /// Candidates exist but every guard failed; carries the first candidate,
    /// which names the transition in the `GUARD_FAILED` message.
    GuardFailed(&'a Transition),
}

impl MachineDef {
    /// The exact bytes the checksum covers (§5.5): fixed key orders at the top
    /// level and in transitions, canonical JSON inside `meta`.
    pub fn normalized_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"{\"states\":");
        write_str_array(&mut out, &self.states);
        out.extend_from_slice(b",\"initial\":");
        canonical::write_str(&mut out, &self.initial);
        out.extend_from_slice(b",\"transitions\":[");
        for (i, t) in self.transitions.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"from\":");
            write_str_array(&mut out, &t.from);
            out.extend_from_slice(b",\"event\":");
            canonical::write_str(&mut out, &t.event);
            out.extend_from_slice(b",\"to\":");
            canonical::write_str(&mut out, &t.to);
            if let Some(g) = &t.guard {
                out.extend_from_slice(b",\"guard\":");
                canonical::write_str(&mut out, g.source());
            }
            out.push(b'}');
        }
        out.push(b']');
        if let Some(meta) = &self.meta {
            out.extend_from_slice(b",\"meta\":");
            canonical::write_value(&mut out, meta);
        }
        out.push(b'}');
        out
    }

    /// The §5.4 normal form as a value (what GET_MACHINE returns; the server's
    /// canonical writer sorts its keys on the way out).
    pub fn normalized_value(&self) -> Value {
        let mut top = Map::new();
        top.insert("states".into(), string_array(&self.states));
        top.insert("initial".into(), Value::String(self.initial.clone()));
        let transitions = self
            .transitions
            .iter()
            .map(|t| {
                let mut obj = Map::new();
                obj.insert("from".into(), string_array(&t.from));
                obj.insert("event".into(), Value::String(t.event.clone()));
                obj.insert("to".into(), Value::String(t.to.clone()));
                if let Some(g) = &t.guard {
                    obj.insert("guard".into(), Value::String(g.source().to_owned()));
                }
                Value::Object(obj)
            })
            .collect();
        top.insert("transitions".into(), Value::Array(transitions));
        if let Some(meta) = &self.meta {
            top.insert("meta".into(), meta.clone());
        }
        Value::Object(top)
    }

    pub fn has_state(&self, s: &str) -> bool {
        self.state_set.contains(s)
    }

    /// Pick the transition `event` fires from `state` given the instance's
    /// current context: candidates in definition order, first passing guard
    /// wins. Does not allocate.
    pub fn select(&self, state: &str, event: &str, ctx: &Value) -> Selection<'_> {
        let Some(indices) = self
            .candidates
            .get(event)
            .and_then(|by_state| by_state.get(state))
        else {
            return Selection::NoTransition;
        };
        let mut first = None;
        for &i in indices {
            let Some(t) = self.transitions.get(i) else {
                continue;
            };
            let passes = match &t.guard {
                Some(g) => g.eval(ctx),
                None => true,
            };
            if passes {
                return Selection::Fire(t);
            }
            first.get_or_insert(t);
        }
        match first {
            Some(t) => Selection::GuardFailed(t),
            None => Selection::NoTransition,
        }
    }
}

fn write_str_array(out: &mut Vec<u8>, items: &[String]) {
    out.push(b'[');
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        canonical::write_str(out, s);
    }
    out.push(b']');
}

fn string_array(items: &[String]) -> Value {
    Value::Array(items.iter().cloned().map(Value::String).collect())
}

/// Parse and validate a definition in the order of §5.2, build its index and
/// compute its checksum. `machine` and `version` are stored as given.
pub fn parse_definition(
    machine: &str,
    version: u32,
    definition: &Value,
) -> Result<MachineDef, EngineError> {
    let shape = parse_shape(definition)?;

    let state_set: HashSet<String> = shape.states.iter().cloned().collect();
    if !state_set.contains(shape.initial.as_str()) {
        return Err(invalid_definition(format_args!(
            "initial state '{}' not in states list",
            shape.initial
        )));
    }

    let mut transitions = Vec::with_capacity(shape.transitions.len());
    let mut candidates: HashMap<String, HashMap<String, Vec<usize>>> = HashMap::new();
    for (index, raw) in shape.transitions.into_iter().enumerate() {
        if !state_set.contains(raw.to.as_str()) {
            return Err(invalid_definition(format_args!(
                "transition target '{}' not in states list",
                raw.to
            )));
        }
        let guard = match raw.guard {
            Some(text) => Some(guard::parse(&text).map_err(|reason| {
                definition_error(format_args!("invalid guard expression: {reason}"))
            })?),
            None => None,
        };
        let by_state = candidates.entry(raw.event.clone()).or_default();
        for source in &raw.from {
            if !state_set.contains(source.as_str()) {
                return Err(invalid_definition(format_args!(
                    "transition source '{source}' not in states list"
                )));
            }
            let list = by_state.entry(source.clone()).or_default();
            // `"from": ["a", "a"]` lists one transition once.
            if list.last() != Some(&index) {
                list.push(index);
            }
        }
        transitions.push(Transition {
            from: raw.from,
            event: raw.event,
            to: raw.to,
            guard,
        });
    }

    let mut def = MachineDef {
        machine: machine.to_owned(),
        version,
        states: shape.states,
        initial: shape.initial,
        transitions,
        meta: shape.meta,
        checksum: String::new(),
        state_set,
        candidates,
    };
    def.checksum = format!("{:08x}", crc32c::crc32c(&def.normalized_json()));
    Ok(def)
}

/// A definition that has the right shape but is not yet cross-checked.
struct Shape {
    states: Vec<String>,
    initial: String,
    transitions: Vec<RawTransition>,
    meta: Option<Value>,
}

struct RawTransition {
    from: Vec<String>,
    event: String,
    to: String,
    guard: Option<String>,
}

/// §5.2 rule 1. Like serde's derived deserialiser, the present fields are
/// type-checked first and missing fields reported after; fields are visited
/// in declaration order, and every message names where it happened.
fn parse_shape(definition: &Value) -> Result<Shape, EngineError> {
    let obj = definition
        .as_object()
        .ok_or_else(|| invalid_type(definition, "a machine definition object", ""))?;

    let states = match obj.get("states") {
        Some(v) => Some(string_list(v, "states", MACHINE_STATES_MAX, "states")?),
        None => None,
    };
    let initial = match obj.get("initial") {
        Some(v) => Some(string(v, "initial")?),
        None => None,
    };
    let transitions = match obj.get("transitions") {
        Some(v) => Some(transition_list(v)?),
        None => None,
    };
    let meta = obj.get("meta").filter(|v| !v.is_null()).cloned();

    Ok(Shape {
        states: states.ok_or_else(|| missing_field("states", ""))?,
        initial: initial.ok_or_else(|| missing_field("initial", ""))?,
        transitions: transitions.ok_or_else(|| missing_field("transitions", ""))?,
        meta,
    })
}

fn transition_list(v: &Value) -> Result<Vec<RawTransition>, EngineError> {
    let items = v
        .as_array()
        .ok_or_else(|| invalid_type(v, "a sequence", "transitions"))?;
    if items.len() > MACHINE_TRANSITIONS_MAX {
        return Err(invalid_definition(format_args!(
            "too many transitions: {} (limit: {MACHINE_TRANSITIONS_MAX})",
            items.len()
        )));
    }
    let mut sources_total = 0usize;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("transitions[{i}]");
        let t = raw_transition(item, &at)?;
        sources_total += t.from.len();
        if sources_total > MACHINE_TRANSITION_SOURCES_MAX {
            return Err(invalid_definition(format_args!(
                "too many transition sources: more than {MACHINE_TRANSITION_SOURCES_MAX} `from` entries in total"
            )));
        }
        out.push(t);
    }
    Ok(out)
}

fn raw_transition(v: &Value, at: &str) -> Result<RawTransition, EngineError> {
    let obj = v
        .as_object()
        .ok_or_else(|| invalid_type(v, "a transition object", at))?;

    let from = match obj.get("from") {
        Some(Value::String(s)) => Some(vec![s.clone()]),
        Some(v @ Value::Array(_)) => Some(string_list(
            v,
            &format!("{at}.from"),
            MACHINE_TRANSITION_SOURCES_MAX,
            "transition sources",
        )?),
        Some(other) => {
            return Err(invalid_type(
                other,
                "a string or an array of strings",
                &format!("{at}.from"),
            ))
        }
        None => None,
    };
    let event = match obj.get("event") {
        Some(v) => Some(string(v, &format!("{at}.event"))?),
        None => None,
    };
    let to = match obj.get("to") {
        Some(v) => Some(string(v, &format!("{at}.to"))?),
        None => None,
    };
    let guard = match obj.get("guard") {
        None | Some(Value::Null) => None,
        Some(v) => Some(string(v, &format!("{at}.guard"))?),
    };

    Ok(RawTransition {
        from: from.ok_or_else(|| missing_field("from", at))?,
        event: event.ok_or_else(|| missing_field("event", at))?,
        to: to.ok_or_else(|| missing_field("to", at))?,
        guard,
    })
}

fn string(v: &Value, at: &str) -> Result<String, EngineError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        other => Err(invalid_type(other, "a string", at)),
    }
}

fn string_list(v: &Value, at: &str, max: usize, what: &str) -> Result<Vec<String>, EngineError> {
    let items = v
        .as_array()
        .ok_or_else(|| invalid_type(v, "a sequence", at))?;
    if items.len() > max {
        return Err(invalid_definition(format_args!(
            "too many {what}: {} (limit: {max})",
            items.len()
        )));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| string(item, &format!("{at}[{i}]")))
        .collect()
}

fn definition_error(detail: std::fmt::Arguments<'_>) -> EngineError {
    EngineError::core(ErrorCode::BadRequest, detail)
}

fn invalid_definition(reason: std::fmt::Arguments<'_>) -> EngineError {
    definition_error(format_args!("invalid machine definition: {reason}"))
}

fn json_error(detail: std::fmt::Arguments<'_>, at: &str) -> EngineError {
    if at.is_empty() {
        definition_error(format_args!("JSON error: {detail}"))
    } else {
        definition_error(format_args!("JSON error: {detail} at `{at}`"))
    }
}

fn missing_field(field: &str, at: &str) -> EngineError {
    json_error(format_args!("missing field `{field}`"), at)
}

fn invalid_type(found: &Value, expected: &str, at: &str) -> EngineError {
    json_error(
        format_args!("invalid type: {}, expected {expected}", describe(found)),
        at,
    )
}

/// serde's wording for an unexpected JSON value.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("boolean `{b}`"),
        Value::Number(n) if n.is_f64() => {
            let mut text = Vec::new();
            canonical::write_value(&mut text, v);
            format!("floating point `{}`", String::from_utf8_lossy(&text))
        }
        Value::Number(n) => format!("integer `{n}`"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "sequence".to_owned(),
        Value::Object(_) => "map".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_text(text: &str) -> Result<MachineDef, EngineError> {
        let v: Value = serde_json::from_str(text).expect("test definition is JSON");
        parse_definition("m", 1, &v)
    }

    fn error_message(def: Value) -> String {
        match parse_definition("m", 1, &def) {
            Ok(_) => panic!("definition should be rejected: {def}"),
            Err(e) => {
                assert_eq!(e.code, ErrorCode::BadRequest);
                assert!(!e.code.retryable());
                e.message
            }
        }
    }

    #[test]
    fn appendix_a_minimal_checksum() {
        let text = r#"{"states":["a"],"initial":"a","transitions":[]}"#;
        let def = parse_text(text).expect("valid");
        assert_eq!(def.normalized_json(), text.as_bytes());
        assert_eq!(def.checksum, "6b16bc3e");
    }

    #[test]
    fn appendix_a_unknown_keys_and_null_meta_checksum() {
        let def = parse_text(
            r#"{"transitions":[{"to":"paid","event":"PAY","from":"created","description":"x"}],"initial":"created","states":["created","paid"],"meta":null,"extra":1}"#,
        )
        .expect("valid");
        assert_eq!(
            String::from_utf8_lossy(&def.normalized_json()),
            r#"{"states":["created","paid"],"initial":"created","transitions":[{"from":["created"],"event":"PAY","to":"paid"}]}"#
        );
        assert_eq!(def.checksum, "26adbd14");
        assert_eq!(def.meta, None);
    }

    #[test]
    fn appendix_a_guard_and_meta_checksum() {
        let def = parse_text(
            r#"{"meta":{"z":1,"a":[1.0,2]},"states":["created","paid","shipped"],"initial":"created",
                "transitions":[{"from":"created","event":"PAY","to":"paid"},
                               {"from":["paid"],"event":"SHIP","to":"shipped","guard":"ctx.ready"}]}"#,
        )
        .expect("valid");
        assert_eq!(
            String::from_utf8_lossy(&def.normalized_json()),
            r#"{"states":["created","paid","shipped"],"initial":"created","transitions":[{"from":["created"],"event":"PAY","to":"paid"},{"from":["paid"],"event":"SHIP","to":"shipped","guard":"ctx.ready"}],"meta":{"a":[1.0,2],"z":1}}"#
        );
        assert_eq!(def.checksum, "387f29a5");
    }

    #[test]
    fn appendix_a_meta_formatting_checksum() {
        let def = parse_text(
            r#"{"states":["s"],"initial":"s","transitions":[],"meta":{"b":"é/\n\"\u0001","a":1e20,"c":1.5e-7,"d":100.0,"e":-0.0,"f":12345678901234567890}}"#,
        )
        .expect("valid");
        assert_eq!(
            String::from_utf8_lossy(&def.normalized_json()),
            r#"{"states":["s"],"initial":"s","transitions":[],"meta":{"a":1e+20,"b":"é/\n\"\u0001","c":1.5e-7,"d":100.0,"e":-0.0,"f":12345678901234567890}}"#
        );
        assert_eq!(def.checksum, "f5e5f316");
    }

    #[test]
    fn from_as_string_or_array_gives_the_same_checksum() {
        let a = parse_definition(
            "m",
            1,
            &json!({"states":["x","y"],"initial":"x","transitions":[{"from":"x","event":"E","to":"y"}]}),
        )
        .expect("valid");
        let b = parse_definition(
            "m",
            1,
            &json!({"states":["x","y"],"initial":"x","transitions":[{"from":["x"],"event":"E","to":"y"}]}),
        )
        .expect("valid");
        assert_eq!(a.checksum, b.checksum);
        assert_eq!(a.normalized_json(), b.normalized_json());
        assert_eq!(a.transitions[0].from, vec!["x".to_owned()]);
    }

    #[test]
    fn unknown_keys_are_dropped_and_null_guard_is_absent() {
        let def = parse_definition(
            "m",
            3,
            &json!({"states":["x"],"initial":"x","extra":{"deep":1},
                    "transitions":[{"from":"x","event":"E","to":"x","guard":null,"note":"n"}]}),
        )
        .expect("valid");
        assert_eq!(
            def.normalized_value(),
            json!({"states":["x"],"initial":"x","transitions":[{"from":["x"],"event":"E","to":"x"}]})
        );
        assert!(def.transitions[0].guard.is_none());
        assert_eq!(def.machine, "m");
        assert_eq!(def.version, 3);
    }

    #[test]
    fn normalized_value_matches_normalized_json() {
        let def = parse_definition(
            "m",
            1,
            &json!({"states":["b","a","b"],"initial":"a","meta":{"k":[1,{"y":2,"x":1}]},
                    "transitions":[{"from":["a","b"],"event":"E","to":"b","guard":"ctx.ok"}]}),
        )
        .expect("valid");
        let from_json: Value = serde_json::from_slice(&def.normalized_json()).expect("JSON");
        assert_eq!(def.normalized_value(), from_json);
        assert_eq!(def.states, vec!["b", "a", "b"]);
    }

    #[test]
    fn structural_errors_name_the_field() {
        let cases = [
            (json!([]), "core error: JSON error: invalid type: sequence, expected a machine definition object"),
            (json!({"initial":"a","transitions":[]}), "core error: JSON error: missing field `states`"),
            (json!({"states":["a"],"transitions":[]}), "core error: JSON error: missing field `initial`"),
            (json!({"states":["a"],"initial":"a"}), "core error: JSON error: missing field `transitions`"),
            (json!({"states":"a","initial":"a","transitions":[]}), "core error: JSON error: invalid type: string \"a\", expected a sequence at `states`"),
            (json!({"states":["a",5],"initial":"a","transitions":[]}), "core error: JSON error: invalid type: integer `5`, expected a string at `states[1]`"),
            (json!({"states":["a"],"initial":null,"transitions":[]}), "core error: JSON error: invalid type: null, expected a string at `initial`"),
            (json!({"states":["a"],"initial":"a","transitions":{}}), "core error: JSON error: invalid type: map, expected a sequence at `transitions`"),
            (json!({"states":["a"],"initial":"a","transitions":[1.5]}), "core error: JSON error: invalid type: floating point `1.5`, expected a transition object at `transitions[0]`"),
            (json!({"states":["a"],"initial":"a","transitions":[{"event":"E","to":"a"}]}), "core error: JSON error: missing field `from` at `transitions[0]`"),
            (json!({"states":["a"],"initial":"a","transitions":[{"from":"a","to":"a"}]}), "core error: JSON error: missing field `event` at `transitions[0]`"),
            (json!({"states":["a"],"initial":"a","transitions":[{"from":"a","event":"E"}]}), "core error: JSON error: missing field `to` at `transitions[0]`"),
            (json!({"states":["a"],"initial":"a","transitions":[{"from":true,"event":"E","to":"a"}]}), "core error: JSON error: invalid type: boolean `true`, expected a string or an array of strings at `transitions[0].from`"),
            (json!({"states":["a"],"initial":"a","transitions":[{"from":["a",null],"event":"E","to":"a"}]}), "core error: JSON error: invalid type: null, expected a string at `transitions[0].from[1]`"),
            (json!({"states":["a"],"initial":"a","transitions":[{"from":"a","event":"E","to":"a","guard":1}]}), "core error: JSON error: invalid type: integer `1`, expected a string at `transitions[0].guard`"),
        ];
        for (def, expected) in cases {
            assert_eq!(error_message(def), expected);
        }
    }

    #[test]
    fn type_errors_come_before_missing_fields_like_serde() {
        assert_eq!(
            error_message(json!({"initial": 5})),
            "core error: JSON error: invalid type: integer `5`, expected a string at `initial`"
        );
    }

    #[test]
    fn semantic_errors_follow_section_5_2_order() {
        let cases = [
            (
                json!({"states":[],"initial":"a","transitions":[]}),
                "core error: invalid machine definition: initial state 'a' not in states list",
            ),
            // Rule 2 before any transition rule.
            (
                json!({"states":["a"],"initial":"z","transitions":[{"from":"q","event":"E","to":"q"}]}),
                "core error: invalid machine definition: initial state 'z' not in states list",
            ),
            // Target before guard before sources, within one transition.
            (
                json!({"states":["a"],"initial":"a","transitions":[{"from":"q","event":"E","to":"t","guard":""}]}),
                "core error: invalid machine definition: transition target 't' not in states list",
            ),
            (
                json!({"states":["a"],"initial":"a","transitions":[{"from":"q","event":"E","to":"a","guard":""}]}),
                "core error: invalid guard expression: empty guard expression",
            ),
            (
                json!({"states":["a"],"initial":"a","transitions":[{"from":["a","q"],"event":"E","to":"a","guard":"ctx.x"}]}),
                "core error: invalid machine definition: transition source 'q' not in states list",
            ),
            // Transitions are checked in array order.
            (
                json!({"states":["a"],"initial":"a","transitions":[
                    {"from":"a","event":"E","to":"a","guard":"ctx.x garbage"},
                    {"from":"a","event":"F","to":"b"}]}),
                "core error: invalid guard expression: unexpected trailing input at byte 6: 'garbage'",
            ),
        ];
        for (def, expected) in cases {
            assert_eq!(error_message(def), expected);
        }
    }

    #[test]
    fn sizes_are_bounded() {
        let states: Vec<String> = (0..=MACHINE_STATES_MAX).map(|i| format!("s{i}")).collect();
        let msg = error_message(json!({"states": states, "initial":"s0","transitions":[]}));
        assert_eq!(
            msg,
            "core error: invalid machine definition: too many states: 10001 (limit: 10000)"
        );
        let t = json!({"from":"a","event":"E","to":"a"});
        let transitions = vec![t; MACHINE_TRANSITIONS_MAX + 1];
        let msg = error_message(json!({"states":["a"],"initial":"a","transitions": transitions}));
        assert_eq!(
            msg,
            "core error: invalid machine definition: too many transitions: 10001 (limit: 10000)"
        );
        let wide = json!({"from": vec!["a"; 20_000], "event":"E","to":"a"});
        let msg = error_message(json!({"states":["a"],"initial":"a","transitions": vec![wide; 6]}));
        assert!(msg.contains("too many transition sources"), "{msg}");
    }

    fn alternatives() -> MachineDef {
        parse_definition(
            "m",
            1,
            &json!({"states":["new","big","small","other"],"initial":"new","transitions":[
                {"from":"new","event":"SIZE","to":"big","guard":"ctx.n > 100"},
                {"from":["other","new"],"event":"SIZE","to":"small","guard":"ctx.n > 10"},
                {"from":"new","event":"GO","to":"other"},
                {"from":"new","event":"GO","to":"big"}
            ]}),
        )
        .expect("guarded alternatives are allowed")
    }

    #[test]
    fn first_passing_guard_wins() {
        let def = alternatives();
        match def.select("new", "SIZE", &json!({"n": 500})) {
            Selection::Fire(t) => assert_eq!(t.to, "big"),
            other => panic!("unexpected {other:?}"),
        }
        match def.select("new", "SIZE", &json!({"n": 50})) {
            Selection::Fire(t) => assert_eq!(t.to, "small"),
            other => panic!("unexpected {other:?}"),
        }
        // An unguarded candidate fires; a later duplicate is never reached.
        match def.select("new", "GO", &json!({})) {
            Selection::Fire(t) => assert_eq!(t.to, "other"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn no_passing_guard_reports_the_first_candidate() {
        let def = alternatives();
        match def.select("new", "SIZE", &json!({"n": 1})) {
            Selection::GuardFailed(t) => assert_eq!(t.to, "big"),
            other => panic!("unexpected {other:?}"),
        }
        match def.select("other", "SIZE", &json!({"n": 1})) {
            Selection::GuardFailed(t) => assert_eq!(t.to, "small"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unknown_state_or_event_is_no_transition() {
        let def = alternatives();
        assert_eq!(
            def.select("big", "SIZE", &json!({})),
            Selection::NoTransition
        );
        assert_eq!(
            def.select("new", "NOPE", &json!({})),
            Selection::NoTransition
        );
        assert_eq!(
            def.select("nowhere", "GO", &json!({})),
            Selection::NoTransition
        );
    }

    #[test]
    fn empty_from_never_fires_and_repeated_sources_are_harmless() {
        let def = parse_definition(
            "m",
            1,
            &json!({"states":["a","b"],"initial":"a","transitions":[
                {"from":[],"event":"E","to":"b"},
                {"from":["a","a"],"event":"F","to":"b","guard":"ctx.x"}]}),
        )
        .expect("valid");
        assert_eq!(def.select("a", "E", &json!({})), Selection::NoTransition);
        assert_eq!(
            def.select("a", "F", &json!({})),
            Selection::GuardFailed(&def.transitions[1])
        );
    }

    #[test]
    fn has_state_and_empty_names() {
        let def = parse_definition(
            "",
            0,
            &json!({"states":["", "*"],"initial":"","transitions":[{"from":"*","event":"","to":""}]}),
        )
        .expect("empty strings are legal names");
        assert!(def.has_state(""));
        assert!(def.has_state("*"));
        assert!(!def.has_state("x"));
        assert_eq!(
            def.select("*", "", &json!(null)),
            Selection::Fire(&def.transitions[0])
        );
    }
}
