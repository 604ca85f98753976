//! The accept loop: one task per connection on the acceptor's executor,
//! at most `max_connections` at once (a connection over the limit is closed
//! at once, as in rstmdb 0.3).

use std::cell::Cell;
use std::rc::Rc;

use glommio::net::TcpListener;

use super::connection;
use super::context::ServerCtx;

pub async fn accept_loop(ctx: Rc<ServerCtx>, listener: TcpListener) {
    let open = Rc::new(Cell::new(0usize));
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if open.get() >= ctx.limits.max_connections {
            tracing::warn!(
                "refusing connection: {} connections open (max_connections)",
                open.get()
            );
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        open.set(open.get() + 1);
        let ctx = ctx.clone();
        let open = open.clone();
        glommio::spawn_local(async move {
            connection::serve(ctx, stream).await;
            open.set(open.get() - 1);
        })
        .detach();
    }
}
