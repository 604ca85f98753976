//! Request envelopes (docs/PROTOCOL.md §2.1), parsed with simd-json in place.
//!
//! Unlike rstmdb 0.3, which closes the connection on any envelope problem, a
//! well-framed request with bad JSON, a missing or unknown `op` or a bad `id`
//! is answered with `BAD_REQUEST` (echoing the id when it can be read) and
//! the connection stays usable (PROTOCOL.md §15 row 4).

use serde_json::Value;
use shards::json::canonical;
use shards::EngineError;
use simd_json::Node;

use super::json_tape;
use super::op::Op;

/// Deepest JSON nesting accepted in a request; deeper documents are refused
/// before anything recursive (guards, canonical writer) touches them.
///
/// 127 is what rstmdb's serde_json parser takes, and what the serde_json
/// inside the Rust client reads back: an answer nests its values exactly
/// as deep as the request that stored them (GET_INSTANCE's `ctx` sits
/// where CREATE_INSTANCE's `initial_ctx` did), so any value a client could
/// store, it can read. At 128 a context stored at the limit came back in a
/// 128-level answer the Rust client could not parse (tests/client/deep_values.rs).
pub const REQUEST_JSON_DEPTH_MAX: usize = 127;
const _: () = assert!(
    REQUEST_JSON_DEPTH_MAX <= shards::snapshot::codec::SNAPSHOT_VALUE_DEPTH_MAX,
    "every context a request can carry must fit in a snapshot"
);

pub struct Request {
    /// The `id` as JSON, ready to be echoed verbatim.
    pub id_json: Vec<u8>,
    pub op: Op,
    pub params: Value,
}

/// A request that cannot be executed, with the id to answer it under.
pub struct BadEnvelope {
    pub id_json: Vec<u8>,
    pub error: EngineError,
}

const NULL_ID: &[u8] = b"null";

/// Why a request's text is refused before it is parsed.
#[derive(Debug, PartialEq, Eq)]
enum TextDefect {
    /// Arrays/objects nested deeper than the limit.
    TooDeep,
    /// A `\u` escape of half a UTF-16 surrogate pair with no other half: it
    /// names no character (the parser would make it U+0000 or U+FFFD).
    LoneSurrogate,
}

impl TextDefect {
    /// What the client is told; `limit` is the nesting the document was
    /// allowed.
    fn message(&self, limit: usize) -> String {
        match self {
            TextDefect::TooDeep => format!("JSON nesting deeper than {limit} levels"),
            TextDefect::LoneSurrogate => {
                "malformed JSON: a \\u escape names half of a UTF-16 surrogate pair".into()
            }
        }
    }
}

/// Parse one JSON document with the rules of request envelopes — nesting
/// at most `REQUEST_JSON_DEPTH_MAX` deep, no lone surrogate escapes,
/// integers beyond 64 bits read as floats — for the bodies of the HTTP API,
/// so its operations see exactly what they would see over RCP. `text` is
/// scratch: simd-json parses in place.
///
/// `levels_around`: how many levels an RCP request nests around the same
/// document (1 for an operation's params, 2 for a machine's definition).
/// The document may nest only as deep as it could inside a request: a
/// value one level deeper than RCP allowed came to 128 levels in its log
/// record, past the 127 serde_json reads back, and the server could not
/// restart (tests/http/deep_values.rs).
pub fn parse_json_document(text: &mut [u8], levels_around: usize) -> Result<Value, EngineError> {
    let limit = REQUEST_JSON_DEPTH_MAX.saturating_sub(levels_around);
    check_text(text, limit).map_err(|defect| EngineError::bad_request(defect.message(limit)))?;
    json_tape::parse_value(text)
        .map_err(|e| EngineError::bad_request(format!("malformed JSON: {e}")))
}

/// The UTF-16 code unit of the four hex digits at `text[i..i + 4]`.
fn hex4(text: &[u8], i: usize) -> Option<u16> {
    let digits = text.get(i..i + 4)?;
    let s = std::str::from_utf8(digits).ok()?;
    u16::from_str_radix(s, 16).ok()
}

/// One pass over the JSON text before it is parsed: nesting deeper than
/// `limit` (parsing into a tree recurses once per level, and a hostile
/// document could exhaust the stack) and lone surrogate escapes. Strings are
/// skipped except for their `\u` escapes.
fn check_text(text: &[u8], limit: usize) -> Result<(), TextDefect> {
    // Most requests need no scan: without a backslash there is no `\u`
    // escape, and with at most `limit` opening brackets (inside strings
    // too) the nesting cannot pass `limit`. Both are simple loops the
    // compiler vectorizes; the byte-by-byte scan below cost ~3 % of the
    // server's CPU at GET 16×16.
    let openings = text.iter().filter(|&&b| b == b'[' || b == b'{').count();
    if openings <= limit && !text.contains(&b'\\') {
        return Ok(());
    }
    scan_text(text, limit)
}

/// `check_text`'s answer, byte by byte.
fn scan_text(text: &[u8], limit: usize) -> Result<(), TextDefect> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'"' => i = check_string(text, i + 1)?,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return Err(TextDefect::TooDeep);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Check the string whose contents start at `i`; returns the index of its
/// closing quote (or the end of the text).
fn check_string(text: &[u8], mut i: usize) -> Result<usize, TextDefect> {
    // A high surrogate waiting for its low half.
    let mut high_pending = false;
    while i < text.len() {
        match text[i] {
            b'"' if !high_pending => return Ok(i),
            b'\\' if text.get(i + 1) == Some(&b'u') => {
                let unit = hex4(text, i + 2);
                match unit {
                    Some(0xD800..=0xDBFF) if !high_pending => high_pending = true,
                    Some(0xDC00..=0xDFFF) if high_pending => high_pending = false,
                    Some(0xD800..=0xDFFF) => return Err(TextDefect::LoneSurrogate),
                    _ if high_pending => return Err(TextDefect::LoneSurrogate),
                    // Not a surrogate (or not hex: the parser reports it).
                    _ => {}
                }
                i += 6;
                continue;
            }
            _ if high_pending => return Err(TextDefect::LoneSurrogate),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    Ok(i)
}

/// The request `id` of a document the parser refused (a number beyond
/// f64, say): read from the top-level object by a tolerant scan, so the
/// client's answer still carries its id. Strings and numbers only, checked
/// and written as `id_json` echoes them; `None` when there is no readable id.
fn salvage_id(text: &[u8]) -> Option<Vec<u8>> {
    let raw = find_id(text)?;
    let value: Value = serde_json::from_slice(&raw).ok()?;
    id_json(Some(&value))
}

/// The raw bytes of the top-level `id` value.
fn find_id(text: &[u8]) -> Option<Vec<u8>> {
    let mut s = Scanner { text, i: 0 };
    s.ws();
    s.eat(b'{')?;
    loop {
        s.ws();
        let key = s.string()?;
        s.ws();
        s.eat(b':')?;
        s.ws();
        if key == b"\"id\"" {
            let start = s.i;
            return match text.get(start)? {
                b'"' => s.string().map(<[u8]>::to_vec),
                b'-' | b'0'..=b'9' => {
                    s.number();
                    Some(text[start..s.i].to_vec())
                }
                _ => None,
            };
        }
        s.skip_value()?;
        s.ws();
        s.eat(b',')?;
    }
}

/// Byte-level reading for `salvage_id`.
struct Scanner<'a> {
    text: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn ws(&mut self) {
        while self.text.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        (self.text.get(self.i) == Some(&b)).then(|| self.i += 1)
    }

    /// A string, quotes included.
    fn string(&mut self) -> Option<&'a [u8]> {
        let start = self.i;
        self.eat(b'"')?;
        while let Some(&b) = self.text.get(self.i) {
            self.i += if b == b'\\' { 2 } else { 1 };
            if b == b'"' {
                return Some(&self.text[start..self.i]);
            }
        }
        None
    }

    fn number(&mut self) {
        while self
            .text
            .get(self.i)
            .is_some_and(|b| matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
        {
            self.i += 1;
        }
    }

    /// Any value: strings and nesting followed, everything else up to the
    /// next delimiter.
    fn skip_value(&mut self) -> Option<()> {
        let mut depth = 0usize;
        loop {
            match *self.text.get(self.i)? {
                b'"' => {
                    self.string()?;
                    if depth == 0 {
                        return Some(());
                    }
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth == 0 => return Some(()),
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        self.i += 1;
                        return Some(());
                    }
                }
                b',' if depth == 0 => return Some(()),
                _ => {}
            }
            self.i += 1;
        }
    }
}

/// Echo form of an id: strings and numbers verbatim, anything else unusable.
fn id_json(v: Option<&Value>) -> Option<Vec<u8>> {
    match v? {
        v @ (Value::String(_) | Value::Number(_)) => {
            let mut out = Vec::new();
            canonical::write_value(&mut out, v);
            Some(out)
        }
        _ => None,
    }
}

/// A `BAD_REQUEST` answered under `id_json`.
fn bad(id_json: Vec<u8>, detail: String) -> BadEnvelope {
    BadEnvelope {
        id_json,
        error: EngineError::bad_request(detail),
    }
}

/// Parse one request payload. `payload` is scratch: simd-json parses in place.
pub fn parse_request(payload: &mut [u8]) -> Result<Request, BadEnvelope> {
    if let Err(defect) = check_text(payload, REQUEST_JSON_DEPTH_MAX) {
        return Err(bad(
            salvage_id(payload).unwrap_or_else(|| NULL_ID.to_vec()),
            defect.message(REQUEST_JSON_DEPTH_MAX),
        ));
    }
    match json_tape::with_tape(payload, read_envelope) {
        Ok(read) => read,
        Err(e) => {
            // The parser works in place, but ids come before anything it
            // rewrites (escaped strings) in every client's requests.
            let id = salvage_id(payload).unwrap_or_else(|| NULL_ID.to_vec());
            Err(bad(id, format!("malformed JSON: {e}")))
        }
    }
}

/// The request in a parsed document: its envelope's fields read from the
/// tape, only `params` built into a tree (`json_tape` says why). A field
/// given twice counts with its later value.
fn read_envelope(nodes: &[Node<'_>]) -> Result<Request, BadEnvelope> {
    if !matches!(nodes.first(), Some(Node::Object { .. })) {
        return Err(bad(
            NULL_ID.to_vec(),
            "request must be a JSON object".into(),
        ));
    }
    let (mut id_at, mut type_at, mut op_at, mut params_at) = (None, None, None, None);
    for (key, at) in json_tape::members(nodes) {
        match key {
            "id" => id_at = Some(at),
            "type" => type_at = Some(at),
            "op" => op_at = Some(at),
            "params" => params_at = Some(at),
            _ => {}
        }
    }
    let node = |at: usize| nodes.get(at..).unwrap_or_default();
    let id = id_at.and_then(|at| id_json(Some(&json_tape::value_at(node(at)).0)));
    let echo = id.clone().unwrap_or_else(|| NULL_ID.to_vec());
    match type_at.map(|at| node(at).first()) {
        Some(Some(Node::String(_))) => {}
        Some(_) => {
            return Err(bad(
                echo,
                "invalid type for `type`, expected a string".into(),
            ))
        }
        None => return Err(bad(echo, "missing field `type`".into())),
    }
    let Some(id_json) = id else {
        let detail = if id_at.is_some() {
            "invalid type for `id`, expected a string"
        } else {
            "missing field `id`"
        };
        return Err(bad(NULL_ID.to_vec(), detail.into()));
    };
    let op = match op_at.map(|at| node(at).first()) {
        Some(Some(Node::String(name))) => match Op::from_name(name) {
            Some(op) => op,
            None => return Err(bad(id_json, format!("unknown op `{name}`"))),
        },
        Some(_) => {
            return Err(bad(
                id_json,
                "invalid type for `op`, expected a string".into(),
            ))
        }
        None => return Err(bad(id_json, "missing field `op`".into())),
    };
    let params = params_at.map_or(Value::Null, |at| json_tape::value_at(node(at)).0);
    Ok(Request {
        id_json,
        op,
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Request, BadEnvelope> {
        let mut bytes = s.as_bytes().to_vec();
        parse_request(&mut bytes)
    }

    #[test]
    fn parses_a_request() {
        let r = parse(
            r#"{"type":"request","id":"7","op":"GET_INSTANCE","params":{"instance_id":"o"}}"#,
        )
        .ok()
        .unwrap();
        assert_eq!(r.id_json, br#""7""#);
        assert_eq!(r.op, Op::GetInstance);
        assert_eq!(r.params["instance_id"], "o");
    }

    #[test]
    fn absent_params_are_null_and_type_value_is_not_checked() {
        let r = parse(r#"{"type":"foo","id":"","op":"PING"}"#).ok().unwrap();
        assert_eq!(r.params, Value::Null);
        assert_eq!(r.id_json, br#""""#);
    }

    #[test]
    fn problems_are_bad_requests_that_echo_the_id() {
        let e = parse(r#"{"type":"request","id":"9","op":"NOPE"}"#)
            .err()
            .unwrap();
        assert_eq!(e.id_json, br#""9""#);
        assert_eq!(e.error.code, shards::ErrorCode::BadRequest);
        assert!(e.error.message.contains("unknown op"));
        let e = parse(r#"{"type":"request","id":"9","op":"ping"}"#)
            .err()
            .unwrap();
        assert!(e.error.message.contains("unknown op"));
        let e = parse(r#"{"type":"request","id":5,"op":7}"#).err().unwrap();
        assert_eq!(e.id_json, b"5");
        // Trailing text: refused, but the id is readable, so it is echoed.
        let e = parse(r#"{"type":"request","id":"1","op":"PING"} x"#)
            .err()
            .unwrap();
        assert_eq!(e.id_json, br#""1""#);
        let e = parse("not json").err().unwrap();
        assert_eq!(e.id_json, b"null");
        let e = parse(r#"{"id":"1","op":"PING"}"#).err().unwrap();
        assert!(e.error.message.contains("missing field `type`"));
    }

    #[test]
    fn a_field_given_twice_counts_with_its_later_value() {
        let r = parse(r#"{"type":1,"type":"request","id":"1","op":"NOPE","op":"PING","params":[1],"params":{"a":2}}"#)
            .ok()
            .unwrap();
        assert_eq!((r.op, r.id_json), (Op::Ping, br#""1""#.to_vec()));
        assert_eq!(r.params, serde_json::json!({"a": 2}));
        let e = parse(r#"{"type":"request","id":"1","id":{},"op":"PING"}"#)
            .err()
            .unwrap();
        assert!(e.error.message.contains("invalid type for `id`"));
        let e = parse(r#"{"type":"request","id":"3","op":"PING","type":null}"#)
            .err()
            .unwrap();
        assert_eq!(e.id_json, br#""3""#);
        assert!(e.error.message.contains("invalid type for `type`"));
        assert!(parse(r#"["type","request"]"#).is_err());
        let r = parse(r#"{"type":"request","id":-2.5e3,"op":"PING","x":{"op":"NOPE"}}"#)
            .ok()
            .unwrap();
        assert_eq!((r.op, r.id_json), (Op::Ping, b"-2500.0".to_vec()));
    }

    #[test]
    fn nesting_scan_skips_strings() {
        assert_eq!(check_text(br#"{"a":"[[[[[[","b":"\"[[["}"#, 2), Ok(()));
        assert_eq!(check_text(b"[[[", 2), Err(TextDefect::TooDeep));
        assert_eq!(check_text(b"[[]]", 2), Ok(()));
    }

    #[test]
    fn lone_surrogates_are_refused_and_pairs_pass() {
        let ok = [
            r#"{"a":"\ud83d\ude00"}"#,
            r#"{"a":"\u0041\u00e9"}"#,
            r#"{"a":"\\ud800"}"#,
        ];
        for text in ok {
            assert_eq!(check_text(text.as_bytes(), 8), Ok(()), "{text}");
        }
        let bad = [
            r#"{"a":"\ud800"}"#,
            r#"{"a":"\udc00"}"#,
            r#"{"a":"\ud800x"}"#,
            r#"{"a":"\ud800\u0041"}"#,
            r#"{"a":"\ud800\ud800"}"#,
            r#"{"\udfff":1}"#,
        ];
        for text in bad {
            assert_eq!(
                check_text(text.as_bytes(), 8),
                Err(TextDefect::LoneSurrogate),
                "{text}"
            );
        }
        let e = parse(
            r#"{"type":"request","id":"s","op":"GET_INSTANCE","params":{"instance_id":"\ud800"}}"#,
        )
        .err()
        .unwrap();
        assert_eq!(e.id_json, br#""s""#);
        assert_eq!(e.error.code, shards::ErrorCode::BadRequest);
    }

    #[test]
    fn numbers_beyond_64_bits_keep_the_id() {
        // Beyond u64: read as a float, as rstmdb does.
        let r = parse(
            r#"{"type":"request","id":"7","op":"PING","params":{"n":123456789012345678901234567890}}"#,
        );
        assert!(r.is_ok());
        // Beyond f64: refused, but answered under the request's id.
        let e = parse(r#"{"type":"request","id":"8","op":"PING","params":{"n":1e400}}"#)
            .err()
            .unwrap();
        assert_eq!(e.id_json, br#""8""#);
        let e = parse(r#"{"type":"request","id":42,"op":"PING","params":[1e400]}"#)
            .err()
            .unwrap();
        assert_eq!(e.id_json, b"42");
    }

    #[test]
    fn the_id_is_salvaged_from_the_top_level_only() {
        assert_eq!(
            salvage_id(br#" { "params": {"id": "inner"}, "x": [1, {"id": 2}], "id" : "outer" }"#),
            Some(br#""outer""#.to_vec())
        );
        assert_eq!(salvage_id(br#"{"op":"X","id":-7}"#), Some(b"-7".to_vec()));
        assert_eq!(salvage_id(br#"{"id":null}"#), None);
        assert_eq!(salvage_id(br#"["id","x"]"#), None);
        assert_eq!(salvage_id(br#"{"a":"\"id\"","b":1}"#), None);
        assert_eq!(salvage_id(b"{\"a\":"), None);
        // Not UTF-8, or not a JSON string after all: no id.
        assert_eq!(salvage_id(b"{\"id\":\"\xff\xfe\"}"), None);
        assert_eq!(salvage_id(br#"{"id":"a\qb"}"#), None);
        assert_eq!(salvage_id(br#"{"id":1.5.5}"#), None);
    }

    #[test]
    fn hostile_nesting_is_refused() {
        let deep = format!(
            r#"{{"type":"request","id":"1","op":"PING","params":{}{}}}"#,
            "[".repeat(200_000),
            "]".repeat(200_000)
        );
        assert!(parse(&deep).is_err());
    }

    proptest::proptest! {
        /// The quick path never answers differently from the full scan.
        #[test]
        fn the_quick_check_agrees_with_the_scan(
            text in proptest::collection::vec(
                proptest::sample::select(b"[]{}\"\\uDd8Cc0a: ,".to_vec()),
                0..40,
            ),
            limit in 0usize..6,
        ) {
            proptest::prop_assert_eq!(check_text(&text, limit), scan_text(&text, limit));
        }
    }
}
