//! The accept loop of `depot serve`: HTTP/1.1 connections served by hyper with the router as
//! their service, under two limits that `axum::serve` does not set:
//!
//! - **At most `max_connections` open at once.** The loop takes a permit before it accepts,
//!   so a connection beyond the limit waits in the kernel's listen backlog (and is refused by
//!   the kernel when that is full) instead of taking a file descriptor and memory.
//! - **A request's headers must arrive within `header_timeout`**, counted from the moment the
//!   connection is ready for a request: a client that sends its headers byte by byte, or opens
//!   a connection and sends nothing (slowloris), is disconnected, and so is a keep-alive
//!   connection idle that long. A response being streamed (`/v1/events/stream`) is not a
//!   wait for headers and is never cut by it.
//!
//! On shutdown the loop stops accepting, closes idle connections and lets the requests in
//! flight finish (hyper's graceful shutdown).

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// The limits of the accept loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

/// How long the loop waits after an accept error that is not about one connection (too many
/// open files, out of memory) before it tries again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` until `stop` completes, then waits for the open connections to
/// finish their requests (the caller bounds that wait). `on_open(+1/-1)` follows the number
/// of open connections (a metric).
pub async fn serve_connections(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    on_open: impl Fn(i64) + Send + Sync + 'static,
    stop: impl Future<Output = ()>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let on_open = Arc::new(on_open);
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut stop => break,
        };
        let (mut stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed; trying again shortly");
                    tokio::select! {
                        () = tokio::time::sleep(ACCEPT_RETRY) => continue,
                        () = &mut stop => break,
                    }
                }
            },
            () = &mut stop => break,
        };
        super::serve::accepted(&mut stream);
        let service = TowerToHyperService::new(app.clone().map_request(
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(remote));
                req.map(axum::body::Body::new)
            },
        ));
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        let on_open = on_open.clone();
        on_open(1);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %remote, "connection ended with an error");
            }
            on_open(-1);
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Errors about one connection (it went away before it was accepted): accept the next.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}
