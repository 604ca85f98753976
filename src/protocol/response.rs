//! Response envelopes (docs/PROTOCOL.md §2.2–2.3): keys in the fixed order `type`, `id`,
//! `status`, then `result` or `error`; the result object arrives already
//! encoded (shards encode their own results).

use shards::json::canonical;
use shards::EngineError;

use super::frame::{begin_frame, end_frame, FrameError, OutputMode};

/// Append one framed response to `out`.
pub fn write_response(
    out: &mut Vec<u8>,
    mode: OutputMode,
    id_json: &[u8],
    body: &Result<Vec<u8>, EngineError>,
) -> Result<(), FrameError> {
    let mark = begin_frame(out, mode);
    out.extend_from_slice(br#"{"type":"response","id":"#);
    out.extend_from_slice(id_json);
    match body {
        Ok(result) => {
            out.extend_from_slice(br#","status":"ok","result":"#);
            out.extend_from_slice(result);
        }
        Err(e) => write_error_tail(out, e),
    }
    out.push(b'}');
    end_frame(out, mark)
}

fn write_error_tail(out: &mut Vec<u8>, e: &EngineError) {
    out.extend_from_slice(br#","status":"error","error":"#);
    write_error_object(out, e);
}

/// An error object (`{"code":…,"message":…,"retryable":…}`, plus `details`
/// when there are any): the `error` of a response, and of a BATCH result
/// entry.
pub fn write_error_object(out: &mut Vec<u8>, e: &EngineError) {
    out.extend_from_slice(br#"{"code":"#);
    canonical::write_str(out, e.code.as_str());
    out.extend_from_slice(br#","message":"#);
    canonical::write_str(out, &e.message);
    out.extend_from_slice(br#","retryable":"#);
    out.extend_from_slice(if e.code.retryable() {
        b"true"
    } else {
        b"false"
    });
    if let Some(details) = &e.details {
        out.extend_from_slice(br#","details":"#);
        canonical::write_value(out, &serde_json::Value::Object((**details).clone()));
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use shards::ErrorCode;

    #[test]
    fn ok_and_error_envelopes() {
        let mut out = Vec::new();
        write_response(
            &mut out,
            OutputMode::Jsonl,
            br#""1""#,
            &Ok(br#"{"pong":true}"#.to_vec()),
        )
        .unwrap();
        assert_eq!(
            out,
            b"{\"type\":\"response\",\"id\":\"1\",\"status\":\"ok\",\"result\":{\"pong\":true}}\n"
        );
        out.clear();
        let e = EngineError::instance_not_found("zz");
        write_response(&mut out, OutputMode::Jsonl, br#""2""#, &Err(e)).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"type\":\"response\",\"id\":\"2\",\"status\":\"error\",\"error\":{\"code\":\"INSTANCE_NOT_FOUND\",\"message\":\"core error: instance not found: zz\",\"retryable\":false}}\n"
        );
        assert!(ErrorCode::WalIoError.retryable());
    }

    #[test]
    fn ping_response_matches_appendix_a() {
        let mut out = Vec::new();
        write_response(
            &mut out,
            OutputMode::Rcpx,
            br#""1""#,
            &Ok(br#"{"pong":true}"#.to_vec()),
        )
        .unwrap();
        assert_eq!(
            &out[..18],
            &[0x52, 0x43, 0x50, 0x58, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0x41, 0x4b, 0x7b, 0x43, 0x2f]
        );
    }
}
