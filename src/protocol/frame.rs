//! Wire framing of one connection (docs/PROTOCOL.md §1): an incremental decoder that
//! finds the next JSON document in the connection's input bytes (RCPX
//! frames, legacy RCP1 frames, and — after HELLO chose `jsonl` — JSON lines),
//! and encoders that wrap an outgoing JSON document in place.
//!
//! The decoder owns no buffer: the caller keeps the received bytes, passes
//! them starting at the first unconsumed byte, parses the payload in place
//! and drops `consumed` bytes afterwards. Every [`FrameError`] means "close
//! the connection and write nothing".

use std::fmt;
use std::ops::Range;

/// Largest accepted payload; exactly this many bytes is still accepted (§1.2).
pub const FRAME_PAYLOAD_MAX_BYTES: usize = 16 * 1024 * 1024;
/// Fixed header of an RCPX frame (§1.2).
pub const RCPX_HEADER_BYTES: usize = 18;
/// Fixed header of a legacy RCP1 frame (§1.9).
pub const RCP1_HEADER_BYTES: usize = 16;
/// The header extension length is a u16, so it can never be larger (§1.7).
pub const HEADER_EXTENSION_MAX_BYTES: usize = u16::MAX as usize;
const _: () = assert!(
    shards::wal::record::RECORD_PAYLOAD_MAX_BYTES < FRAME_PAYLOAD_MAX_BYTES,
    "what one log record holds must fit in one answer frame (GET, WAL_READ)"
);
/// Largest complete frame the decoder will ever wait for.
pub const FRAME_MAX_BYTES: usize =
    RCPX_HEADER_BYTES + HEADER_EXTENSION_MAX_BYTES + FRAME_PAYLOAD_MAX_BYTES;
/// Longest JSON line accepted in JSONL input, excluding its `\r\n` (§1.8).
pub const JSONL_LINE_MAX_BYTES: usize = FRAME_PAYLOAD_MAX_BYTES;
/// Whitespace (blank lines) tolerated before a JSONL-mode message. Without a
/// bound a peer sending only newlines would grow the caller's buffer forever,
/// because blank bytes are only consumed together with the next message.
pub const JSONL_LEADING_WHITESPACE_MAX_BYTES: usize = 64 * 1024;
/// The decoder always reports a message or an error before the caller has
/// buffered more than this many bytes, so it is a safe input-buffer cap.
pub const DECODER_INPUT_MAX_BYTES: usize = JSONL_LEADING_WHITESPACE_MAX_BYTES + FRAME_MAX_BYTES;

const MAGIC_BYTES: usize = 4;
const RCPX_MAGIC: &[u8; MAGIC_BYTES] = b"RCPX";
const RCP1_MAGIC: &[u8; MAGIC_BYTES] = b"RCP1";
const PROTOCOL_VERSION: u16 = 1;
const FLAG_CRC_PRESENT: u16 = 0x0001;
/// CRC_PRESENT, COMPRESSED, STREAM, END_STREAM; anything else closes (§1.3).
const FLAGS_VALID_MASK: u16 = 0x000F;
/// Bytes 0..10 of every RCPX frame we send: magic, version 1, flags
/// CRC_PRESENT, no extension (§1.6).
const RCPX_OUTPUT_HEADER_PREFIX: &[u8] = b"RCPX\x00\x01\x00\x01\x00\x00";
/// Bytes 0..8 of every RCP1 frame we send: `00 01 00 00` reads as "flags
/// CRC_PRESENT, no extension" for variant-B readers and is ignored by
/// variant-A readers (§1.9).
const RCP1_OUTPUT_HEADER_PREFIX: &[u8] = b"RCP1\x00\x01\x00\x00";
/// payload_len (u32) + crc32c (u32): the tail of both output headers.
const HEADER_LENGTH_AND_CRC_BYTES: usize = 8;

/// Binary framing of a connection, fixed by its first four bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Rcpx,
    Rcp1,
}

impl Framing {
    fn magic(self) -> &'static [u8; MAGIC_BYTES] {
        match self {
            Framing::Rcpx => RCPX_MAGIC,
            Framing::Rcp1 => RCP1_MAGIC,
        }
    }

    fn header_bytes(self) -> usize {
        match self {
            Framing::Rcpx => RCPX_HEADER_BYTES,
            Framing::Rcp1 => RCP1_HEADER_BYTES,
        }
    }
}

/// How responses and events are written to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    Rcpx,
    Rcp1,
    Jsonl,
}

impl OutputMode {
    fn header_bytes(self) -> usize {
        match self {
            OutputMode::Rcpx => RCPX_HEADER_BYTES,
            OutputMode::Rcp1 => RCP1_HEADER_BYTES,
            OutputMode::Jsonl => 0,
        }
    }
}

/// A framing violation. Each one closes the connection without a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    BadMagic,
    UnsupportedVersion(u16),
    /// The whole flags field, which has a bit outside `0x000F` set.
    ReservedFlags(u16),
    /// The declared (input) or actual (output) payload length.
    PayloadTooLarge(u64),
    /// `expected` is the CRC carried in the header, `actual` the one computed
    /// over the received payload.
    CrcMismatch {
        expected: u32,
        actual: u32,
    },
    LineTooLong,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::BadMagic => f.write_str("bad frame magic"),
            FrameError::UnsupportedVersion(version) => {
                write!(f, "unsupported frame version {version}")
            }
            FrameError::ReservedFlags(flags) => write!(f, "reserved frame flags set: {flags:#06x}"),
            FrameError::PayloadTooLarge(len) => write!(
                f,
                "frame payload of {len} bytes exceeds {FRAME_PAYLOAD_MAX_BYTES} bytes"
            ),
            FrameError::CrcMismatch { expected, actual } => write!(
                f,
                "payload crc32c mismatch: header {expected:#010x}, computed {actual:#010x}"
            ),
            FrameError::LineTooLong => {
                write!(f, "jsonl line exceeds {JSONL_LINE_MAX_BYTES} bytes")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// One decoded message, located inside the slice given to
/// [`FrameDecoder::decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Where the JSON document lies, so the caller can parse it in place.
    pub payload: Range<usize>,
    /// Input bytes this message used (leading blanks, header, extension,
    /// payload, newline); the caller drops them afterwards.
    pub consumed: usize,
}

/// The fields of a fixed header that passed every header-only check.
struct FrameHeader {
    flags: u16,
    extension_bytes: usize,
    payload_bytes: usize,
    crc: u32,
}

/// Incremental decoder for one connection's input stream.
///
/// Contract: pass the input starting at the first unconsumed byte; after
/// `Ok(None)` pass the same bytes again with more appended.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    framing: Option<Framing>,
    jsonl_input: bool,
    /// Bytes of the pending JSON line (counted from its `{`) already searched
    /// for `\n`. A 16 MiB line arriving in small reads is then scanned once
    /// rather than once per read.
    line_scanned_bytes: usize,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Accept JSON lines next to frames (§1.8 Compat); set after HELLO
    /// negotiated `jsonl`, cleared when a later HELLO switches back.
    pub fn set_jsonl_input(&mut self, on: bool) {
        self.jsonl_input = on;
        self.line_scanned_bytes = 0;
    }

    /// `None` until the first four bytes of a frame were seen.
    pub fn framing(&self) -> Option<Framing> {
        self.framing
    }

    /// Output mode for a connection in binary wire mode: answer RCP1 peers in
    /// RCP1, everyone else (including a connection that has not sent a frame
    /// yet) in RCPX.
    pub fn output_mode_for_binary(&self) -> OutputMode {
        match self.framing {
            Some(Framing::Rcp1) => OutputMode::Rcp1,
            Some(Framing::Rcpx) | None => OutputMode::Rcpx,
        }
    }

    /// Finds the next message at the start of `input`. `Ok(None)` means more
    /// bytes are needed; nothing is consumed then.
    pub fn decode(&mut self, input: &[u8]) -> Result<Option<Decoded>, FrameError> {
        let result = self.decode_message(input);
        if !matches!(result, Ok(None)) {
            self.line_scanned_bytes = 0;
        }
        result
    }

    /// Input length (counted from the start of `input`) at which the pending
    /// message can be complete, for buffer sizing. Exact once a frame header
    /// is buffered; a lower bound otherwise (for a JSON line, whose end is
    /// unknown, one byte more than buffered). Never more than
    /// [`DECODER_INPUT_MAX_BYTES`] for input shorter than that, and
    /// `input.len()` when [`decode`](Self::decode) would fail, so it never
    /// asks to allocate for a frame that will be rejected.
    pub fn bytes_needed_hint(&self, input: &[u8]) -> usize {
        let start = match self.message_start(input) {
            Ok(Some(start)) => start,
            Ok(None) => return input.len() + 1,
            Err(_) => return input.len(),
        };
        let bytes = &input[start..];
        if self.jsonl_input && bytes.first() == Some(&b'{') {
            return input.len() + 1;
        }
        let framing = match self
            .framing
            .map_or_else(|| detect_framing(bytes), |f| Ok(Some(f)))
        {
            Ok(Some(framing)) => framing,
            // Both headers are at least this long.
            Ok(None) => return start + RCP1_HEADER_BYTES,
            Err(_) => return input.len(),
        };
        match read_header(framing, bytes) {
            Ok(Some(header)) => {
                start + framing.header_bytes() + header.extension_bytes + header.payload_bytes
            }
            Ok(None) => start + framing.header_bytes(),
            Err(_) => input.len(),
        }
    }

    fn decode_message(&mut self, input: &[u8]) -> Result<Option<Decoded>, FrameError> {
        let Some(start) = self.message_start(input)? else {
            return Ok(None);
        };
        if self.jsonl_input && input.get(start) == Some(&b'{') {
            return self.decode_line(input, start);
        }
        self.decode_frame(input, start)
    }

    /// Offset of the first byte of the next message: 0 in binary input, after
    /// any blank lines in JSONL input. `None` if only blanks are buffered.
    fn message_start(&self, input: &[u8]) -> Result<Option<usize>, FrameError> {
        if !self.jsonl_input {
            return Ok((!input.is_empty()).then_some(0));
        }
        let blanks_searched = &input[..input.len().min(JSONL_LEADING_WHITESPACE_MAX_BYTES + 1)];
        match blanks_searched.iter().position(|&b| !is_json_whitespace(b)) {
            Some(start) => Ok(Some(start)),
            None if input.len() > JSONL_LEADING_WHITESPACE_MAX_BYTES => {
                Err(FrameError::LineTooLong)
            }
            None => Ok(None),
        }
    }

    fn decode_frame(&mut self, input: &[u8], start: usize) -> Result<Option<Decoded>, FrameError> {
        let bytes = &input[start..];
        let framing = match self.framing {
            Some(framing) => framing,
            None => match detect_framing(bytes)? {
                Some(framing) => {
                    self.framing = Some(framing);
                    framing
                }
                None => return Ok(None),
            },
        };
        let Some(header) = read_header(framing, bytes)? else {
            return Ok(None);
        };
        let payload_start = framing.header_bytes() + header.extension_bytes;
        let frame_bytes = payload_start + header.payload_bytes;
        let Some(payload) = bytes.get(payload_start..frame_bytes) else {
            return Ok(None);
        };
        if header.flags & FLAG_CRC_PRESENT != 0 {
            let actual = crc32c::crc32c(payload);
            if actual != header.crc {
                return Err(FrameError::CrcMismatch {
                    expected: header.crc,
                    actual,
                });
            }
        }
        Ok(Some(Decoded {
            payload: start + payload_start..start + frame_bytes,
            consumed: start + frame_bytes,
        }))
    }

    fn decode_line(&mut self, input: &[u8], start: usize) -> Result<Option<Decoded>, FrameError> {
        let line = &input[start..];
        // Room for a maximal line plus its "\r\n": a newline beyond it can
        // only end a line that is too long.
        let search_end = line.len().min(JSONL_LINE_MAX_BYTES + 2);
        let search_start = self.line_scanned_bytes.min(search_end);
        match find_newline(&line[search_start..search_end]) {
            Some(offset) => {
                let newline = search_start + offset;
                let line_bytes = match line[..newline].last() {
                    Some(b'\r') => newline - 1,
                    _ => newline,
                };
                if line_bytes > JSONL_LINE_MAX_BYTES {
                    return Err(FrameError::LineTooLong);
                }
                Ok(Some(Decoded {
                    payload: start..start + line_bytes,
                    consumed: start + newline + 1,
                }))
            }
            None => {
                // Without a newline in reach the line is already too long,
                // unless the byte just past the limit is the "\r" of a
                // maximal line whose "\n" has not arrived yet.
                let too_long =
                    !matches!(line.get(JSONL_LINE_MAX_BYTES..), None | Some([] | [b'\r']));
                if too_long {
                    return Err(FrameError::LineTooLong);
                }
                self.line_scanned_bytes = search_end;
                Ok(None)
            }
        }
    }
}

/// Chooses the framing from the first bytes of a connection, rejecting as
/// soon as they cannot begin either magic.
fn detect_framing(bytes: &[u8]) -> Result<Option<Framing>, FrameError> {
    match bytes.first_chunk::<MAGIC_BYTES>() {
        Some(magic) if magic == RCPX_MAGIC => Ok(Some(Framing::Rcpx)),
        Some(magic) if magic == RCP1_MAGIC => Ok(Some(Framing::Rcp1)),
        Some(_) => Err(FrameError::BadMagic),
        None if RCPX_MAGIC.starts_with(bytes) || RCP1_MAGIC.starts_with(bytes) => Ok(None),
        None => Err(FrameError::BadMagic),
    }
}

/// Parses and checks the fixed header once it is buffered. Before that, only
/// the magic prefix can be checked.
fn read_header(framing: Framing, bytes: &[u8]) -> Result<Option<FrameHeader>, FrameError> {
    let header = match framing {
        Framing::Rcpx => bytes
            .first_chunk::<RCPX_HEADER_BYTES>()
            .map(parse_rcpx_header),
        Framing::Rcp1 => bytes
            .first_chunk::<RCP1_HEADER_BYTES>()
            .map(parse_rcp1_header),
    };
    match header {
        Some(header) => header.map(Some),
        None if framing
            .magic()
            .starts_with(&bytes[..bytes.len().min(MAGIC_BYTES)]) =>
        {
            Ok(None)
        }
        None => Err(FrameError::BadMagic),
    }
}

/// Checks in the order 0.3 does: magic, version, flags, payload length (§1.5).
fn parse_rcpx_header(h: &[u8; RCPX_HEADER_BYTES]) -> Result<FrameHeader, FrameError> {
    if h[..MAGIC_BYTES] != RCPX_MAGIC[..] {
        return Err(FrameError::BadMagic);
    }
    let version = u16::from_be_bytes([h[4], h[5]]);
    if version != PROTOCOL_VERSION {
        return Err(FrameError::UnsupportedVersion(version));
    }
    let flags = check_flags(u16::from_be_bytes([h[6], h[7]]))?;
    let extension_bytes = usize::from(u16::from_be_bytes([h[8], h[9]]));
    let payload_bytes = check_payload_len(u32::from_be_bytes([h[10], h[11], h[12], h[13]]))?;
    Ok(FrameHeader {
        flags,
        extension_bytes,
        payload_bytes,
        crc: u32::from_be_bytes([h[14], h[15], h[16], h[17]]),
    })
}

/// Variant B of §1.9, which reads variant A (four zero flag bytes) as
/// flags 0 and no extension.
fn parse_rcp1_header(h: &[u8; RCP1_HEADER_BYTES]) -> Result<FrameHeader, FrameError> {
    if h[..MAGIC_BYTES] != RCP1_MAGIC[..] {
        return Err(FrameError::BadMagic);
    }
    let flags = check_flags(u16::from_be_bytes([h[4], h[5]]))?;
    let extension_bytes = usize::from(u16::from_be_bytes([h[6], h[7]]));
    let payload_bytes = check_payload_len(u32::from_be_bytes([h[8], h[9], h[10], h[11]]))?;
    Ok(FrameHeader {
        flags,
        extension_bytes,
        payload_bytes,
        crc: u32::from_be_bytes([h[12], h[13], h[14], h[15]]),
    })
}

fn check_flags(flags: u16) -> Result<u16, FrameError> {
    if flags & !FLAGS_VALID_MASK != 0 {
        return Err(FrameError::ReservedFlags(flags));
    }
    Ok(flags)
}

fn check_payload_len(len: u32) -> Result<usize, FrameError> {
    match usize::try_from(len) {
        Ok(len) if len <= FRAME_PAYLOAD_MAX_BYTES => Ok(len),
        _ => Err(FrameError::PayloadTooLarge(u64::from(len))),
    }
}

fn is_json_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\r' | b'\n')
}

/// Position of the first `\n`, eight bytes per step: a JSONL line may be
/// 16 MiB, and a byte-at-a-time loop would dominate decoding it.
fn find_newline(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
    const NEWLINES: u64 = ONES * b'\n' as u64;
    let mut at = 0;
    while let Some(word) = bytes.get(at..).and_then(|rest| rest.first_chunk::<8>()) {
        // Newline bytes become zero; the classic zero-byte test can flag
        // false positives only above a real zero byte, so with a
        // little-endian load the lowest flag is the first newline.
        let word = u64::from_le_bytes(*word) ^ NEWLINES;
        let zero_bytes = word.wrapping_sub(ONES) & !word & HIGH_BITS;
        if zero_bytes != 0 {
            return Some(at + (zero_bytes.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    bytes[at..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|offset| at + offset)
}

/// Where a frame started in the output buffer, and how to finish it.
#[must_use = "a frame must be finished with end_frame"]
#[derive(Debug)]
pub struct FrameMark {
    start: usize,
    mode: OutputMode,
}

/// Starts a frame at the end of `out` by reserving its header (nothing for
/// JSONL); the caller then serialises the payload straight into `out`.
pub fn begin_frame(out: &mut Vec<u8>, mode: OutputMode) -> FrameMark {
    let start = out.len();
    match mode {
        OutputMode::Rcpx => out.extend_from_slice(RCPX_OUTPUT_HEADER_PREFIX),
        OutputMode::Rcp1 => out.extend_from_slice(RCP1_OUTPUT_HEADER_PREFIX),
        OutputMode::Jsonl => {}
    }
    out.resize(start + mode.header_bytes(), 0);
    FrameMark { start, mode }
}

/// Finishes the frame begun at `mark`: fills in length and CRC, or appends
/// the JSONL newline. A payload over [`FRAME_PAYLOAD_MAX_BYTES`] cannot be
/// framed — 0.3 then drops the connection without an answer (§1.6) — so the
/// partial frame is removed from `out` and `PayloadTooLarge` returned (the
/// connection's writer answers `INTERNAL_ERROR` instead and keeps going).
pub fn end_frame(out: &mut Vec<u8>, mark: FrameMark) -> Result<(), FrameError> {
    let payload_start = mark.start + mark.mode.header_bytes();
    let payload_bytes = out.len() - payload_start;
    let payload_len = match u32::try_from(payload_bytes) {
        Ok(len) if payload_bytes <= FRAME_PAYLOAD_MAX_BYTES => len,
        _ => {
            out.truncate(mark.start);
            return Err(FrameError::PayloadTooLarge(payload_bytes as u64));
        }
    };
    if mark.mode == OutputMode::Jsonl {
        out.push(b'\n');
        return Ok(());
    }
    let crc = crc32c::crc32c(&out[payload_start..]);
    let length_and_crc = &mut out[payload_start - HEADER_LENGTH_AND_CRC_BYTES..payload_start];
    length_and_crc[..4].copy_from_slice(&payload_len.to_be_bytes());
    length_and_crc[4..].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

/// Appends `payload` to `out` as one frame (or line) in `mode`.
pub fn encode_frame(out: &mut Vec<u8>, mode: OutputMode, payload: &[u8]) -> Result<(), FrameError> {
    let mark = begin_frame(out, mode);
    out.extend_from_slice(payload);
    end_frame(out, mark)
}

/// The client's side of this framing, for tests, benches and tools.
#[path = "frame_client.rs"]
pub mod client;

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
