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
//! - **TLS.** With a server configuration (`KV_TLS_CERT`), every connection
//!   is HTTPS; its handshake is bounded by the header-read timeout too.
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
use hyper::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use shared::core::limits::{CONNECTIONS_OPEN_MAX, HEADER_READ_TIMEOUT_MS, SHUTDOWN_GRACE_MS};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::state::ConnectionTls;

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

/// Serves `app` on `listener` until `shutdown` resolves, then drains. With
/// `tls`, every connection is HTTPS: its handshake must finish within the
/// header-read timeout, and each of its requests carries a
/// [`ConnectionTls`] extension (whether a client certificate verified).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    opts: ServeOptions,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = tls.map(TlsAcceptor::from);
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
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let app = app.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let served = match acceptor {
                None => {
                    let service = TowerToHyperService::new(app);
                    watcher
                        .watch(builder.serve_connection(TokioIo::new(stream), service))
                        .await
                }
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(opts.header_read_timeout, acceptor.accept(stream));
                    let stream = match handshake.await {
                        Ok(Ok(stream)) => stream,
                        // A plain-HTTP client, an untrusted certificate, a scanner.
                        Ok(Err(e)) => {
                            debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let tls = ConnectionTls {
                        client_certificate: stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .is_some_and(|chain| !chain.is_empty()),
                    };
                    let app = app.map_request(move |mut request: Request<Incoming>| {
                        request.extensions_mut().insert(tls);
                        request
                    });
                    let service = TowerToHyperService::new(app);
                    watcher
                        .watch(builder.serve_connection(TokioIo::new(stream), service))
                        .await
                }
            };
            if let Err(e) = served {
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
        tokio::spawn(serve(listener, app, opts, None, async move {
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

    /// A CA and a certificate for 127.0.0.1 made by `scripts/gen-certs.sh`.
    fn certificates(name: &str) -> std::path::PathBuf {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = std::env::temp_dir().join(format!("kv-server-tls-{}-{name}", std::process::id()));
        let status = std::process::Command::new(root.join("scripts/gen-certs.sh"))
            .arg(&dir)
            .arg("node1:127.0.0.1")
            .arg("client:client")
            .status()
            .expect("gen-certs.sh runs (openssl installed)");
        assert!(status.success());
        dir
    }

    fn settings(dir: &std::path::Path, identity: &str) -> shared::config::TlsSettings {
        shared::config::TlsSettings {
            identity: Some((
                dir.join(format!("{identity}.pem")),
                dir.join(format!("{identity}.key")),
            )),
            ca: Some(dir.join("ca.pem")),
            client_auth: shared::config::ClientAuth::Internal,
        }
    }

    /// Serves a route answering whether the request came over TLS with a
    /// verified client certificate.
    async fn start_tls(dir: &std::path::Path, opts: ServeOptions) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route(
            "/",
            get(|request: axum::extract::Request| async move {
                match request.extensions().get::<ConnectionTls>() {
                    Some(tls) if tls.client_certificate => "certified",
                    Some(_) => "anonymous",
                    None => "plain",
                }
            }),
        );
        let tls = settings(dir, "node1").server_config().unwrap();
        tokio::spawn(serve(listener, app, opts, tls, std::future::pending()));
        addr
    }

    async fn https_get(addr: std::net::SocketAddr, config: Arc<rustls::ClientConfig>) -> String {
        let connector = tokio_rustls::TlsConnector::from(config);
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = tokio::time::timeout(CLIENT_TIMEOUT, connector.connect(name, tcp))
            .await
            .expect("handshake in time")
            .expect("handshake");
        tls.write_all(REQUEST).await.unwrap();
        let mut text = String::new();
        // The server may close without a TLS close_notify; what was read counts.
        let _ = tokio::time::timeout(CLIENT_TIMEOUT, tls.read_to_string(&mut text)).await;
        text
    }

    #[tokio::test]
    async fn https_requests_carry_whether_the_client_certificate_verified() {
        let dir = certificates("ext");
        let addr = start_tls(&dir, ServeOptions::default()).await;
        let with_cert = settings(&dir, "client").client_config().unwrap();
        let answer = https_get(addr, with_cert).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("certified"), "{answer}");
        let mut anonymous = settings(&dir, "client");
        anonymous.identity = None;
        let answer = https_get(addr, anonymous.client_config().unwrap()).await;
        assert!(answer.ends_with("anonymous"), "{answer}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn plain_http_and_silent_clients_get_no_answer_from_a_tls_port() {
        let dir = certificates("plain");
        let addr = start_tls(
            &dir,
            ServeOptions {
                header_read_timeout: Duration::from_millis(200),
                connections_max: 1,
                shutdown_grace: Duration::from_secs(1),
            },
        )
        .await;
        // A client that never starts its handshake holds the only slot
        // until the header timeout closes it.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(CLIENT_TIMEOUT, silent.read(&mut buf))
            .await
            .expect("server closes the silent connection");
        assert!(matches!(read, Ok(0) | Err(_)), "closed: {read:?}");
        // Plain HTTP gets no HTTP answer (the handshake fails).
        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain.write_all(REQUEST).await.unwrap();
        let mut bytes = Vec::new();
        let _ = tokio::time::timeout(CLIENT_TIMEOUT, plain.read_to_end(&mut bytes)).await;
        assert!(!bytes.starts_with(b"HTTP/"), "{bytes:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
