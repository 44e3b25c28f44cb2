//! The `api` binary: one node's HTTP API.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shared::config::Config;
use shared::core::limits::REDIS_STARTUP_WAIT_MS;
use shared::mail::Mailer;
use shared::node::{Coordinator, MAIL_INLINE_IN_FLIGHT_MAX};
use shared::queue::{JobQueues, retry_policy};
use shared::storage::{RedisStore, Store, connect_redis_ready};
use shared::work::mail::run_inline;
use shared::work::periodic::{Dispatch, spawn_counter_flush, spawn_scheduler};
use tokio::net::TcpListener;
use tracing::{info, warn};

/// mimalloc: the request path allocates many small, short-lived objects
/// (headers, keys, records, futures); it measured faster than the system
/// allocator in `make bench` (see README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        std::process::exit(healthcheck());
    }
    if let Err(error) = run().await {
        // One clear line; configuration errors name their variable.
        eprintln!("api: {error:#}");
        std::process::exit(2);
    }
}

async fn run() -> anyhow::Result<()> {
    let cfg = shared::process::start().context("configuration error")?;
    if cfg.cluster_secret_is_default {
        warn!("KV_CLUSTER_SECRET is not set: using the development default; set it in production");
    }
    // Read now: a wrong certificate file stops the node before it starts.
    let tls = cfg.tls.server_config().context("TLS configuration")?;
    let cfg = Arc::new(cfg);
    let conn = connect_redis_ready(&cfg, Duration::from_millis(REDIS_STARTUP_WAIT_MS))
        .await
        .with_context(|| format!("REDIS_URL: cannot reach {}", cfg.redis_url_redacted()))?;
    let store = Store::Redis(
        RedisStore::new(conn.clone(), &cfg.node_id).with_change_log(cfg.watch_log_len),
    );
    let queues =
        JobQueues::new(conn, &cfg.node_id, retry_policy(&cfg)).with_jobs_max(cfg.queue_jobs_max);
    let mut inline_mail = None;
    if let Some(email) = &cfg.email {
        // Built here too so a bad address stops the node at start.
        let mailer = Arc::new(Mailer::new(email).context("e-mail configuration")?);
        if !cfg.background_sync {
            let (tx, rx) = tokio::sync::mpsc::channel(MAIL_INLINE_IN_FLIGHT_MAX);
            tokio::spawn(run_inline(mailer, queues.clone(), rx));
            inline_mail = Some(tx);
        }
        info!(host = %email.host, port = email.port, tls = ?email.tls, "e-mail notifications on");
    }
    let moved = store
        .migrate_legacy()
        .await
        .context("cannot move records of the earlier storage layout")?;
    if moved > 0 {
        info!(node = %cfg.node_id, moved, "records moved into the leaf layout");
    }
    let indexed = store
        .ensure_key_index()
        .await
        .context("cannot index the keys of records written by an earlier version")?;
    if indexed > 0 {
        info!(node = %cfg.node_id, indexed, "keys of earlier records added to the key index");
    }
    let coord = Coordinator::build(Arc::clone(&cfg), store, Some(queues.clone()), inline_mail)
        .context("cannot build the peer HTTP client")?;
    // The topology kept by an earlier run wins over KV_PEERS (the seed of
    // the first start); the start-up probes below catch up with peers.
    if coord
        .load_topology()
        .await
        .context("cannot read the kept topology")?
    {
        info!(node = %cfg.node_id, epoch = coord.view().topology.epoch, "topology resumed from Redis");
    }
    let mark = coord
        .resume_clock()
        .await
        .context("cannot read the persisted clock mark")?;
    info!(node = %cfg.node_id, clock_mark_ms = mark, "clock resumed above its persisted mark");
    coord.node().spawn_clock_persist();
    spawn_counter_flush(Arc::clone(coord.node()));
    // The node's one scheduler of periodic work (heartbeat, hint delivery,
    // anti-entropy, GC): it queues each due run for the workers, or, with
    // background sync off, runs it here.
    let dispatch = if cfg.background_sync {
        Dispatch::Queue(Box::new(queues))
    } else {
        Dispatch::InProcess
    };
    spawn_scheduler(Arc::clone(coord.node()), dispatch);

    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("KV_LISTEN: cannot bind {}", cfg.listen))?;
    info!(
        node = %cfg.node_id,
        listen = %cfg.listen,
        redis = %cfg.redis_url_redacted(),
        nodes = coord.view().topology.nodes.len(),
        epoch = coord.view().topology.epoch,
        member = coord.is_member(),
        replication_factor = cfg.replication_factor,
        background_sync = cfg.background_sync,
        tls = tls.is_some(),
        client_auth = ?cfg.tls.client_auth,
        "node started"
    );

    // Probes run whatever the cluster's size now: it may grow, and a
    // joining node learns the cluster by probing its seeds.
    {
        let prober = Arc::clone(&coord);
        let interval = cfg.probe_interval;
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                prober.probe_peers(false).await;
                prober.resume_if_stalled().await;
            }
        });
    }
    if cfg.restore_on_start && coord.view().topology.nodes.len() > 1 {
        let coord = Arc::clone(&coord);
        tokio::spawn(async move {
            coord.probe_peers(false).await;
            // A node started to join holds no data until it is a member;
            // it then pulls its share as the change's step, not here.
            if coord.is_member() {
                coord.try_restore().await;
            } else {
                info!(node = %coord.node_id(), "not a member (yet): no start-up restore");
            }
        });
    }

    // Measure the peers' clocks (and health) before the first client
    // request: a node restarted with a clock far from its peers' must be
    // fenced before it stamps or judges any version. Client routes wait for
    // this round; the node serves meanwhile, so the peers' own start-up
    // probes are answered (two nodes started together would otherwise wait
    // for each other until their peer timeout). Each probe has the peer
    // timeouts; a lone node, or one whose peers are all down, goes on. A
    // probe also tells a newer topology epoch, which is fetched.
    let measure = {
        let coord = Arc::clone(&coord);
        async move {
            if coord.view().topology.nodes.len() > 1 {
                coord.probe_peers(false).await;
            }
            coord.mark_clock_measured();
        }
    };
    let serve = api::server::serve(
        listener,
        api::app(coord),
        api::server::ServeOptions::default(),
        tls,
        shared::process::shutdown_signal(),
    );
    tokio::join!(measure, serve);
    info!("node stopped");
    Ok(())
}

/// `api healthcheck`: exit 0 when this node's `/health` answers 200 (for
/// container health checks in an image without curl). Over TLS when the
/// node serves it, checking the certificate against the name in its own
/// URL, as its peers do.
fn healthcheck() -> i32 {
    use std::io::{Read, Write};
    let _ = dotenvy::dotenv();
    let Ok(cfg) = Config::from_env() else {
        return 2;
    };
    let mut addr = cfg.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let timeout = std::time::Duration::from_secs(2);
    let Ok(tcp) = std::net::TcpStream::connect_timeout(&addr, timeout) else {
        return 1;
    };
    let _ = tcp.set_read_timeout(Some(timeout));
    let _ = tcp.set_write_timeout(Some(timeout));
    let mut stream: Box<dyn ReadWrite> = if cfg.tls.serves_tls() {
        match tls_stream(&cfg, tcp) {
            Some(stream) => Box::new(stream),
            None => return 2,
        }
    } else {
        Box::new(tcp)
    };
    if stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return 1;
    }
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).unwrap_or(0);
    let line = String::from_utf8_lossy(&head[..n]);
    if line.starts_with("HTTP/1.0 200") || line.starts_with("HTTP/1.1 200") {
        0
    } else {
        1
    }
}

trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

/// A TLS client stream to this node, named as in its own URL.
fn tls_stream(
    cfg: &Config,
    tcp: std::net::TcpStream,
) -> Option<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>> {
    let own = cfg.nodes.get(&cfg.node_id)?;
    let uri: hyper::Uri = own.parse().ok()?;
    let host = uri.host()?.trim_matches(['[', ']']);
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).ok()?;
    let config = cfg.tls.client_config().ok()?;
    let connection = rustls::ClientConnection::new(config, name).ok()?;
    Some(rustls::StreamOwned::new(connection, tcp))
}
