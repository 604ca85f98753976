//! Errors over HTTP: the one table from RCP error code to HTTP status, and
//! the JSON error body `{"error":{"code","message","retryable"[,"details"]}}`
//! — the RCP error object (docs/PROTOCOL.md §2.3) wrapped once, so a client
//! reads the same code and message over both protocols.
//!
//! Errors of the HTTP layer itself (no such route, wrong method, a body too
//! large, a body that is not JSON) carry their own status and an RCP code
//! that says what went wrong (`NOT_FOUND`, `BAD_REQUEST`).

use hyper::header::HeaderName;
use hyper::StatusCode;
use shards::{EngineError, ErrorCode};

use crate::protocol::response::write_error_object;

/// The HTTP status for an RCP error code. Exhaustive on purpose: a new
/// code does not compile until it has a status here.
pub fn status_for(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest | ErrorCode::UnsupportedProtocol => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized | ErrorCode::AuthFailed => StatusCode::UNAUTHORIZED,
        ErrorCode::NotFound | ErrorCode::MachineNotFound | ErrorCode::InstanceNotFound => {
            StatusCode::NOT_FOUND
        }
        ErrorCode::MachineVersionExists
        | ErrorCode::MachineVersionLimitExceeded
        | ErrorCode::InstanceExists
        | ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::InvalidTransition | ErrorCode::GuardFailed => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
        // The log cannot be written (disk full, I/O error): retry later.
        ErrorCode::WalIoError | ErrorCode::ReadOnlyMode | ErrorCode::ReplicationError => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ErrorCode::ReplicationTimeout => StatusCode::GATEWAY_TIMEOUT,
    }
}

/// An error answer: the status and the RCP error.
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub error: EngineError,
    /// A header the answer needs (`Allow` on 405, `WWW-Authenticate` on 401).
    pub header: Option<(HeaderName, String)>,
}

impl HttpError {
    /// An RCP error, with the status of the table.
    pub fn rcp(error: EngineError) -> Self {
        HttpError {
            status: status_for(error.code),
            error,
            header: None,
        }
    }

    /// An error of the HTTP layer with its own status.
    pub fn http(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        HttpError {
            status,
            error: EngineError::new(code, message),
            header: None,
        }
    }

    pub fn bad_request(detail: impl std::fmt::Display) -> Self {
        HttpError::rcp(EngineError::bad_request(detail))
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.error.message.len());
        out.extend_from_slice(br#"{"error":"#);
        write_error_object(&mut out, &self.error);
        out.push(b'}');
        out
    }
}

impl From<EngineError> for HttpError {
    fn from(error: EngineError) -> Self {
        HttpError::rcp(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_gives_the_statuses_the_api_documents() {
        let cases = [
            (ErrorCode::InstanceNotFound, 404),
            (ErrorCode::MachineNotFound, 404),
            (ErrorCode::NotFound, 404),
            (ErrorCode::Conflict, 409),
            (ErrorCode::InstanceExists, 409),
            (ErrorCode::MachineVersionExists, 409),
            (ErrorCode::MachineVersionLimitExceeded, 409),
            (ErrorCode::InvalidTransition, 422),
            (ErrorCode::GuardFailed, 422),
            (ErrorCode::BadRequest, 400),
            (ErrorCode::UnsupportedProtocol, 400),
            (ErrorCode::Unauthorized, 401),
            (ErrorCode::AuthFailed, 401),
            (ErrorCode::RateLimited, 429),
            (ErrorCode::WalIoError, 503),
            (ErrorCode::ReadOnlyMode, 503),
            (ErrorCode::ReplicationError, 503),
            (ErrorCode::ReplicationTimeout, 504),
            (ErrorCode::InternalError, 500),
        ];
        for (code, status) in cases {
            assert_eq!(status_for(code).as_u16(), status, "{}", code.as_str());
        }
    }

    #[test]
    fn the_body_wraps_the_rcp_error_object() {
        let e = HttpError::rcp(EngineError::instance_not_found("a\"b"));
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        let body: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": {"code": "INSTANCE_NOT_FOUND",
                "message": "core error: instance not found: a\"b", "retryable": false}})
        );
    }
}
