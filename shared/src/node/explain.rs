//! Why a key reads as it does: every node's own view of it — its record
//! (replicas), the hints it keeps for it, the replication jobs queued for it
//! — whether the replicas agree, and, on request, a repair of that one key.

use std::collections::BTreeMap;

use serde::Serialize;
use tracing::warn;

use super::{CoordError, Coordinator, Node};
use crate::core::message::{ApplyStatus, KeyedRecord, LocalView};
use crate::core::plan::FailureKind;
use crate::core::record::Record;
use crate::storage::StoreError;

/// Queued replication jobs a node looks at per queue state when asked
/// about one key (the newest ones; the answer says how many it checked).
pub const EXPLAIN_JOBS_CHECKED_MAX: usize = 1_000;

/// One node's answer, as the explanation shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    pub node: String,
    /// Whether the node is one of the key's replicas.
    pub replica: bool,
    /// The node's own view (`None` when it did not answer: see `error`).
    pub view: Option<LocalView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
}

/// What a repair of one key did on one replica.
#[derive(Debug, Clone, Serialize)]
pub struct RepairResult {
    pub node: String,
    /// `stored`, `unchanged`, `refused`, or a failure code.
    pub outcome: &'static str,
}

/// The answer of `GET /kv/explain/`.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub key: String,
    pub replicas: Vec<String>,
    /// The newest record among the replicas that answered.
    pub newest: Option<Record>,
    /// Every replica answered and all hold the same record.
    pub agree: bool,
    /// Replicas that answered with an older record or none.
    pub stale: Vec<String>,
    pub nodes: Vec<NodeView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repaired: Option<Vec<RepairResult>>,
}

impl Node {
    /// This node's own view of `key` (what `/internal/explain` answers);
    /// the queued jobs only `with_jobs` (they cost a read of the queue).
    pub async fn local_view(&self, key: &str, with_jobs: bool) -> Result<LocalView, StoreError> {
        let store = self.store();
        let mut view = LocalView {
            node: self.cfg.node_id.clone(),
            record: store.get(key).await?,
            ..LocalView::default()
        };
        let topology = self.view();
        for owner in topology
            .topology
            .nodes
            .keys()
            .filter(|n| **n != self.cfg.node_id)
        {
            if let Some(record) = store.get_hint(owner, key).await? {
                view.hints.push(crate::core::message::HintView {
                    owner: owner.clone(),
                    record,
                });
            }
        }
        if let Some(queues) = self.queues.as_ref().filter(|_| with_jobs) {
            match queues
                .replication_jobs_for(key, EXPLAIN_JOBS_CHECKED_MAX)
                .await
            {
                Ok((jobs, checked)) => {
                    view.jobs = jobs;
                    view.jobs_checked = checked;
                }
                Err(error) => warn!(%key, %error, "explain: cannot read the replication queue"),
            }
        }
        Ok(view)
    }
}

impl Coordinator {
    /// Asks every node for its view of `key`, says whether the replicas
    /// agree, and with `repair` sends the newest record to the stale ones.
    pub async fn explain(&self, key: &str, repair: bool) -> Result<Explanation, CoordError> {
        let replicas = self.replicas(key);
        let io = &self.replicas.io;
        let view = self.view();
        let mut nodes = Vec::with_capacity(view.topology.nodes.len());
        for node in view.topology.nodes.keys() {
            let (view, error) = if *node == self.cfg.node_id {
                (Some(self.local_view(key, true).await?), None)
            } else {
                match io.tracked(node, io.peers.explain(node, key, true)).await {
                    Ok(view) => (Some(view), None),
                    Err(e) => (None, Some(e.kind.as_str())),
                }
            };
            nodes.push(NodeView {
                node: node.clone(),
                replica: replicas.contains(node),
                view,
                error,
            });
        }
        let held: BTreeMap<&str, Option<&Record>> = nodes
            .iter()
            .filter(|n| n.replica)
            .filter_map(|n| {
                n.view
                    .as_ref()
                    .map(|v| (n.node.as_str(), v.record.as_ref()))
            })
            .collect();
        let newest = held.values().flatten().max().map(|r| (*r).clone());
        let stale: Vec<String> = held
            .iter()
            .filter(|(_, r)| r.is_none_or(|r| newest.as_ref().is_some_and(|n| n > r)))
            .filter(|_| newest.is_some())
            .map(|(n, _)| (*n).to_owned())
            .collect();
        let agree = held.len() == replicas.len() && stale.is_empty();
        let repaired = match (&newest, repair) {
            (Some(record), true) => Some(self.repair_key(key, record, &stale).await),
            _ => None,
        };
        Ok(Explanation {
            key: key.to_owned(),
            replicas,
            newest,
            agree,
            stale,
            nodes,
            repaired,
        })
    }

    /// Sends `record` to each of `nodes` and says what each did with it.
    async fn repair_key(&self, key: &str, record: &Record, nodes: &[String]) -> Vec<RepairResult> {
        let mut out = Vec::with_capacity(nodes.len());
        for node in nodes {
            let batch = vec![KeyedRecord {
                key: key.to_owned(),
                record: record.clone(),
            }];
            let outcome = match self.replicas.io.apply_on(node, batch).await {
                Ok(statuses) => match statuses.first() {
                    Some(ApplyStatus::Stored) => "stored",
                    Some(ApplyStatus::Unchanged) => "unchanged",
                    Some(ApplyStatus::Refused) => "refused",
                    Some(ApplyStatus::NotHeld) => "not_held",
                    None => FailureKind::BadAnswer.as_str(),
                },
                Err(error) => error.kind.as_str(),
            };
            out.push(RepairResult {
                node: node.clone(),
                outcome,
            });
        }
        out
    }
}
