//! JSON text to `serde_json::Value` through simd-json's tape, with the
//! parse buffers kept per thread.
//!
//! Why not `simd_json::serde::from_slice::<Value>` (what requests went
//! through before): profiled at apply 16×16 (`perf record` of a release
//! server, 2 shards, `fsync never`), parsing requests took 18 % of the
//! server's CPU — 5.5 % building the tape, a quarter of that allocating
//! fresh parse buffers for every request, and 9.3 % building serde_json's
//! tree through serde's visitor, the envelope's own keys and strings
//! (`type`, `id`, `op`) included, all dropped right after. Here the buffers
//! live as long as the thread, a request's envelope is read straight from
//! the tape (`request::parse_request`), and only its `params` become a tree.
//!
//! The tree is the one serde's visitor built: integers as i64 or u64,
//! others as f64 (integers beyond 64 bits too: simd-json's
//! `big-int-as-float`), and a key given twice keeps its later value. Callers
//! bound the nesting first (`request::check_text`): `value_at` recurses once
//! per level.

use std::cell::RefCell;

use serde_json::{Map, Number, Value};
use simd_json::{Buffers, Node, StaticNode};

/// After a document longer than this, a thread drops its parse buffers
/// (they grow to about twice the longest document parsed) rather than keep
/// them: requests are a few hundred bytes, frames may be megabytes.
pub const PARSE_BUFFERS_KEPT_INPUT_BYTES_MAX: usize = 64 * 1024;

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::default());
}

/// Parse `text` (scratch: simd-json works in place) and hand its tape to
/// `read`. The tape's first node is the document's root.
pub fn with_tape<R>(
    text: &mut [u8],
    read: impl FnOnce(&[Node<'_>]) -> R,
) -> Result<R, simd_json::Error> {
    let len = text.len();
    BUFFERS.with(|cell| {
        // `read` never parses again, so the buffers are never borrowed
        // twice; if that changed, the nested parse would get its own.
        let Ok(mut buffers) = cell.try_borrow_mut() else {
            let tape = simd_json::to_tape_with_buffers(text, &mut Buffers::new(len))?;
            return Ok(read(&tape.0));
        };
        let parsed = simd_json::to_tape_with_buffers(text, &mut buffers).map(|tape| read(&tape.0));
        if len > PARSE_BUFFERS_KEPT_INPUT_BYTES_MAX {
            *buffers = Buffers::default();
        }
        parsed
    })
}

/// Parse a whole document into a tree.
pub fn parse_value(text: &mut [u8]) -> Result<Value, simd_json::Error> {
    with_tape(text, |nodes| value_at(nodes).0)
}

/// How many nodes the value starting at `nodes[0]` spans (1 for an empty
/// slice, which a well-formed tape never hands out).
fn span(nodes: &[Node<'_>]) -> usize {
    match nodes.first() {
        Some(Node::Object { count, .. } | Node::Array { count, .. }) => count + 1,
        _ => 1,
    }
}

/// The value starting at `nodes[0]` and the number of nodes it spans.
pub fn value_at(nodes: &[Node<'_>]) -> (Value, usize) {
    let Some(first) = nodes.first() else {
        return (Value::Null, 1);
    };
    let value = match *first {
        Node::String(s) => Value::String(s.to_owned()),
        Node::Static(node) => static_value(node),
        Node::Array { len, .. } => {
            let mut items = Vec::with_capacity(len);
            let mut at = 1;
            for _ in 0..len {
                let (item, n) = value_at(nodes.get(at..).unwrap_or_default());
                items.push(item);
                at += n;
            }
            Value::Array(items)
        }
        Node::Object { .. } => {
            let mut map = Map::new();
            for (key, at) in members(nodes) {
                let (item, _) = value_at(nodes.get(at..).unwrap_or_default());
                map.insert(key.to_owned(), item);
            }
            Value::Object(map)
        }
    };
    (value, span(nodes))
}

/// The members of the object starting at `nodes[0]`: each key with the
/// index of its value's first node, in document order (a repeated key
/// comes again). Nothing for anything but an object.
pub fn members<'t, 'i>(nodes: &'t [Node<'i>]) -> impl Iterator<Item = (&'i str, usize)> + 't {
    let len = match nodes.first() {
        Some(Node::Object { len, .. }) => *len,
        _ => 0,
    };
    let mut at = 1;
    (0..len).map_while(move |_| {
        let Some(Node::String(key)) = nodes.get(at) else {
            return None;
        };
        let value_at = at + 1;
        at = value_at + span(nodes.get(value_at..).unwrap_or_default());
        Some((*key, value_at))
    })
}

fn static_value(node: StaticNode) -> Value {
    match node {
        StaticNode::Null => Value::Null,
        StaticNode::Bool(b) => Value::Bool(b),
        StaticNode::I64(i) => Value::Number(i.into()),
        StaticNode::U64(u) => Value::Number(u.into()),
        // As serde_json's own visitor: a float with no JSON form is null
        // (simd-json refuses such numbers before they get here).
        StaticNode::F64(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What requests were parsed with before: the tree must not change.
    fn through_serde(text: &str) -> Value {
        simd_json::serde::from_slice(&mut text.as_bytes().to_vec()).unwrap()
    }

    fn through_tape(text: &str) -> Value {
        parse_value(&mut text.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn trees_match_serdes_visitor() {
        let docs = [
            r#"{"type":"request","id":"7","op":"APPLY_EVENT","params":{"instance_id":"i-1","event":"go","payload":{"n":1,"f":1.5,"neg":-3,"big":18446744073709551615,"huge":123456789012345678901234567890,"s":"a\"b\\c\u00e9\ud83d\ude00","t":true,"z":null,"a":[1,[2,{}],{"k":[]}]}}}"#,
            r#"{"a":1,"a":{"b":2},"c":[],"d":{}}"#,
            r#"[1,"x",{"y":[null,false]},[],[[]]]"#,
            r#""just a string""#,
            "-0",
            "0.1e-3",
            "null",
            r#"{"":"","\u0000":"\n"}"#,
        ];
        for doc in docs {
            assert_eq!(through_tape(doc), through_serde(doc), "{doc}");
        }
    }

    #[test]
    fn members_walk_an_object_in_order_with_repeats() {
        let mut text = br#"{"a":[1,{"x":2}],"b":{"c":{}},"a":3}"#.to_vec();
        let seen = with_tape(&mut text, |nodes| {
            members(nodes)
                .map(|(key, at)| (key.to_owned(), value_at(&nodes[at..]).0))
                .collect::<Vec<_>>()
        })
        .unwrap();
        let want = [
            ("a", serde_json::json!([1, {"x": 2}])),
            ("b", serde_json::json!({"c": {}})),
            ("a", serde_json::json!(3)),
        ];
        assert_eq!(seen.len(), want.len());
        for ((key, value), (want_key, want_value)) in seen.iter().zip(want.iter()) {
            assert_eq!((key.as_str(), value), (*want_key, want_value));
        }
        let mut text = b"[1,2]".to_vec();
        assert_eq!(with_tape(&mut text, |n| members(n).count()).unwrap(), 0);
    }

    #[test]
    fn a_long_document_releases_the_buffers_and_parsing_goes_on() {
        let long = format!(
            r#"{{"s":"{}"}}"#,
            "x".repeat(PARSE_BUFFERS_KEPT_INPUT_BYTES_MAX)
        );
        assert_eq!(through_tape(&long), through_serde(&long));
        assert_eq!(through_tape(r#"{"k":2}"#), serde_json::json!({"k": 2}));
        assert!(parse_value(&mut b"{\"k\":".to_vec()).is_err());
        assert_eq!(through_tape("[3]"), serde_json::json!([3]));
    }

    #[test]
    fn a_nested_parse_gets_buffers_of_its_own() {
        let mut outer = br#"{"a":1}"#.to_vec();
        let inner = with_tape(&mut outer, |_| through_tape(r#"{"b":[2]}"#)).unwrap();
        assert_eq!(inner, serde_json::json!({"b": [2]}));
    }

    fn any_tree() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "\\PC{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec(("\\PC{0,4}", inner), 0..4)
                    .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Any tree, written as text, reads back through the tape exactly as
        /// through serde's visitor.
        #[test]
        fn any_tree_matches_serdes_visitor(value in any_tree()) {
            let text = serde_json::to_string(&value).unwrap();
            proptest::prop_assert_eq!(through_tape(&text), through_serde(&text));
        }
    }
}
