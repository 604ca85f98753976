//! An instance's context as a shard keeps it: at rest, the canonical JSON
//! text its newest log entry holds; a tree only where one was handed in
//! (tests, a deleted instance's `null`, a snapshot of the first format).
//!
//! Why the text. Memory: a small context as a tree is a map node of
//! about 640 bytes (serde_json's `Map` is a `BTreeMap`, whose node has room
//! for eleven entries) where its text is tens of bytes — most of what an
//! instance cost. CPU: every write already encodes the new context for its
//! log entry, so keeping that text costs a copy; a GET copies it instead of
//! encoding a tree; a replay (a cluster follower, every node at recovery)
//! keeps the entry's bytes; a snapshot stores them. An apply builds a tree
//! only when a guard reads the context or a payload merges into it, and
//! drops it once the new text is logged. The text is canonical JSON
//! (`json::canonical`): it is exactly what encoding the tree would write,
//! so answers, snapshots and comparisons do not depend on which form an
//! instance is in.

use std::borrow::Cow;
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

    /// The context as a tree: borrowed when it is kept as one, parsed from
    /// its text otherwise (the instance keeps the text).
    pub fn parsed(&self) -> EngineResult<Cow<'_, Value>> {
        match &self.0 {
            Repr::Tree(value) => Ok(Cow::Borrowed(value)),
            Repr::Text(text) => parse(text).map(Cow::Owned).map_err(|e| {
                EngineError::core(
                    ErrorCode::InternalError,
                    format_args!("an instance's stored context does not parse: {e}"),
                )
            }),
        }
    }

    /// The canonical text, when the context is kept as text.
    pub fn as_text(&self) -> Option<&[u8]> {
        match &self.0 {
            Repr::Tree(_) => None,
            Repr::Text(text) => Some(text),
        }
    }

    /// Append the context's canonical JSON to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match &self.0 {
            Repr::Tree(value) => canonical::write_value(out, value),
            Repr::Text(text) => out.extend_from_slice(text),
        }
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
        assert!(text.as_text().is_some() && tree.as_text().is_none());
        let (mut a, mut b) = (Vec::new(), Vec::new());
        tree.write_json(&mut a);
        text.write_json(&mut b);
        assert_eq!(a, b);
        assert_eq!(tree.to_string(), text.to_string());
        assert_eq!(text, value);
        assert_eq!(*text.parsed().unwrap(), value);
        assert_ne!(text, json!({"a": 1.5}));
    }

    #[test]
    fn a_parsed_tree_is_the_callers_and_the_text_stays() {
        let (tree, text) = both(json!({"n": 1}));
        assert!(matches!(tree.parsed().unwrap(), Cow::Borrowed(_)));
        let mut parsed = text.parsed().unwrap();
        assert!(matches!(parsed, Cow::Owned(_)));
        parsed.to_mut()["n"] = json!(2);
        assert_eq!(text.as_text(), Some(&br#"{"n":1}"#[..]));
        assert_eq!(tree.as_text(), None);
        assert_eq!(text, json!({"n": 1}));
    }

    #[test]
    fn floats_survive_any_number_of_parse_and_encode_rounds() {
        // Without serde_json's `float_roundtrip` the first came back one
        // unit in the last place off (found by the snapshot codec's
        // proptest): every apply would have nudged it.
        let floats = [2.9971736235359203e276, 0.1, -5e-324, 1.7976931348623157e308];
        let first = canonical::to_vec(&json!(floats));
        let mut ctx = Ctx::from_canonical_text(first.clone());
        for _ in 0..3 {
            let tree = ctx.parsed().unwrap().into_owned();
            let back: [f64; 4] = serde_json::from_value(tree.clone()).unwrap();
            assert_eq!(back.map(f64::to_bits), floats.map(f64::to_bits));
            ctx = Ctx::from_canonical_text(canonical::to_vec(&tree));
            assert_eq!(ctx.as_text(), Some(&first[..]));
        }
    }

    #[test]
    fn text_that_does_not_parse_is_an_internal_error_not_a_panic() {
        let broken = Ctx::from_canonical_text(b"{\"n\":".to_vec());
        let err = broken.parsed().unwrap_err();
        assert_eq!(err.code, ErrorCode::InternalError);
        assert_ne!(broken, json!({}));
    }
}
