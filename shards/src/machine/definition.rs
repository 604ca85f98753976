//! Machine definitions (docs/PROTOCOL.md §5): turning the JSON DSL sent with PUT_MACHINE
//! into a validated `MachineDef`, its normal form and CRC-32C checksum, and
//! choosing the transition an event fires.
//!
//! Two decisions differ from 0.3. Every validation failure is `BAD_REQUEST`
//! (not 0.3's retryable `INTERNAL_ERROR`, §15 row 27), and several
//! transitions may share a (source state, event): they are guarded
//! alternatives tried in definition order (§15 row 28).

use std::sync::Arc;

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
    /// Every state's name, once: an instance's state is a share of it
    /// (`interned_state`), not a copy of the name per instance.
    state_set: HashSet<Arc<str>>,
    /// event → source state → indices into `transitions`, in definition
    /// order. Keyed event-first so a lookup borrows both `&str`s.
    candidates: HashMap<String, HashMap<String, Vec<usize>>>,
}

/// A state's name as an instance keeps it: a share of its machine's copy
/// (`MachineDef::interned_state`), so a million instances in one state hold
/// one copy of its name, not a million: 15–18 bytes less per instance than
/// a `String` of their own, 5 % of what one costs a server
/// (bench-results/2026-12-07/state-names-shared). Reads as the `str` it
/// holds.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StateName(Arc<str>);

impl StateName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for StateName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for StateName {
    /// A copy of its own (tests; a name the machine does not declare).
    fn from(name: &str) -> Self {
        StateName(Arc::from(name))
    }
}

impl PartialEq<str> for StateName {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for StateName {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl std::fmt::Display for StateName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for StateName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
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

    /// The machine's own copy of state `name`, shared: what an instance
    /// keeps as its state (a name the machine does not declare — a log
    /// written by a defective peer — is copied, never refused here).
    pub fn interned_state(&self, name: &str) -> StateName {
        match self.state_set.get(name) {
            Some(shared) => StateName(shared.clone()),
            None => StateName::from(name),
        }
    }

    /// Pick the transition `event` fires from `state` given the instance's
    /// current context: candidates in definition order, first passing guard
    /// wins. Does not allocate.
    /// Whether a transition `event` may take from `state` has a guard:
    /// only then does `select` read the context.
    pub fn guarded(&self, state: &str, event: &str) -> bool {
        self.candidates
            .get(event)
            .and_then(|by_state| by_state.get(state))
            .is_some_and(|indices| {
                indices
                    .iter()
                    .any(|&i| self.transitions.get(i).is_some_and(|t| t.guard.is_some()))
            })
    }

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

    let state_set: HashSet<Arc<str>> = shape.states.iter().map(|s| Arc::from(s.as_str())).collect();
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
#[path = "definition_tests.rs"]
mod tests;
