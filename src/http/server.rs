//! The HTTP/1.1 server loop: every connection bounded in time and in number, and a
//! shutdown that ends within a known drain time whatever clients do.
//!
//! - A client has `HEADER_READ_TIMEOUT_MS` to send a request's headers, counted from
//!   when the connection is ready for the next request: this also closes idle keep-alive
//!   connections and ones that stopped half-way through their headers.
//! - A request (body included) has 30 s to be answered (`router`'s timeout layer).
//! - At most `MAX_CONNECTIONS` are open at once. When the limit is reached a warning is
//!   logged and new connections wait in the listen backlog until one closes.
//! - On shutdown the listener closes, each connection finishes the request it is
//!   serving and closes, and after `SHUTDOWN_DRAIN_MS` the ones still open are cut.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::ServerSettings;
use crate::metrics::Metrics;

/// Serve `app` on `listener` until `shutdown` is cancelled, then drain.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    settings: ServerSettings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .keep_alive(true);
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut at_limit = false;
    loop {
        while connections.try_join_next().is_some() {}
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                at_limit = false;
                permit
            }
            Err(_) => {
                if !at_limit {
                    warn!(
                        max_connections = settings.max_connections,
                        "connection limit reached: new connections wait until one closes \
                         (raise MAX_CONNECTIONS, or look for clients holding connections open)"
                    );
                    at_limit = true;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                }
            }
        };
        let (stream, _peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was
                    // accepted: log, pause briefly so an fd can free up, go on.
                    warn!(error.message = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        metrics.http_connections.inc();
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        let metrics = metrics.clone();
        connections.spawn(async move {
            if let Err(e) = connection.await {
                debug!(error.message = %e, "connection ended with an error");
            }
            metrics.http_connections.dec();
            drop(permit);
        });
    }
    drop(listener);
    let open = graceful.count();
    info!(
        open,
        drain_ms = settings.shutdown_drain.as_millis() as u64,
        "draining connections"
    );
    if tokio::time::timeout(settings.shutdown_drain, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            still_open = connections.len(),
            "drain time elapsed: closing the connections still open"
        );
    }
    connections.shutdown().await;
    Ok(())
}
