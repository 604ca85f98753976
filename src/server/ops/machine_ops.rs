//! PUT_MACHINE, GET_MACHINE, LIST_MACHINES (docs/PROTOCOL.md §4.2–4.4), served by the
//! catalog.

use serde_json::Value;
use shards::EngineResult;

use crate::protocol::params::Params;
use crate::server::context::ServerCtx;

pub async fn put_machine(ctx: &ServerCtx, params: &Value) -> EngineResult<Vec<u8>> {
    let p = Params::strict(params, "PutMachineParams")?;
    let machine = p.str("machine")?;
    let version = p.u32("version")?;
    let definition = p
        .get("definition")
        .ok_or_else(|| shards::EngineError::bad_request("missing field `definition`"))?;
    ctx.catalog
        .put(&ctx.router, machine, version, definition)
        .await
}

/// GET_MACHINE after the catalog learned what the cluster installed (on a
/// standalone node, the same as `get_machine`).
pub async fn get_machine_fresh(ctx: &ServerCtx, params: &Value) -> EngineResult<Vec<u8>> {
    ctx.catalog.refresh(&ctx.router).await?;
    get_machine(ctx, params)
}

/// LIST_MACHINES after the catalog learned what the cluster installed.
pub async fn list_machines_fresh(ctx: &ServerCtx) -> EngineResult<Vec<u8>> {
    ctx.catalog.refresh(&ctx.router).await?;
    list_machines(ctx)
}

/// GET_MACHINE from what the catalog knows (inside a batch: no wait).
pub fn get_machine(ctx: &ServerCtx, params: &Value) -> EngineResult<Vec<u8>> {
    let p = Params::strict(params, "GetMachineParams")?;
    let machine = p.str("machine")?;
    let version = p.u32("version")?;
    ctx.catalog.get(machine, version)
}

pub fn list_machines(ctx: &ServerCtx) -> EngineResult<Vec<u8>> {
    Ok(ctx.catalog.list())
}
