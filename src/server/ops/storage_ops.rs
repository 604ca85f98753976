//! SNAPSHOT_INSTANCE, WAL_READ, WAL_STATS, COMPACT, FLUSH_ALL (spec §4.11–4.14,
//! §11).

use serde_json::Value;
use shards::{EngineError, EngineResult};

use crate::protocol::op::Op;
use crate::server::context::ServerCtx;

pub async fn handle(_ctx: &ServerCtx, op: Op, _params: &Value) -> EngineResult<Vec<u8>> {
    Err(EngineError::bad_request(format_args!(
        "{} is not supported yet",
        op.name()
    )))
}
