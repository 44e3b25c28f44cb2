//! What the dashboard shows: each node's [`NodeStatus`] (its view of every
//! peer, hints held, queues, dead letters, restore, clock fence, request
//! window), and [`ClusterStatus`], every node's status gathered by the node
//! the browser talks to.
//!
//! A browser can only call the node that served the page (other nodes are
//! other origins), so that node asks every peer for its status over the
//! internal client, all at once, each call within the peer timeout. A peer
//! that does not answer is shown unreachable from here, with a code; the
//! answer as a whole never fails.

use std::collections::BTreeMap;
use std::time::Instant;

use futures_util::future::join_all;
use serde::Serialize;

use super::{Coordinator, Node, RestoreState};
use crate::clock::now_ms;
use crate::core::limits::RING_ARCS_SHOWN;
use crate::core::status::{
    ClockSummary, JobsSummary, NodeStatus, PeerSeen, QueueDepth, RequestSeries, RestoreSummary,
};
use crate::keyspace::{status_key, status_last_seen_key};
use crate::storage::Space;

/// What the heartbeat job last wrote about a node: status and last seen (ms).
pub type HeartbeatMark = (Option<String>, Option<u64>);

/// The ring as the dashboard draws it.
#[derive(Debug, Clone, Serialize)]
pub struct RingPicture {
    pub vnodes_per_node: usize,
    /// Fraction of the hash space each node is primary for.
    pub shares: BTreeMap<String, f64>,
    /// The primary owner at [`RING_ARCS_SHOWN`] evenly spaced points of the
    /// hash space, clockwise from 0.
    pub arcs: Vec<String>,
}

/// One node as the serving node reached it.
#[derive(Debug, Clone, Serialize)]
pub struct Observed {
    pub id: String,
    pub url: String,
    #[serde(rename = "self")]
    pub is_self: bool,
    /// Whether the node answered the serving node just now.
    pub reachable: bool,
    pub elapsed_ms: u64,
    /// Why it did not answer: a failure code (`unreachable`, `timeout`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    pub status: Option<NodeStatus>,
}

/// The answer of `GET /cluster/views`.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// The node that gathered it.
    pub node: String,
    pub now_ms: u64,
    pub replication_factor: usize,
    pub ring: RingPicture,
    pub nodes: Vec<Observed>,
}

impl Node {
    /// What the heartbeat job last wrote about each node, from this node's
    /// Redis (absent where nothing was written or Redis did not answer).
    pub async fn heartbeat_marks(&self) -> BTreeMap<String, HeartbeatMark> {
        let mut marks = BTreeMap::new();
        let view = self.view();
        for id in view.topology.nodes.keys() {
            let status = self.store().get_plain(&status_key(id)).await.ok().flatten();
            let seen = self
                .store()
                .get_plain(&status_last_seen_key(id))
                .await
                .ok()
                .flatten()
                .and_then(|s| s.parse::<u64>().ok());
            marks.insert(id.clone(), (status, seen));
        }
        marks
    }

    /// Hints this node keeps, per owner (0 where Redis did not answer).
    pub async fn hints_held(&self) -> BTreeMap<String, u64> {
        let mut held = BTreeMap::new();
        let view = self.view();
        for id in view.topology.nodes.keys() {
            let count = self
                .store()
                .count_in(&Space::Hints(id.clone()))
                .await
                .unwrap_or(0);
            held.insert(id.clone(), count);
        }
        held
    }

    /// The ring's shares, and its owners sampled at [`RING_ARCS_SHOWN`] points.
    pub fn ring_picture(&self) -> RingPicture {
        let view = self.view();
        let ring = view.placement.ring();
        let shares = ring.nodes().iter().cloned().zip(ring.ownership()).collect();
        let arc = (1u128 << 64) / RING_ARCS_SHOWN as u128;
        let arcs = (0..RING_ARCS_SHOWN as u128)
            .map(|i| {
                // Below 2^64: i < RING_ARCS_SHOWN, so i * arc + arc / 2 < 2^64.
                let position = u64::try_from(i * arc + arc / 2).unwrap_or(u64::MAX);
                ring.preference_list_at(position, 1)
                    .first()
                    .map_or_else(String::new, |n| (*n).to_owned())
            })
            .collect();
        RingPicture {
            vnodes_per_node: ring.vnodes(),
            shares,
            arcs,
        }
    }

    async fn jobs_summary(&self) -> JobsSummary {
        let Some(queues) = self.queues() else {
            return JobsSummary {
                mode: "none".to_owned(),
                ..JobsSummary::default()
            };
        };
        if !self.cfg.background_sync {
            return JobsSummary {
                mode: "in-process".to_owned(),
                ..JobsSummary::default()
            };
        }
        let mut summary = JobsSummary {
            mode: "queue".to_owned(),
            ..JobsSummary::default()
        };
        match (queues.stats().await, queues.dead_letters(1).await) {
            (Ok(stats), Ok((dead, _))) => {
                summary.queues = stats
                    .into_iter()
                    .map(|s| QueueDepth {
                        queue: s.queue,
                        depth: s.depth,
                        in_flight: s.in_flight,
                        retrying: s.retrying,
                        workers: s.workers,
                    })
                    .collect();
                summary.dead_letters = Some(dead);
            }
            (Err(error), _) | (_, Err(error)) => {
                tracing::warn!(%error, "status: cannot read the job queues");
                summary.error = Some("queue_unavailable".to_owned());
            }
        }
        summary
    }
}

/// The start-up restore as the dashboard shows it: no error text (the
/// coordinator logged it when it happened).
fn restore_summary(state: RestoreState) -> RestoreSummary {
    let summary = |state: &str| RestoreSummary {
        state: state.to_owned(),
        ..RestoreSummary::default()
    };
    match state {
        RestoreState::Idle => summary("idle"),
        RestoreState::Restoring { attempt, .. } => RestoreSummary {
            attempt: Some(attempt),
            ..summary("restoring")
        },
        RestoreState::Ready { report } => RestoreSummary {
            stored: Some(report.stored),
            ..summary("ready")
        },
        RestoreState::Partial {
            report,
            missing,
            attempt,
            retry_in_ms,
        } => RestoreSummary {
            attempt: Some(attempt),
            missing,
            stored: Some(report.stored),
            retry_in_ms: Some(retry_in_ms),
            ..summary("partial")
        },
        RestoreState::Failed {
            missing,
            attempt,
            retry_in_ms,
            ..
        } => RestoreSummary {
            attempt: Some(attempt),
            missing,
            retry_in_ms: Some(retry_in_ms),
            ..summary("failed")
        },
    }
}

impl Coordinator {
    /// This node's status (what `/internal/status` answers); `requests` is
    /// the API's request window, which the node itself does not keep.
    pub async fn status(&self, requests: RequestSeries) -> NodeStatus {
        let now = now_ms();
        let marks = self.heartbeat_marks().await;
        let states = self.peer_states();
        let view = self.view();
        let peers = view
            .topology
            .nodes
            .keys()
            .map(|id| {
                let (heartbeat, heartbeat_last_seen_ms) =
                    marks.get(id).cloned().unwrap_or_default();
                let last_seen_ms = if *id == self.cfg.node_id {
                    Some(now)
                } else {
                    states.get(id).and_then(|s| s.last_seen_ms)
                };
                let seen = PeerSeen {
                    health: self.peer_health(id),
                    last_seen_ms,
                    heartbeat,
                    heartbeat_last_seen_ms,
                };
                (id.clone(), seen)
            })
            .collect();
        let records = match self.store().record_count().await {
            Ok(n) => Some(n),
            Err(error) => {
                tracing::warn!(%error, "status: cannot count this node's records");
                None
            }
        };
        let clock = self.clock_view();
        NodeStatus {
            node: self.cfg.node_id.clone(),
            now_ms: now,
            peers,
            records,
            hints_held: self.hints_held().await,
            jobs: self.jobs_summary().await,
            restore: restore_summary(self.restore_state()),
            clock: ClockSummary {
                fenced: clock.fenced,
                peers_measured: clock.peers_measured,
                median_offset_ms: clock.median_offset_ms,
                drift_max_ms: clock.drift_max_ms,
            },
            requests,
        }
    }

    /// Every node's status: peers asked at once (each call within the peer
    /// timeout, its outcome fed to the failure detector like any call),
    /// then this node's own, which so includes what those calls taught it.
    pub async fn cluster_status(&self, own_requests: RequestSeries) -> ClusterStatus {
        let io = &self.replicas.io;
        let me = self.cfg.node_id.as_str();
        let view = self.view();
        let calls = view.topology.nodes.keys().filter(|id| *id != me).map(|id| async move {
            let started = Instant::now();
            let answer = io.tracked(id, io.peers.status(id)).await;
            let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            match answer {
                Ok(status) if status.node == *id => (id.clone(), elapsed_ms, Ok(status)),
                Ok(status) => {
                    tracing::warn!(peer = %id, answered_as = %status.node, "status: a peer answered with another node's id");
                    (id.clone(), elapsed_ms, Err("bad_answer"))
                }
                Err(error) => {
                    tracing::debug!(peer = %id, error = %error.detail, "status: peer did not answer");
                    (id.clone(), elapsed_ms, Err(error.kind.as_str()))
                }
            }
        });
        let mut answers: BTreeMap<String, (u64, Result<NodeStatus, &'static str>)> =
            join_all(calls)
                .await
                .into_iter()
                .map(|(id, elapsed_ms, answer)| (id, (elapsed_ms, answer)))
                .collect();
        let started = Instant::now();
        let own = self.status(own_requests).await;
        let own_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        answers.insert(me.to_owned(), (own_ms, Ok(own)));
        let nodes = view
            .topology
            .nodes
            .iter()
            .map(|(id, url)| {
                let (elapsed_ms, answer) = answers.remove(id).unwrap_or((0, Err("unknown_node")));
                let (status, error) = match answer {
                    Ok(status) => (Some(status), None),
                    Err(code) => (None, Some(code)),
                };
                Observed {
                    id: id.clone(),
                    url: url.clone(),
                    is_self: id == me,
                    reachable: status.is_some(),
                    elapsed_ms,
                    error,
                    status,
                }
            })
            .collect();
        ClusterStatus {
            node: me.to_owned(),
            now_ms: now_ms(),
            replication_factor: self.cfg.replication_factor.min(view.placement.ring().len()),
            ring: self.ring_picture(),
            nodes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::RestoreReport;

    #[test]
    fn restore_summaries_carry_no_error_text() {
        let failed = restore_summary(RestoreState::Failed {
            error: "connect to 10.9.8.7:6379 refused".to_owned(),
            missing: vec!["node2".to_owned()],
            attempt: 2,
            retry_in_ms: 500,
        });
        let shown = serde_json::to_string(&failed).unwrap();
        assert!(!shown.contains("10.9.8.7"), "{shown}");
        assert_eq!(failed.state, "failed");
        assert_eq!(failed.missing, vec!["node2".to_owned()]);
        let ready = restore_summary(RestoreState::Ready {
            report: RestoreReport {
                stored: 7,
                ..RestoreReport::default()
            },
        });
        assert_eq!((ready.state.as_str(), ready.stored), ("ready", Some(7)));
    }
}
