//! The heartbeat job function (seed IV): probe every node, record
//! `node_status:<node>` in this node's Redis, alert on changes.

use std::sync::Arc;

use serde::Serialize;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::clock::now_ms;
use crate::core::mail::{MailJob, MailKind};
use crate::keyspace::{status_checked_key, status_last_seen_key};
use crate::node::Node;
use crate::storage::StoreError;

pub use crate::keyspace::status_key;

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
pub async fn heartbeat(local: &Arc<Node>) -> Result<HeartbeatReport, StoreError> {
    let mut probes = JoinSet::new();
    let nodes: Vec<String> = local.view().topology.nodes.keys().cloned().collect();
    for node in nodes {
        let local = Arc::clone(local);
        probes.spawn(async move {
            let up = local.probe(&node).await;
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
        let previous = local.store().get_plain(&status_key(&node)).await?;
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
        pairs.push((status_checked_key(&node), now.clone()));
        if up {
            pairs.push((status_last_seen_key(&node), now.clone()));
            report.up.push(node);
        } else {
            report.down.push(node);
        }
    }
    local.store().set_plain(&pairs).await?;
    send_alerts(local, &report, &transitions).await;
    if !report.changed.is_empty()
        && let Some(queues) = local.queues()
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
    local: &Arc<Node>,
    report: &HeartbeatReport,
    transitions: &[(String, &'static str)],
) {
    let Some(email) = &local.config().email else {
        return;
    };
    let mut up = report.up.clone();
    up.sort();
    if !email.alerts
        || transitions.is_empty()
        || up.first().map(String::as_str) != Some(local.node_id())
    {
        return;
    }
    let now = now_ms();
    for (node, status) in transitions {
        let job = MailJob {
            id: format!("alert-{node}-{status}-{}", now / 1000),
            node: local.node_id().to_owned(),
            time_ms: now,
            kind: MailKind::Alert {
                about: node.clone(),
                status: (*status).to_owned(),
            },
            attempt: 0,
        };
        local.notify(job).await;
    }
}
