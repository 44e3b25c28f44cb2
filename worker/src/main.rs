//! The `worker` binary: background jobs of one node.
//!
//! For now it starts, connects to its node's Redis and waits for a shutdown
//! signal; the job queues arrive with the background-sync work.

use anyhow::Context;
use shared::config::Config;
use shared::storage::connect_redis;
use tracing::info;

#[tokio::main]
async fn main() {
    if let Err(error) = run().await {
        eprintln!("worker: {error:#}");
        std::process::exit(2);
    }
}

async fn run() -> anyhow::Result<()> {
    let _ = dotenvy::dotenv();
    let cfg = Config::from_env().context("configuration error")?;
    tracing_subscriber::fmt().with_target(false).init();
    let mut conn = connect_redis(&cfg)
        .await
        .with_context(|| format!("REDIS_URL: cannot reach {}", cfg.redis_url_redacted()))?;
    redis::cmd("PING")
        .query_async::<()>(&mut conn)
        .await
        .context("redis PING failed")?;
    info!(node = %cfg.node_id, redis = %cfg.redis_url_redacted(), "worker connected; no job queues yet");
    tokio::signal::ctrl_c()
        .await
        .context("cannot wait for a signal")?;
    info!("worker stopped");
    Ok(())
}
