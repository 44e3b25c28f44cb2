//! Periodic work of a node: heartbeat, hint delivery, anti-entropy and
//! tombstone collection.
//!
//! With background sync on, the worker processes run these (the API pushes
//! the heartbeat as a job every interval); with it off, the API process runs
//! them itself. When several workers serve one node, a short Redis lease
//! (`kv:{node}:lease:{task}`) lets only one of them run each task per round.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::coordinator::{Coordinator, now_ms};
use crate::core::mail::{MailJob, MailKind};
use crate::core::message::HeartbeatJob;
use crate::storage::{Store, StoreError};

/// Redis key of the status of `node`, as in the seed: `GET node_status:node1` → `up`.
pub fn status_key(node: &str) -> String {
    format!("node_status:{node}")
}

/// Outcome of one heartbeat round.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HeartbeatReport {
    pub up: Vec<String>,
    pub down: Vec<String>,
    pub changed: Vec<String>,
}

/// The heartbeat job function: checks every node of the cluster and writes
/// `node_status:<node>` = `up` / `down` into this node's Redis, with
/// `node_status:<node>:checked_ms` and, when up, `node_status:<node>:last_seen_ms`.
/// Status changes are logged and counted.
pub async fn heartbeat(coord: &Arc<Coordinator>) -> Result<HeartbeatReport, StoreError> {
    let mut probes = JoinSet::new();
    for node in coord.config().nodes.keys().cloned() {
        let coord = Arc::clone(coord);
        probes.spawn(async move {
            let up = coord.probe(&node).await;
            (node, up)
        });
    }
    let now = now_ms().to_string();
    let mut report = HeartbeatReport::default();
    let mut pairs = Vec::new();
    let mut transitions: Vec<(String, &'static str)> = Vec::new();
    while let Some(joined) = probes.join_next().await {
        let Ok((node, up)) = joined else { continue };
        let status = if up { "up" } else { "down" };
        let previous = coord.store().get_plain(&status_key(&node)).await?;
        if previous.as_deref() != Some(status) {
            match previous {
                Some(previous) => {
                    warn!(%node, from = %previous, to = status, "heartbeat: node status changed");
                    transitions.push((node.clone(), status));
                }
                None => info!(%node, status, "heartbeat: first status"),
            }
            report.changed.push(node.clone());
        }
        pairs.push((status_key(&node), status.to_owned()));
        pairs.push((format!("{}:checked_ms", status_key(&node)), now.clone()));
        if up {
            pairs.push((format!("{}:last_seen_ms", status_key(&node)), now.clone()));
            report.up.push(node);
        } else {
            report.down.push(node);
        }
    }
    coord.store().set_plain(&pairs).await?;
    send_alerts(coord, &report, &transitions).await;
    if !report.changed.is_empty()
        && let Some(queues) = coord.queues()
        && let Err(error) = queues
            .count("status_changes", report.changed.len() as u64)
            .await
    {
        debug!(%error, "cannot count status changes");
    }
    Ok(report)
}

/// One alert e-mail per status change. To avoid one mail per node for the
/// same event, only the first node (by id) that this heartbeat found up
/// sends alerts; every node computes the same choice when views agree.
async fn send_alerts(
    coord: &Arc<Coordinator>,
    report: &HeartbeatReport,
    transitions: &[(String, &'static str)],
) {
    let Some(email) = &coord.config().email else {
        return;
    };
    let mut up = report.up.clone();
    up.sort();
    if !email.alerts
        || transitions.is_empty()
        || up.first().map(String::as_str) != Some(coord.node_id())
    {
        return;
    }
    let now = now_ms();
    for (node, status) in transitions {
        let job = MailJob {
            id: format!("alert-{node}-{status}-{}", now / 1000),
            node: coord.node_id().to_owned(),
            time_ms: now,
            kind: MailKind::Alert {
                about: node.clone(),
                status: (*status).to_owned(),
            },
            attempt: 0,
        };
        coord.notify(job).await;
    }
}

/// Runs a heartbeat job, unless it is stale (scheduled more than two
/// intervals ago, e.g. a backlog left while no worker ran).
pub async fn run_heartbeat_job(
    coord: &Arc<Coordinator>,
    job: &HeartbeatJob,
) -> Result<(), StoreError> {
    let interval_ms =
        u64::try_from(coord.config().heartbeat_interval.as_millis()).unwrap_or(u64::MAX);
    if now_ms().saturating_sub(job.scheduled_ms) > interval_ms.saturating_mul(2) {
        debug!("skipping a stale heartbeat job");
        return Ok(());
    }
    heartbeat(coord).await.map(|_| ())
}

/// Takes the lease of `task` for `ttl` if nobody holds it; returns whether
/// this process got it. The memory store always grants it.
async fn try_lease(store: &Store, node: &str, task: &str, ttl: Duration, holder: &str) -> bool {
    match store {
        Store::Redis(redis_store) => {
            let mut conn = redis_store.connection();
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            let got: Result<Option<String>, _> = redis::cmd("SET")
                .arg(format!("kv:{node}:lease:{task}"))
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
