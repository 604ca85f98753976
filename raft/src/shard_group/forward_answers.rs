//! The leader's answers to a forwarded batch (`forward.rs`), as they
//! travel back: one body for the whole batch, one answer per operation in
//! the batch's order.
//!
//! ```text
//! count u32
//! per answer: kind u8 | length u32 | bytes
//!   kind 0  an operation's result: the JSON text the shard answered,
//!           as it is (what the follower sends its client)
//!   kind 1  anything else: the JSON of `Result<Answer, ErrorBody>`
//! ```
//!
//! Integers are little-endian. Results used to travel inside a JSON array
//! as JSON strings: the leader escaped every quote of each result and the
//! follower parsed, unescaped and UTF-8-checked it back (measured ≈ 4 % of
//! each side's CPU when a follower drives applies at 16×16). Now a result's
//! bytes are copied, nothing more.

use super::forward::Answer;
use crate::net::wire::{from_json, to_json, ErrorBody, ErrorCode as WireCode};

const KIND_RESULT: u8 = 0;
const KIND_JSON: u8 = 1;
/// Bytes before each answer's own: kind and length.
const ANSWER_HEAD_BYTES: usize = 5;

/// A batch's answers in at most about `bytes_max` bytes: an answer that
/// would pass it is replaced by an error, and the follower tells that
/// operation's client its outcome is unknown.
pub(super) fn encode_answers(answers: Vec<Result<Answer, ErrorBody>>, bytes_max: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + answers.len() * 64);
    out.extend_from_slice(&(answers.len() as u32).to_le_bytes());
    for answer in answers {
        let (mut kind, mut bytes) = match answer {
            Ok(Answer::Exec(Ok(text))) => (KIND_RESULT, text),
            other => (KIND_JSON, to_json(&other)),
        };
        if out.len() + ANSWER_HEAD_BYTES + bytes.len() > bytes_max {
            let too_large: Result<Answer, ErrorBody> = Err(ErrorBody::new(
                WireCode::BadRequest,
                "the answer did not fit the batch's frame",
            ));
            (kind, bytes) = (KIND_JSON, to_json(&too_large));
        }
        out.push(kind);
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

/// The answers `body` holds, or why it does not hold answers.
pub(super) fn decode_answers(body: &[u8]) -> Result<Vec<Result<Answer, ErrorBody>>, String> {
    let mut at = 0;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let end = at + n;
        let slice = body
            .get(at..end)
            .ok_or_else(|| format!("answers cut at byte {at} of {}", body.len()))?;
        at = end;
        Ok(slice)
    };
    let count = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
    // Each answer takes its head at least: a count the body cannot hold is
    // refused before anything is reserved for it.
    if count > body.len() / ANSWER_HEAD_BYTES {
        return Err(format!("{count} answers in {} bytes", body.len()));
    }
    let mut answers = Vec::with_capacity(count);
    for _ in 0..count {
        let kind = take(1)?[0];
        let len = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
        let bytes = take(len)?;
        answers.push(match kind {
            KIND_RESULT => Ok(Answer::Exec(Ok(bytes.to_vec()))),
            KIND_JSON => from_json(bytes).map_err(|e| format!("an answer: {e}"))?,
            other => return Err(format!("answer kind {other}")),
        });
    }
    if at != body.len() {
        return Err(format!("{} bytes after the answers", body.len() - at));
    }
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(bytes: usize) -> Result<Answer, ErrorBody> {
        Ok(Answer::Exec(Ok(vec![b'"'; bytes])))
    }

    fn result_len(answer: &Result<Answer, ErrorBody>) -> Option<usize> {
        match answer {
            Ok(Answer::Exec(Ok(text))) => Some(text.len()),
            _ => None,
        }
    }

    #[test]
    fn answers_past_the_byte_limit_become_errors_and_the_batch_keeps_its_length() {
        let encoded = encode_answers(vec![result(10), result(500), result(10)], 200);
        assert!(encoded.len() <= 200, "{} bytes", encoded.len());
        let back = decode_answers(&encoded).expect("answers");
        assert_eq!(back.len(), 3);
        assert_eq!(result_len(&back[0]), Some(10));
        assert!(matches!(&back[1], Err(e) if e.code == WireCode::BadRequest));
        assert_eq!(result_len(&back[2]), Some(10));
    }

    /// A batch as large as a follower sends, whose first answer takes the
    /// whole budget: the errors replacing the others fit an answer frame.
    #[test]
    fn a_full_batch_past_its_budget_fits_an_answer_frame() {
        use super::super::forward::FORWARD_ANSWERS_BYTES_MAX;
        use super::super::forward_batch::FORWARD_BATCH_OPS_MAX;
        use crate::net::frame::ANSWER_FRAME_BODY_MAX_BYTES;
        let mut answers = vec![result(FORWARD_ANSWERS_BYTES_MAX - 16)];
        answers.extend((1..FORWARD_BATCH_OPS_MAX).map(|_| result(1000)));
        let encoded = encode_answers(answers, FORWARD_ANSWERS_BYTES_MAX);
        assert!(encoded.len() <= ANSWER_FRAME_BODY_MAX_BYTES as usize);
        let back = decode_answers(&encoded).expect("answers");
        assert_eq!(result_len(&back[0]), Some(FORWARD_ANSWERS_BYTES_MAX - 16));
        assert!(back[1..].iter().all(|a| a.is_err()));
    }

    #[test]
    fn results_travel_as_they_are_and_other_answers_as_json() {
        let text = br#"{"state":"b","ctx":{"note":"a \"quoted\" word"}}"#.to_vec();
        let encoded = encode_answers(
            vec![
                Ok(Answer::Exec(Ok(text.clone()))),
                Ok(Answer::Queued),
                Err(ErrorBody::new(WireCode::GroupStopped, "stopped")),
            ],
            1 << 10,
        );
        // The result's bytes are in the body unescaped.
        assert!(encoded.windows(text.len()).any(|w| w == text));
        let back = decode_answers(&encoded).expect("answers");
        assert!(matches!(&back[0], Ok(Answer::Exec(Ok(t))) if *t == text));
        assert!(matches!(&back[1], Ok(Answer::Queued)));
        assert!(matches!(&back[2], Err(e) if e.code == WireCode::GroupStopped));
    }

    #[test]
    fn a_damaged_body_is_an_error_not_a_panic() {
        let encoded = encode_answers(vec![result(3), Ok(Answer::Queued)], 1 << 10);
        for len in 0..encoded.len() {
            assert!(decode_answers(&encoded[..len]).is_err(), "cut at {len}");
        }
        let mut longer = encoded.clone();
        longer.push(0);
        assert!(decode_answers(&longer).is_err());
        let mut kind = encoded.clone();
        kind[4] = 9;
        assert!(decode_answers(&kind).is_err());
        let mut count = encoded;
        count[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_answers(&count).is_err());
    }
}
