//! An instance's context as a shard keeps it: a JSON tree, or — when it
//! came from a log entry and nothing on this member has needed it as a
//! tree since — the canonical JSON text the entry holds.
//!
//! Why the text: a member that replays an apply (a cluster follower, every
//! node at recovery) only has to remember the new context; it needs a tree
//! only to evaluate a guard or merge a payload, which happens when it leads
//! and applies to that instance again. Parsing every replayed context
//! into a tree was about a tenth of a cluster follower's CPU under a 16×16
//! apply load, and a GET of a context kept as text copies the bytes
//! instead of re-encoding a tree. The text is canonical JSON
//! (`json::canonical`): it is exactly what encoding the tree would write,
//! so answers, snapshots and comparisons do not depend on which form an
//! instance is in.

use std::fmt;

use serde_json::Value;

use crate::error::{EngineError, EngineResult, ErrorCode};
use crate::json::canonical;

#[derive(Debug, Clone)]
pub struct Ctx(Repr);

#[derive(Debug, Clone)]
enum Repr {
    Tree(Value),
    /// Canonical JSON text of a valid value.
    Text(Box<[u8]>),
}

impl Ctx {
    /// A context kept as `json`, the canonical text of a valid JSON value
    /// (an entry's `RawJson`: serde checked its syntax when the entry was
    /// decoded, and the writer of the entry wrote it canonical).
    pub fn from_canonical_text(json: Vec<u8>) -> Ctx {
        Ctx(Repr::Text(json.into_boxed_slice()))
    }

    /// The context as a tree, parsed now if it was kept as text (and kept
    /// as a tree from then on).
    pub fn tree(&mut self) -> EngineResult<&mut Value> {
        if let Repr::Text(text) = &self.0 {
            let value = parse(text).map_err(|e| {
                EngineError::core(
                    ErrorCode::InternalError,
                    format_args!("an instance's stored context does not parse: {e}"),
                )
            })?;
            self.0 = Repr::Tree(value);
        }
        match &mut self.0 {
            Repr::Tree(value) => Ok(value),
            Repr::Text(_) => unreachable!("replaced by its tree above"),
        }
    }

    /// The tree, when the context is kept as one.
    pub fn as_tree(&self) -> Option<&Value> {
        match &self.0 {
            Repr::Tree(value) => Some(value),
            Repr::Text(_) => None,
        }
    }

    /// A copy of the context as a tree.
    pub fn to_value(&self) -> Result<Value, String> {
        match &self.0 {
            Repr::Tree(value) => Ok(value.clone()),
            Repr::Text(text) => parse(text),
        }
    }

    /// Append the context's canonical JSON to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match &self.0 {
            Repr::Tree(value) => canonical::write_value(out, value),
            Repr::Text(text) => out.extend_from_slice(text),
        }
    }

    /// Whether the context is kept as text (not parsed since it was
    /// replayed).
    pub fn is_text(&self) -> bool {
        matches!(self.0, Repr::Text(_))
    }
}

fn parse(text: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(text).map_err(|e| e.to_string())
}

impl From<Value> for Ctx {
    fn from(value: Value) -> Ctx {
        Ctx(Repr::Tree(value))
    }
}

/// Equal values, whichever form each side is in.
impl PartialEq<Value> for Ctx {
    fn eq(&self, other: &Value) -> bool {
        match &self.0 {
            Repr::Tree(value) => value == other,
            Repr::Text(text) => parse(text).is_ok_and(|v| &v == other),
        }
    }
}

/// Equal values, whichever form each side is in.
impl PartialEq for Ctx {
    fn eq(&self, other: &Ctx) -> bool {
        match (&self.0, &other.0) {
            (Repr::Text(a), Repr::Text(b)) if a == b => true,
            (_, Repr::Tree(b)) => self == b,
            (Repr::Text(_), Repr::Text(b)) => parse(b).is_ok_and(|b| self == &b),
            (Repr::Tree(a), _) => other == a,
        }
    }
}

/// The canonical JSON text.
impl fmt::Display for Ctx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::new();
        self.write_json(&mut out);
        f.write_str(&String::from_utf8_lossy(&out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn both(value: Value) -> (Ctx, Ctx) {
        let text = canonical::to_vec(&value);
        (Ctx::from(value), Ctx::from_canonical_text(text))
    }

    #[test]
    fn text_and_tree_answer_the_same_bytes_and_compare_equal() {
        let value = json!({"z": [null, true, {}], "a": 1.5, "s": "é\"\n", "n": -7});
        let (tree, text) = both(value.clone());
        assert!(text.is_text() && !tree.is_text());
        let (mut a, mut b) = (Vec::new(), Vec::new());
        tree.write_json(&mut a);
        text.write_json(&mut b);
        assert_eq!(a, b);
        assert_eq!(tree.to_string(), text.to_string());
        assert_eq!(text, value);
        assert_eq!(text.to_value().unwrap(), value);
        assert_ne!(text, json!({"a": 1.5}));
    }

    #[test]
    fn text_becomes_a_tree_when_first_needed_and_stays_one() {
        let (_, mut text) = both(json!({"n": 1}));
        text.tree().unwrap()["n"] = json!(2);
        assert!(!text.is_text());
        assert_eq!(text, json!({"n": 2}));
        assert_eq!(text.to_string(), r#"{"n":2}"#);
    }

    #[test]
    fn text_that_does_not_parse_is_an_internal_error_not_a_panic() {
        let mut broken = Ctx::from_canonical_text(b"{\"n\":".to_vec());
        let err = broken.tree().unwrap_err();
        assert_eq!(err.code, ErrorCode::InternalError);
        assert!(broken.to_value().is_err());
        assert_ne!(broken, json!({}));
    }
}
