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

/// Descriptors kept for everything but connections: log segments, snapshots, the key store,
/// the runtime's own.
const FDS_RESERVED: u64 = 256;

/// Raises the soft open-file limit to the hard one (every connection is a descriptor, and
/// services often start with a soft limit of 1,024) and returns the connection limit that
/// fits in it with [`FDS_RESERVED`] to spare: `requested`, or less with a warning. Beyond the
/// limit connections wait in the backlog; beyond the descriptors, accepting would fail.
pub fn fit_max_connections(requested: usize) -> usize {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => {
            let fits = connections_within(requested, soft);
            if fits < requested {
                tracing::warn!(
                    requested,
                    open_files = soft,
                    max_connections = fits,
                    "--max-connections is more than the open-file limit allows; lowered"
                );
            }
            fits
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not read or raise the open-file limit");
            requested
        }
    }
}

/// The connections that fit in `open_files` descriptors with [`FDS_RESERVED`] to spare (at
/// least one).
fn connections_within(requested: usize, open_files: u64) -> usize {
    let room = usize::try_from(open_files.saturating_sub(FDS_RESERVED)).unwrap_or(usize::MAX);
    requested.min(room).max(1)
}

/// How long the loop waits after an accept error that is not about one connection (too many
/// open files, out of memory) before it tries again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` until `stop` completes, then waits for the open connections to
/// finish their requests (the caller bounds that wait). `on_open(+1/-1)` follows the number
/// of open connections (a metric).
pub async fn serve_connections(
    listener: TcpListener,
    app: super::App,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_limit_leaves_descriptors_for_the_rest() {
        assert_eq!(connections_within(4_096, 1_024), 768);
        assert_eq!(connections_within(4_096, 1_048_576), 4_096);
        assert_eq!(connections_within(100, 356), 100);
        assert_eq!(connections_within(100, 300), 44);
        assert_eq!(connections_within(100, 10), 1, "never zero");
        assert_eq!(
            connections_within(usize::MAX, u64::MAX) as u64,
            u64::MAX - FDS_RESERVED
        );
    }

    #[test]
    fn raising_the_open_file_limit_keeps_what_was_asked_when_it_fits() {
        let (soft_before, _) = rlimit::Resource::NOFILE.get().unwrap();
        let fits = fit_max_connections(16);
        let (soft_after, _) = rlimit::Resource::NOFILE.get().unwrap();
        assert!(soft_after >= soft_before);
        assert_eq!(fits, connections_within(16, soft_after));
    }
}
