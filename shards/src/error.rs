//! The RCP error codes and the one error type every engine operation returns.
//!
//! Codes and their `retryable` flags are exactly the 19 of rstmdb 0.3 (docs/PROTOCOL.md
//! §14): the official clients silently break on any code outside that set, so
//! nothing else may ever be emitted. The mapping from failure to code lives
//! here and nowhere else.

use std::fmt;

/// One of the 19 RCP error codes of rstmdb 0.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    UnsupportedProtocol,
    BadRequest,
    Unauthorized,
    AuthFailed,
    NotFound,
    MachineNotFound,
    MachineVersionExists,
    MachineVersionLimitExceeded,
    InstanceNotFound,
    InstanceExists,
    InvalidTransition,
    GuardFailed,
    Conflict,
    WalIoError,
    InternalError,
    RateLimited,
    ReadOnlyMode,
    ReplicationTimeout,
    ReplicationError,
}

/// Every code, for looking one up by name.
const ALL_CODES: [ErrorCode; 19] = [
    ErrorCode::UnsupportedProtocol,
    ErrorCode::BadRequest,
    ErrorCode::Unauthorized,
    ErrorCode::AuthFailed,
    ErrorCode::NotFound,
    ErrorCode::MachineNotFound,
    ErrorCode::MachineVersionExists,
    ErrorCode::MachineVersionLimitExceeded,
    ErrorCode::InstanceNotFound,
    ErrorCode::InstanceExists,
    ErrorCode::InvalidTransition,
    ErrorCode::GuardFailed,
    ErrorCode::Conflict,
    ErrorCode::WalIoError,
    ErrorCode::InternalError,
    ErrorCode::RateLimited,
    ErrorCode::ReadOnlyMode,
    ErrorCode::ReplicationTimeout,
    ErrorCode::ReplicationError,
];

impl ErrorCode {
    /// The wire name (`"INSTANCE_NOT_FOUND"`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::UnsupportedProtocol => "UNSUPPORTED_PROTOCOL",
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::AuthFailed => "AUTH_FAILED",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::MachineNotFound => "MACHINE_NOT_FOUND",
            ErrorCode::MachineVersionExists => "MACHINE_VERSION_EXISTS",
            ErrorCode::MachineVersionLimitExceeded => "MACHINE_VERSION_LIMIT_EXCEEDED",
            ErrorCode::InstanceNotFound => "INSTANCE_NOT_FOUND",
            ErrorCode::InstanceExists => "INSTANCE_EXISTS",
            ErrorCode::InvalidTransition => "INVALID_TRANSITION",
            ErrorCode::GuardFailed => "GUARD_FAILED",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::WalIoError => "WAL_IO_ERROR",
            ErrorCode::InternalError => "INTERNAL_ERROR",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::ReadOnlyMode => "READ_ONLY_MODE",
            ErrorCode::ReplicationTimeout => "REPLICATION_TIMEOUT",
            ErrorCode::ReplicationError => "REPLICATION_ERROR",
        }
    }

    /// The code of a wire name (`"INSTANCE_NOT_FOUND"`).
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        ALL_CODES.iter().copied().find(|c| c.as_str() == name)
    }

    /// Derived solely from the code, as in 0.3.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::WalIoError
                | ErrorCode::InternalError
                | ErrorCode::RateLimited
                | ErrorCode::ReplicationTimeout
        )
    }
}

/// A failed operation: a code and a human-readable message (PROTOCOL.md §14 templates).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineError {
    pub code: ErrorCode,
    pub message: String,
    /// Extra facts for the client (`error.details`, a JSON object); none in
    /// rstmdb 0.3, harmless to its clients.
    pub details: Option<Box<serde_json::Map<String, serde_json::Value>>>,
}

impl EngineError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        EngineError {
            code,
            message: message.into(),
            details: None,
        }
    }

    /// `BAD_REQUEST` with the `invalid request: ` prefix.
    pub fn bad_request(detail: impl fmt::Display) -> Self {
        Self::new(ErrorCode::BadRequest, format!("invalid request: {detail}"))
    }

    /// An engine error with the `core error: ` prefix.
    pub fn core(code: ErrorCode, detail: impl fmt::Display) -> Self {
        Self::new(code, format!("core error: {detail}"))
    }

    pub fn instance_not_found(id: &str) -> Self {
        Self::core(
            ErrorCode::InstanceNotFound,
            format_args!("instance not found: {id}"),
        )
    }

    pub fn machine_not_found(machine: &str, version: u32) -> Self {
        Self::core(
            ErrorCode::MachineNotFound,
            format_args!("machine version not found: {machine} v{version}"),
        )
    }

    /// A record of `kind` whose payload came to `bytes`, more than such a
    /// record holds: the request is refused whole (`BAD_REQUEST`).
    pub fn record_too_large(kind: crate::wal::record::RecordKind, bytes: u32) -> Self {
        Self::bad_request(format_args!(
            "record too large: {bytes} bytes (the log's limit is {} bytes per record)",
            kind.payload_max_bytes()
        ))
    }

    pub fn wal_io(detail: impl fmt::Display) -> Self {
        Self::new(ErrorCode::WalIoError, format!("WAL I/O error: {detail}"))
    }

    pub fn internal(detail: impl fmt::Display) -> Self {
        Self::new(
            ErrorCode::InternalError,
            format!("internal error: {detail}"),
        )
    }

    pub fn with_details(mut self, details: serde_json::Map<String, serde_json::Value>) -> Self {
        self.details = Some(Box::new(details));
        self
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for EngineError {}

pub type EngineResult<T> = Result<T, EngineError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_flags_match_0_3() {
        assert!(ErrorCode::WalIoError.retryable());
        assert!(ErrorCode::InternalError.retryable());
        assert!(!ErrorCode::BadRequest.retryable());
        assert!(!ErrorCode::GuardFailed.retryable());
    }

    #[test]
    fn every_code_is_found_by_its_name_and_nothing_else() {
        for code in ALL_CODES {
            assert_eq!(ErrorCode::from_name(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::from_name("SYNC_TIMEOUT"), None);
        assert_eq!(ErrorCode::from_name("bad_request"), None);
    }

    #[test]
    fn messages_use_spec_prefixes() {
        assert_eq!(
            EngineError::instance_not_found("o-1").message,
            "core error: instance not found: o-1"
        );
        assert_eq!(
            EngineError::machine_not_found("order", 2).message,
            "core error: machine version not found: order v2"
        );
    }
}
