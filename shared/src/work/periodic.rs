//! Periodic work of a node: hint delivery, anti-entropy, tombstone
//! collection and (background sync off) the heartbeat.
//!
//! With background sync on, the worker processes run these (the API pushes
//! the heartbeat as a job every interval); with it off, the API process runs
//! them itself. When several workers serve one node, a short Redis lease
//! (`kv:{node}:lease:{task}`) lets only one of them run each task per round.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use super::heartbeat::heartbeat;
use crate::keyspace::lease_key;
use crate::node::Coordinator;
use crate::storage::Store;

/// Takes the lease of `task` for `ttl` if nobody holds it; returns whether
/// this process got it. The memory store always grants it.
async fn try_lease(store: &Store, node: &str, task: &str, ttl: Duration, holder: &str) -> bool {
    match store {
        Store::Redis(redis_store) => {
            let mut conn = redis_store.connection();
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            let got: Result<Option<String>, _> = redis::cmd("SET")
                .arg(lease_key(node, task))
                .arg(holder)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query_async(&mut conn)
                .await;
            matches!(got, Ok(Some(_)))
        }
        Store::Memory(_) => true,
    }
}

/// Which periodic tasks a process runs.
#[derive(Debug, Clone, Copy)]
pub struct Periodic {
    /// Run the heartbeat in-process (background sync off).
    pub heartbeat: bool,
}

/// Spawns the periodic loops of a node. `holder` names this process in leases.
pub fn spawn_periodic(coord: Arc<Coordinator>, periodic: Periodic, holder: String) {
    let cfg = coord.config().clone();
    let leased = Some(holder);
    spawn_rounds(
        &coord,
        "hints",
        cfg.hint_delivery_interval,
        false,
        leased.clone(),
        |coord| async move {
            match coord.deliver_hints().await {
                Ok(0) => {}
                Ok(n) => info!(delivered = n, "hints delivered"),
                Err(error) => warn!(%error, "hint delivery failed"),
            }
        },
    );
    if let Some(interval) = cfg.anti_entropy_interval {
        // The first round is one interval after start (start-up has its own restore).
        spawn_rounds(
            &coord,
            "anti-entropy",
            interval,
            true,
            leased.clone(),
            |coord| async move {
                match coord.restore(None).await {
                    Ok(report) if report.stored > 0 => {
                        info!(
                            stored = report.stored,
                            leaves_differing = report.leaves_differing,
                            "anti-entropy repaired records"
                        )
                    }
                    Ok(_) => debug!("anti-entropy: in sync"),
                    Err(error) => warn!(%error, "anti-entropy failed"),
                }
            },
        );
    }
    if let Some(interval) = cfg.gc_interval {
        spawn_rounds(&coord, "gc", interval, false, leased, |coord| async move {
            match coord.collect_tombstones().await {
                Ok(0) => {}
                Ok(n) => info!(collected = n, "tombstones collected"),
                Err(error) => warn!(%error, "tombstone collection failed"),
            }
        });
    }
    if periodic.heartbeat {
        spawn_rounds(
            &coord,
            "heartbeat",
            cfg.heartbeat_interval,
            false,
            None,
            |coord| async move {
                if let Err(error) = heartbeat(&coord).await {
                    warn!(%error, "heartbeat failed");
                }
            },
        );
    }
}

/// Runs `round` every `interval` in a task of its own. With `lease_holder`,
/// a round runs only in the process that takes the task's lease for it.
fn spawn_rounds<F, Fut>(
    coord: &Arc<Coordinator>,
    task: &'static str,
    interval: Duration,
    skip_first: bool,
    lease_holder: Option<String>,
    round: F,
) where
    F: Fn(Arc<Coordinator>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let coord = Arc::clone(coord);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if skip_first {
            ticker.tick().await;
        }
        loop {
            ticker.tick().await;
            if let Some(holder) = &lease_holder
                && !try_lease(coord.store(), coord.node_id(), task, interval, holder).await
            {
                continue;
            }
            round(Arc::clone(&coord)).await;
        }
    });
}

/// How often a process adds its new counts to the node's counters in Redis.
pub const COUNTER_FLUSH_INTERVAL_MS: u64 = 1_000;

/// Flushes this process's counters to the node's Redis every
/// [`COUNTER_FLUSH_INTERVAL_MS`], so `/metrics` and `/cluster/` show work
/// done by any process of the node.
pub fn spawn_counter_flush(coord: Arc<Coordinator>) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(COUNTER_FLUSH_INTERVAL_MS));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(error) = coord.flush_counters().await {
                debug!(%error, "cannot flush counters");
            }
        }
    });
}
