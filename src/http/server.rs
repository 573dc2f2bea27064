//! Accepting connections and shutting down gracefully.
//!
//! The listener is passed in (so tests can bind port 0) along with a
//! cancellation token. On cancellation the listener is dropped, open
//! connections finish their in-flight requests — each gets its true answer —
//! and `serve` returns once they are done or the grace period is over.
//!
//! Slow or numerous clients cannot exhaust the server: a client has
//! [`Limits::header_timeout`] to send its headers (then hyper closes the
//! connection) and the request timeout to send its body (then 408, see
//! [`super::routes`]); at most [`Limits::max_connections`] connections are
//! served at once. Over the cap the server stops accepting until one closes,
//! so further clients wait in the kernel's listen backlog instead of costing
//! memory and tasks here.

use std::{convert::Infallible, sync::Arc, time::Duration};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::routes::{AppState, handle, handle_admin};

/// Which routes a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surface {
    /// Webhooks and probes (and `/metrics`, `/status` unless `ADMIN_ADDR`
    /// is set).
    Public,
    /// `ADMIN_ADDR`: probes, `/metrics` and `/status` only.
    Admin,
}

/// Connection-level limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// How long a client may take to send its request headers.
    pub header_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

/// Serves until `shutdown` is cancelled, then drains connections for at most
/// `grace`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    limits: Limits,
    shutdown: CancellationToken,
    grace: Duration,
    surface: Surface,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        // A permit first, then a connection: at the cap nothing is accepted.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = Arc::clone(&permits).acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // Out of file descriptors and the like: pause, go on.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        let svc = service_fn(move |req| {
            let state = Arc::clone(&state);
            async move {
                Ok::<_, Infallible>(match surface {
                    Surface::Public => handle(state, req).await,
                    Surface::Admin => handle_admin(state, req).await,
                })
            }
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    info!("HTTP server draining connections");
    tokio::select! {
        _ = graceful.shutdown() => info!("all connections closed"),
        _ = tokio::time::sleep(grace) => warn!("grace period over with connections still open"),
    }
}
