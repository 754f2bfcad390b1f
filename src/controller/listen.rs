//! The API's accept loop: HTTP/1.1 connections served by hyper, with a header read timeout
//! and a cap on open connections, and a graceful stop.
//!
//! Invariants: every connection is a task in one `JoinSet` owned by the loop, so dropping the
//! loop's future (as `Server::stop` does after its grace period) closes every connection; at
//! most `max_connections` are open at once (beyond, new connections wait in the kernel's listen
//! backlog until one closes); a client that has not sent a request's whole head within
//! `header_timeout` of the server starting to read it — at accept, and after each answer on a
//! kept-alive connection — is disconnected, so neither a slow client nor an idle kept-alive
//! connection holds a place for long.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::RequestBodyTimeout;

/// Default longest time a client may take to send a request's head.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Default cap on connections open at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Default longest pause in a request body.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the loop waits after an accept error that is not one connection's (like running
/// out of file descriptors), so that it does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How the server treats its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Longest a client may take to send a request's head (request line and headers), counted
    /// from when the server starts reading it: at accept, and after each answer on a
    /// kept-alive connection. A slower client, or a connection idle that long, is closed.
    pub header_timeout: Duration,
    /// Connections open at once; more wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Longest a request body may pause while the server waits for its next bytes; a client
    /// that stops sending its body for that long gets `408 body_timeout` and its connection is
    /// closed. A server that stops reading (an upload waiting on storage) does not count.
    pub body_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            body_timeout: DEFAULT_BODY_TIMEOUT,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting, lets each
/// connection finish the request it is answering (idle ones close at once) and returns when
/// every connection is closed.
///
/// # Errors
/// None today: accept errors are logged and retried; the `Result` keeps the signature of
/// `axum::serve`, which this replaces.
///
/// # Cancel safety
/// Dropping the future closes every connection at once.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let service = TowerToHyperService::new(RequestBodyTimeout::new(router, limits.body_timeout));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let max = limits.max_connections.max(1);
    let stop = CancellationToken::new();
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let room = connections.len() < max;
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept(), if room => match accepted {
                Ok((stream, _)) => {
                    // Answers are small and written whole: no reason to wait for more.
                    let _ = stream.set_nodelay(true);
                    let connection = http.serve_connection(TokioIo::new(stream), service.clone());
                    let stop = stop.clone();
                    connections.spawn(async move {
                        let mut connection = pin!(connection);
                        tokio::select! {
                            result = connection.as_mut() => {
                                if let Err(err) = result {
                                    tracing::debug!(error = %err, "connection ended with an error");
                                }
                                return;
                            }
                            () = stop.cancelled() => connection.as_mut().graceful_shutdown(),
                        }
                        if let Err(err) = connection.await {
                            tracing::debug!(error = %err, "connection ended with an error");
                        }
                    });
                }
                Err(err) if is_connection_error(&err) => {}
                Err(err) => {
                    tracing::warn!(error = %err, open = connections.len(), "cannot accept a connection; trying again");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    stop.cancel();
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Whether reading a request body failed because it paused longer than the body timeout.
pub fn body_timed_out(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(err) = cause {
        if err.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = err.source();
    }
    false
}

/// Whether an accept error is one connection's (gone before it was accepted), not the
/// listener's.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
