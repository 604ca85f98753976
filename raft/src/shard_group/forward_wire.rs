//! How forwarded operations travel between nodes (`forward.rs`): instance
//! commands, errors and batch votes in a serializable form, converted
//! both ways.
//!
//! A JSON value a client sent (a context, a payload, a machine's
//! definition) travels inside this JSON as its text, a string
//! ([`value_as_text`]): nested inside the message, the deepest value a
//! client may send (125 levels inside its request's 127) would pass the
//! 127 levels serde_json parses, and the whole call would be refused —
//! every client in it told "outcome unknown", at every retry
//! (tests/cluster/forwarding.rs). Parsed on its own, it fits.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use shards::error::{EngineError, ErrorCode};
use shards::shard::{ApplyEvent, BatchVote, Command, CreateInstance, DeleteInstance};

/// An instance command as it travels.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum WireCommand {
    Create {
        instance_id: String,
        machine: String,
        version: u32,
        #[serde(with = "value_as_text")]
        initial_ctx: Value,
        idempotency_key: Option<String>,
    },
    Apply {
        instance_id: String,
        event: String,
        #[serde(with = "value_as_text")]
        payload: Value,
        expected_state: Option<String>,
        expected_wal_offset: Option<u64>,
        event_id: Option<String>,
        idempotency_key: Option<String>,
    },
    Delete {
        instance_id: String,
        idempotency_key: Option<String>,
    },
    Get {
        instance_id: String,
    },
}

impl From<Command> for WireCommand {
    fn from(cmd: Command) -> Self {
        match cmd {
            Command::Create(c) => WireCommand::Create {
                instance_id: c.instance_id,
                machine: c.machine,
                version: c.version,
                initial_ctx: c.initial_ctx,
                idempotency_key: c.idempotency_key,
            },
            Command::Apply(c) => WireCommand::Apply {
                instance_id: c.instance_id,
                event: c.event,
                payload: c.payload,
                expected_state: c.expected_state,
                expected_wal_offset: c.expected_wal_offset,
                event_id: c.event_id,
                idempotency_key: c.idempotency_key,
            },
            Command::Delete(c) => WireCommand::Delete {
                instance_id: c.instance_id,
                idempotency_key: c.idempotency_key,
            },
            Command::Get { instance_id } => WireCommand::Get { instance_id },
        }
    }
}

impl From<WireCommand> for Command {
    fn from(cmd: WireCommand) -> Self {
        match cmd {
            WireCommand::Create {
                instance_id,
                machine,
                version,
                initial_ctx,
                idempotency_key,
            } => Command::Create(CreateInstance {
                instance_id,
                machine,
                version,
                initial_ctx,
                idempotency_key,
            }),
            WireCommand::Apply {
                instance_id,
                event,
                payload,
                expected_state,
                expected_wal_offset,
                event_id,
                idempotency_key,
            } => Command::Apply(ApplyEvent {
                instance_id,
                event,
                payload,
                expected_state,
                expected_wal_offset,
                event_id,
                idempotency_key,
            }),
            WireCommand::Delete {
                instance_id,
                idempotency_key,
            } => Command::Delete(DeleteInstance {
                instance_id,
                idempotency_key,
            }),
            WireCommand::Get { instance_id } => Command::Get { instance_id },
        }
    }
}

/// An error as it travels (the 19 RCP codes by name).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct WireError {
    code: String,
    message: String,
    details: Option<serde_json::Map<String, Value>>,
}

impl From<EngineError> for WireError {
    fn from(e: EngineError) -> Self {
        WireError {
            code: e.code.as_str().to_string(),
            message: e.message,
            details: e.details.map(|d| *d),
        }
    }
}

impl WireError {
    pub(super) fn into_engine(self) -> EngineError {
        let code = ErrorCode::from_name(&self.code).unwrap_or(ErrorCode::InternalError);
        let err = EngineError::new(code, self.message);
        match self.details {
            Some(d) => err.with_details(d),
            None => err,
        }
    }
}

pub(super) type Wire<T> = Result<T, WireError>;

/// A batch part's vote as it travels (results as JSON text).
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum WireVote {
    Yes(Vec<String>),
    No(usize, WireError),
    Refused(WireError),
}

impl From<BatchVote> for WireVote {
    fn from(vote: BatchVote) -> Self {
        match vote {
            BatchVote::Yes(results) => WireVote::Yes(
                results
                    .into_iter()
                    .map(|r| String::from_utf8_lossy(&r).into_owned())
                    .collect(),
            ),
            BatchVote::No(i, e) => WireVote::No(i, e.into()),
            BatchVote::Refused(e) => WireVote::Refused(e.into()),
        }
    }
}

impl From<WireVote> for BatchVote {
    fn from(vote: WireVote) -> Self {
        match vote {
            WireVote::Yes(results) => {
                BatchVote::Yes(results.into_iter().map(String::into_bytes).collect())
            }
            WireVote::No(i, e) => BatchVote::No(i, e.into_engine()),
            WireVote::Refused(e) => BatchVote::Refused(e.into_engine()),
        }
    }
}

/// A JSON value serialized as its text, a string (the module above says
/// why); `#[serde(with = "value_as_text")]`.
pub(super) mod value_as_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_json::Value;

    pub fn serialize<S: Serializer>(value: &Value, out: S) -> Result<S::Ok, S::Error> {
        out.serialize_str(&value.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(input: D) -> Result<Value, D::Error> {
        let text = String::deserialize(input)?;
        serde_json::from_str(&text).map_err(serde::de::Error::custom)
    }
}
