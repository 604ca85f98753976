//! Typed reading of a request's `params` with rstmdb 0.3's error texts
//! (docs/PROTOCOL.md §2.1): missing required keys, wrong JSON types, `null` for optional
//! scalars meaning "absent" while `null` for lists and booleans is an error.

use serde_json::{Map, Value};
use shards::EngineError;

/// Largest WAL offset a client may name: a larger one cannot exist.
pub const WAL_OFFSET_MAX: u64 = shards::wal::offset::OFFSET_MAX;

pub struct Params<'a> {
    obj: Option<&'a Map<String, Value>>,
}

/// serde's description of a JSON value, for "invalid type" messages.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean `{b}`"),
        Value::Number(n) if n.is_f64() => format!("floating point `{n}`"),
        Value::Number(n) => format!("integer `{n}`"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "sequence".into(),
        Value::Object(_) => "map".into(),
    }
}

fn invalid_type(v: &Value, expected: &str) -> EngineError {
    EngineError::bad_request(format_args!(
        "invalid type: {}, expected {expected}",
        describe(v)
    ))
}

fn missing(key: &str) -> EngineError {
    EngineError::bad_request(format_args!("missing field `{key}`"))
}

impl<'a> Params<'a> {
    /// Params of an operation with required keys: `null`/absent or a
    /// non-object is an error naming the operation's parameter struct.
    pub fn strict(params: &'a Value, struct_name: &str) -> Result<Self, EngineError> {
        match params {
            Value::Object(obj) => Ok(Params { obj: Some(obj) }),
            other => Err(invalid_type(other, &format!("struct {struct_name}"))),
        }
    }

    /// Params of an operation whose keys are all optional: absent, `null`
    /// and `{}` are all "no parameters".
    pub fn lenient(params: &'a Value, struct_name: &str) -> Result<Self, EngineError> {
        match params {
            Value::Null => Ok(Params { obj: None }),
            other => Self::strict(other, struct_name),
        }
    }

    /// Params read loosely (PROTOCOL.md §2.1, "loosely"): never a type error.
    pub fn loose(params: &'a Value) -> Self {
        Params {
            obj: params.as_object(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj?.get(key)
    }

    /// The first present, non-null key among `keys` (a name and its aliases).
    fn first(&self, keys: &[&'static str]) -> Option<(&'static str, &'a Value)> {
        keys.iter()
            .find_map(|k| self.get(k).filter(|v| !v.is_null()).map(|v| (*k, v)))
    }

    pub fn str(&self, key: &'static str) -> Result<&'a str, EngineError> {
        self.str_any(&[key])
    }

    /// A required string under `keys[0]` or one of its aliases.
    pub fn str_any(&self, keys: &[&'static str]) -> Result<&'a str, EngineError> {
        match self.first(keys) {
            Some((_, Value::String(s))) => Ok(s),
            Some((_, v)) => Err(invalid_type(v, "a string")),
            None => Err(missing(keys[0])),
        }
    }

    pub fn opt_str(&self, key: &'static str) -> Result<Option<&'a str>, EngineError> {
        self.opt_str_any(&[key])
    }

    pub fn opt_str_any(&self, keys: &[&'static str]) -> Result<Option<&'a str>, EngineError> {
        match self.first(keys) {
            Some((_, Value::String(s))) => Ok(Some(s)),
            Some((_, v)) => Err(invalid_type(v, "a string")),
            None => Ok(None),
        }
    }

    fn u64_of(v: &Value, max: u64, ty: &str) -> Result<u64, EngineError> {
        match v {
            Value::Number(n) => match n.as_u64() {
                Some(x) if x <= max => Ok(x),
                _ if n.is_f64() => Err(invalid_type(v, ty)),
                _ => Err(EngineError::bad_request(format_args!(
                    "invalid value: integer `{n}`, expected {ty}"
                ))),
            },
            other => Err(invalid_type(other, ty)),
        }
    }

    pub fn u32(&self, key: &'static str) -> Result<u32, EngineError> {
        match self.first(&[key]) {
            Some((_, v)) => Self::u64_of(v, u32::MAX as u64, "u32").map(|x| x as u32),
            None => Err(missing(key)),
        }
    }

    pub fn u16(&self, key: &'static str) -> Result<u16, EngineError> {
        match self.first(&[key]) {
            Some((_, v)) => Self::u64_of(v, u16::MAX as u64, "u16").map(|x| x as u16),
            None => Err(missing(key)),
        }
    }

    pub fn opt_u32(&self, key: &'static str) -> Result<Option<u32>, EngineError> {
        self.first(&[key])
            .map(|(_, v)| Self::u64_of(v, u32::MAX as u64, "u32").map(|x| x as u32))
            .transpose()
    }

    pub fn opt_u64(&self, key: &'static str) -> Result<Option<u64>, EngineError> {
        self.first(&[key])
            .map(|(_, v)| Self::u64_of(v, u64::MAX, "u64"))
            .transpose()
    }

    /// An optional WAL offset: an integer from 0 to `WAL_OFFSET_MAX`.
    pub fn opt_offset(&self, key: &'static str) -> Result<Option<u64>, EngineError> {
        self.first(&[key])
            .map(|(_, v)| Self::u64_of(v, WAL_OFFSET_MAX, "a WAL offset (at most 2^53-1)"))
            .transpose()
    }

    /// An optional list of strings; `null` is a type error (PROTOCOL.md §2.1).
    pub fn opt_str_list(&self, key: &'static str) -> Result<Vec<String>, EngineError> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(invalid_type(other, "a string")),
                })
                .collect(),
            Some(other) => Err(invalid_type(other, "a sequence")),
        }
    }

    /// Any JSON value under `keys[0]` or an alias; absent → `None`.
    pub fn any(&self, keys: &[&'static str]) -> Option<&'a Value> {
        keys.iter().find_map(|k| self.get(k))
    }
}

/// The value `Params::any` reads, moved out of `params` (a `null` left in
/// its place). A request's params are dropped once its command is built, so
/// its largest values — a context, a payload — need not be copied.
pub fn take_any(params: &mut Value, keys: &[&'static str]) -> Option<Value> {
    let obj = params.as_object_mut()?;
    let key = keys.iter().find(|k| obj.contains_key(**k))?;
    obj.get_mut(*key).map(Value::take)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn messages_match_0_3() {
        let v = json!({"version": 1.0, "n": "x", "list": null});
        let p = Params::strict(&v, "PutMachineParams").unwrap();
        assert_eq!(
            p.u32("version").unwrap_err().message,
            "invalid request: invalid type: floating point `1.0`, expected u32"
        );
        assert_eq!(
            p.str("machine").unwrap_err().message,
            "invalid request: missing field `machine`"
        );
        assert_eq!(
            p.opt_str_list("list").unwrap_err().message,
            "invalid request: invalid type: null, expected a sequence"
        );
        assert_eq!(
            Params::strict(&Value::Null, "GetInstanceParams")
                .err()
                .unwrap()
                .message,
            "invalid request: invalid type: null, expected struct GetInstanceParams"
        );
        let neg = json!({"version": -1});
        assert!(Params::strict(&neg, "X").unwrap().u32("version").is_err());
    }

    #[test]
    fn null_optional_scalars_are_absent_and_aliases_work() {
        let v = json!({"instance_id": null, "id": "a", "context": {"x": 1}});
        let p = Params::strict(&v, "X").unwrap();
        assert_eq!(p.opt_str_any(&["instance_id", "id"]).unwrap(), Some("a"));
        assert_eq!(p.any(&["initial_ctx", "context"]), Some(&json!({"x": 1})));
        assert_eq!(p.opt_u64("expected_wal_offset").unwrap(), None);
    }

    #[test]
    fn take_any_moves_out_what_any_reads() {
        let mut v = json!({"instance_id": null, "context": {"x": 1}, "ctx": 2});
        let keys = ["initial_ctx", "context", "ctx"];
        let read = Params::loose(&v).any(&keys).cloned();
        assert_eq!(take_any(&mut v, &keys), read);
        assert_eq!(v["context"], Value::Null);
        // Present but null is taken as null, as `any` reads it.
        assert_eq!(take_any(&mut v, &["instance_id", "ctx"]), Some(Value::Null));
        assert_eq!(take_any(&mut v, &["missing"]), None);
        assert_eq!(take_any(&mut json!([1]), &["x"]), None);
    }

    #[test]
    fn offsets_are_integers_a_javascript_number_holds() {
        let v = json!({"a": 5, "b": u64::MAX, "c": "5", "d": 9007199254740991u64, "e": null});
        let p = Params::strict(&v, "X").unwrap();
        assert_eq!(p.opt_offset("a").unwrap(), Some(5));
        assert_eq!(p.opt_offset("d").unwrap(), Some(WAL_OFFSET_MAX));
        assert_eq!(p.opt_offset("e").unwrap(), None);
        assert!(p
            .opt_offset("b")
            .unwrap_err()
            .message
            .contains("expected a WAL offset"));
        assert!(p.opt_offset("c").is_err());
    }
}
