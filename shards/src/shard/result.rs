//! A small writer for result objects: keys are written by the caller in
//! ascending byte order (docs/PROTOCOL.md §1.10), values through the canonical writer.

use serde_json::Value;

use crate::instance_ctx::Ctx;
use crate::json::canonical;

/// What a result starts with room for: a GET_INSTANCE answer with a small
/// context (~150–250 bytes) fits without growing; the buffer grew twice
/// from 64 before.
pub const RESULT_INITIAL_CAPACITY_BYTES: usize = 256;

pub struct ResultWriter {
    out: Vec<u8>,
    #[cfg(debug_assertions)]
    last_key: Option<&'static str>,
}

impl Default for ResultWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl ResultWriter {
    pub fn new() -> Self {
        Self::with_capacity(RESULT_INITIAL_CAPACITY_BYTES)
    }

    pub fn with_capacity(n: usize) -> Self {
        let mut out = Vec::with_capacity(n);
        out.push(b'{');
        ResultWriter {
            out,
            #[cfg(debug_assertions)]
            last_key: None,
        }
    }

    fn key(&mut self, k: &'static str) {
        #[cfg(debug_assertions)]
        {
            debug_assert!(
                self.last_key.is_none_or(|last| last < k),
                "result keys must be written in ascending order: {k}"
            );
            self.last_key = Some(k);
        }
        if self.out.len() > 1 {
            self.out.push(b',');
        }
        canonical::write_str(&mut self.out, k);
        self.out.push(b':');
    }

    pub fn str(&mut self, k: &'static str, v: &str) -> &mut Self {
        self.key(k);
        canonical::write_str(&mut self.out, v);
        self
    }

    pub fn u64(&mut self, k: &'static str, v: u64) -> &mut Self {
        self.key(k);
        canonical::write_u64(&mut self.out, v);
        self
    }

    pub fn bool(&mut self, k: &'static str, v: bool) -> &mut Self {
        self.key(k);
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
        self
    }

    pub fn value(&mut self, k: &'static str, v: &Value) -> &mut Self {
        self.key(k);
        canonical::write_value(&mut self.out, v);
        self
    }

    /// An instance's context (`instance_ctx`), as canonical JSON.
    pub fn ctx(&mut self, k: &'static str, ctx: &Ctx) -> &mut Self {
        self.key(k);
        ctx.write_json(&mut self.out);
        self
    }

    /// A value already encoded as canonical JSON.
    pub fn raw(&mut self, k: &'static str, json: &[u8]) -> &mut Self {
        self.key(k);
        self.out.extend_from_slice(json);
        self
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.out.push(b'}');
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_compact_objects() {
        let mut r = ResultWriter::new();
        r.bool("a", true)
            .raw("b", b"{}")
            .str("c", "x\"y")
            .u64("d", 7);
        assert_eq!(
            r.finish(),
            br#"{"a":true,"b":{},"c":"x\"y","d":7}"#.to_vec()
        );
        assert_eq!(ResultWriter::new().finish(), b"{}".to_vec());
    }
}
