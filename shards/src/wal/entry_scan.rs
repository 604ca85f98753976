//! Decoding the hot entries (`apply_event`, `create_instance`) as this
//! crate writes them, without serde.
//!
//! Every record replayed at start and every record a cluster follower
//! applies is decoded. Through serde that was about half of a recovery's
//! CPU (`perf` of a restart replaying 1.9 M records: string scanning, UTF-8
//! checks and the raw-value capture of the context) and ~11 % of a
//! follower's under a 16×16 apply load. The writer (`entry.rs`) lays the
//! fields out in one order, without whitespace, so a decoder can expect
//! each byte where it comes.
//!
//! It accepts only that exact layout: every field in the writer's order,
//! names and strings without escapes, the version as plain digits, the
//! raw values (payload, context) valid JSON with no whitespace before
//! them and no `\u` escape of a surrogate. Anything else — an entry written
//! by another version, by rstmdb, with escapes — is `None`, and the caller
//! decodes it through serde, whose answer for such an entry is the only
//! one there is. What it accepts serde decodes to the same entry (the
//! property test below checks this on generated entries and on their
//! mutations).

use super::entry::{ApplyEventEntry, CreateInstanceEntry, Entry, RawJson};

/// Deepest nesting of a raw value this decoder follows; deeper values go
/// to serde (whose own limit is 128).
const RAW_VALUE_DEPTH_MAX: usize = 100;

/// The entry `payload` holds, if it is laid out as `write_apply_event` or
/// `write_create_instance` lays it out; `None` otherwise.
pub(super) fn decode_written(kind: &[u8], payload: &[u8]) -> Option<Entry> {
    let mut s = Scan { b: payload, i: 0 };
    let entry = match kind {
        b"apply_event" => {
            let (instance_id, machine, version) = s.instance_head(b"apply_event")?;
            s.lit(br#","event":"#)?;
            let event = s.string()?;
            s.lit(br#","from_state":"#)?;
            let from_state = s.string()?;
            s.lit(br#","to_state":"#)?;
            let to_state = s.string()?;
            s.lit(br#","payload":"#)?;
            let payload = s.raw()?;
            s.lit(br#","ctx":"#)?;
            let ctx = s.raw()?;
            let event_id = s.optional(br#","event_id":"#)?;
            let idempotency_key = s.optional(br#","idempotency_key":"#)?;
            Entry::ApplyEvent(ApplyEventEntry {
                instance_id,
                machine: Some(machine),
                version: Some(version),
                event,
                from_state,
                to_state,
                // serde reads a `null` payload as no payload.
                payload: Some(payload).filter(|p| p.bytes() != b"null"),
                ctx,
                event_id,
                idempotency_key,
            })
        }
        b"create_instance" => {
            let (instance_id, machine, version) = s.instance_head(b"create_instance")?;
            s.lit(br#","initial_state":"#)?;
            let initial_state = s.string()?;
            s.lit(br#","initial_ctx":"#)?;
            let initial_ctx = s.raw()?;
            let idempotency_key = s.optional(br#","idempotency_key":"#)?;
            Entry::CreateInstance(CreateInstanceEntry {
                instance_id,
                machine,
                version,
                initial_state,
                initial_ctx,
                idempotency_key,
            })
        }
        _ => return None,
    };
    s.lit(b"}")?;
    (s.i == payload.len()).then_some(entry)
}

struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scan<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn lit(&mut self, expected: &[u8]) -> Option<()> {
        let rest = self.b.get(self.i..)?;
        rest.starts_with(expected).then(|| self.i += expected.len())
    }

    /// The opening `entry.rs`'s `instance_entry_head` writes: the type
    /// `kind`, then the instance id, its machine and version.
    fn instance_head(&mut self, kind: &[u8]) -> Option<(String, String, u32)> {
        self.lit(br#"{"type":""#)?;
        self.lit(kind)?;
        self.lit(br#"","instance_id":"#)?;
        let instance_id = self.string()?;
        self.lit(br#","machine":"#)?;
        let machine = self.string()?;
        self.lit(br#","version":"#)?;
        Some((instance_id, machine, self.version()?))
    }

    /// A string without escapes or control characters, as an owned
    /// `String` (its bytes checked as UTF-8).
    fn string(&mut self) -> Option<String> {
        self.lit(b"\"")?;
        let start = self.i;
        self.i += plain_run(&self.b[self.i..]);
        if self.peek()? != b'"' {
            // An escape or a control character.
            return None;
        }
        let text = std::str::from_utf8(&self.b[start..self.i]).ok()?;
        self.i += 1;
        Some(text.to_owned())
    }

    /// `"name":"value"` if it comes next; `Some(None)` if it does not.
    fn optional(&mut self, name: &[u8]) -> Option<Option<String>> {
        if self.lit(name).is_none() {
            return Some(None);
        }
        self.string().map(Some)
    }

    /// A `u32` written as plain digits (no sign, no leading zero, no
    /// fraction or exponent).
    fn version(&mut self) -> Option<u32> {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        let digits = &self.b[start..self.i];
        if digits.is_empty() || (digits.len() > 1 && digits[0] == b'0') {
            return None;
        }
        if matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    }

    /// One JSON value, kept as its text.
    fn raw(&mut self) -> Option<RawJson> {
        let start = self.i;
        self.value(0)?;
        let text = std::str::from_utf8(&self.b[start..self.i]).ok()?;
        Some(RawJson::from_checked_text(text))
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// Skip one value starting right here, checking its syntax.
    fn value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'{' => self.container(depth, b'}', true),
            b'[' => self.container(depth, b']', false),
            b'"' => self.skip_string(),
            b't' => self.lit(b"true"),
            b'f' => self.lit(b"false"),
            b'n' => self.lit(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// An object (`keyed`) or an array, from its opening bracket.
    fn container(&mut self, depth: usize, close: u8, keyed: bool) -> Option<()> {
        if depth >= RAW_VALUE_DEPTH_MAX {
            return None;
        }
        self.i += 1;
        self.ws();
        if self.peek()? == close {
            self.i += 1;
            return Some(());
        }
        loop {
            if keyed {
                self.skip_string()?;
                self.ws();
                self.lit(b":")?;
                self.ws();
            }
            self.value(depth + 1)?;
            self.ws();
            match self.peek()? {
                b',' => {
                    self.i += 1;
                    self.ws();
                }
                c if c == close => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A string with any escapes but `\u` of a surrogate.
    fn skip_string(&mut self) -> Option<()> {
        self.lit(b"\"")?;
        loop {
            self.i += plain_run(&self.b[self.i..]);
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Some(());
                }
                b'\\' => {
                    self.i += 1;
                    match self.peek()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 1,
                        b'u' => {
                            let hex = self.b.get(self.i + 1..self.i + 5)?;
                            let hex = std::str::from_utf8(hex).ok()?;
                            let code = u16::from_str_radix(hex, 16).ok()?;
                            if hex.starts_with('+') || (0xD800..=0xDFFF).contains(&code) {
                                return None;
                            }
                            self.i += 5;
                        }
                        _ => return None,
                    }
                }
                c if c < 0x20 => return None,
                _ => self.i += 1,
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return None;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return None;
            }
        }
        Some(())
    }
}

/// How many bytes at the start of `b` a string holds as they are: none is
/// `"`, `\\` or a control character. Eight bytes at a time (the usual
/// test for a zero byte in a word, on the word XORed with the byte sought),
/// then byte by byte; strings were a quarter of a replay's CPU read one
/// byte at a time.
fn plain_run(b: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut n = 0;
    for chunk in b.chunks_exact(8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        // A byte below 0x20 (the same test against 0x20 instead of 1).
        let low = x.wrapping_sub(0x20 * ONES) & !x & HIGHS;
        if has_zero(x ^ (u64::from(b'"') * ONES)) | has_zero(x ^ (u64::from(b'\\') * ONES)) | low
            != 0
        {
            break;
        }
        n += 8;
    }
    n + b[n..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .unwrap_or(b.len() - n)
}

#[cfg(test)]
#[path = "entry_scan_tests.rs"]
mod tests;
