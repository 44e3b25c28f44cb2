//! Process start-up and shutdown shared by the binaries: `.env`,
//! configuration, `tracing` to stderr (filtered by `RUST_LOG`, default
//! `info`; text with colours only on a terminal, or JSON lines with
//! `KV_LOG_FORMAT=json`), and the shutdown signal.

use std::io::IsTerminal;

use tracing_subscriber::prelude::*;

use crate::config::LogFormat;

pub fn init_tracing(format: LogFormat) {
    let filter: tracing_subscriber::filter::Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO)
        });
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .init(),
        // One JSON object per line, with the fields of the current span
        // and its parents (node, request id, key hash, job).
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(true)
                    .with_target(false)
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
}

/// Reads `.env` (when present) and the configuration, then starts logging.
pub fn start() -> Result<crate::config::Config, crate::config::ConfigError> {
    let _ = dotenvy::dotenv();
    let cfg = crate::config::Config::from_env()?;
    // The Redis client builds its rustls configuration with the default
    // provider; the node's own configurations name theirs.
    crate::config::install_default_provider();
    init_tracing(cfg.log_format);
    Ok(cfg)
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}
