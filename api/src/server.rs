//! The accept loop: hyper's HTTP/1 server under the axum router, with the
//! protections `axum::serve` does not expose.
//!
//! - **Header-read timeout.** A client must send its request head within
//!   [`ServeOptions::header_read_timeout`]; a slowloris connection (a request
//!   line or headers trickled or never finished) and an idle keep-alive
//!   connection are closed after it, so they cannot pile up.
//! - **Connection cap.** At most [`ServeOptions::connections_max`] connections
//!   are open at once; past it the loop stops accepting and new connections
//!   wait in the kernel's listen backlog until one closes. Memory and file
//!   descriptors stay bounded whatever clients do.
//! - **Graceful shutdown.** On the signal the listener closes, idle
//!   connections close, in-flight requests (a request head still arriving
//!   included) get [`ServeOptions::shutdown_grace`] to finish.
//!
//! Requests themselves are bounded inside the router: body size and body
//! read time in the handlers, requests in flight by the concurrency limit.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use shared::core::limits::{CONNECTIONS_OPEN_MAX, HEADER_READ_TIMEOUT_MS, SHUTDOWN_GRACE_MS};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

/// Pause after an accept error that is not about one connection (out of
/// file descriptors, say), so the loop does not spin while it lasts.
const ACCEPT_ERROR_BACKOFF_MS: u64 = 100;

/// Bounds of the server loop.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    pub header_read_timeout: Duration,
    pub connections_max: usize,
    pub shutdown_grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            header_read_timeout: Duration::from_millis(HEADER_READ_TIMEOUT_MS),
            connections_max: CONNECTIONS_OPEN_MAX,
            shutdown_grace: Duration::from_millis(SHUTDOWN_GRACE_MS),
        }
    }
}

/// Errors that concern only the connection being accepted: skip it.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(opts.connections_max.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout);
    let mut shutdown = pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                // The semaphore is never closed.
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    warn!(error = %e, "cannot accept a connection; retrying");
                    tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_BACKOFF_MS)).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(app.clone());
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    info!(
        connections = graceful.count(),
        "shutting down: waiting for requests in flight"
    );
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(opts.shutdown_grace) => {
            warn!(
                grace_ms = opts.shutdown_grace.as_millis(),
                "connections still busy after the grace period (unfinished requests); stopping anyway"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;

    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    /// Client-side bound on every read below, so a broken server fails the
    /// test instead of hanging it.
    const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

    async fn start(opts: ServeOptions) -> (std::net::SocketAddr, oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", get(|| async { "ok" }));
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve(listener, app, opts, async move {
            let _ = stopped.await;
        }));
        (addr, stop)
    }

    async fn answer(stream: &mut TcpStream) -> String {
        let mut text = String::new();
        tokio::time::timeout(CLIENT_TIMEOUT, stream.read_to_string(&mut text))
            .await
            .expect("server answers")
            .expect("read");
        text
    }

    #[tokio::test]
    async fn a_slowloris_connection_is_closed_after_the_header_timeout() {
        let (addr, _stop) = start(ServeOptions {
            header_read_timeout: Duration::from_millis(200),
            connections_max: 1,
            shutdown_grace: Duration::from_secs(1),
        })
        .await;
        // Half a request line, then nothing: it holds the only slot...
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HT").await.unwrap();
        // ...until the server cuts it off; then the waiting client is served.
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(REQUEST).await.unwrap();
        assert!(answer(&mut client).await.starts_with("HTTP/1.1 200"));
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(CLIENT_TIMEOUT, slow.read(&mut buf))
            .await
            .expect("server closes the slow connection");
        assert!(matches!(read, Ok(0) | Err(_)), "closed without an answer");
    }

    #[tokio::test]
    async fn connections_over_the_cap_wait_for_a_free_slot() {
        let (addr, stop) = start(ServeOptions {
            header_read_timeout: Duration::from_secs(600),
            connections_max: 1,
            shutdown_grace: Duration::from_secs(1),
        })
        .await;
        let idle = TcpStream::connect(addr).await.unwrap();
        let mut waiting = TcpStream::connect(addr).await.unwrap();
        waiting.write_all(REQUEST).await.unwrap();
        // Not served while the idle connection holds the only slot. (This can
        // only pass wrongly on a slow machine, never fail wrongly.)
        let mut buf = [0u8; 64];
        let early = tokio::time::timeout(Duration::from_millis(300), waiting.read(&mut buf)).await;
        assert!(early.is_err(), "served over the cap: {early:?}");
        drop(idle);
        assert!(answer(&mut waiting).await.starts_with("HTTP/1.1 200"));
        // Shutdown closes the listener.
        stop.send(()).unwrap();
        let deadline = tokio::time::Instant::now() + CLIENT_TIMEOUT;
        while TcpStream::connect(addr).await.is_ok() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "listener still open after shutdown"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
