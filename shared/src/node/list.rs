//! A listing: ask every node for its page of a key range, merge the pages
//! (`core::listing::merge_pages`), and repair owners that answered behind.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::stats::Stats;
use super::{CoordError, Coordinator, NodeFailure, Unavailable};
use crate::core::limits::LIST_PAGE_BYTES_MAX;
use crate::core::listing::{ListQuery, NodePage, PageBounds, merge_pages};
use crate::core::message::RangeRequest;
use crate::core::plan::ReplicaFailure;
use crate::core::quorum::Consistency;
use crate::core::record::Record;

/// One page of the cluster's keys.
#[derive(Debug, Clone)]
pub struct ListReport {
    /// Each key's newest record (never a tombstone or an expired value), in key order.
    pub items: Vec<(String, Record)>,
    /// Where the next page starts (after this key); `None` when done.
    pub next_after: Option<String>,
    pub consistency: Consistency,
    /// The nodes whose pages were merged.
    pub answered: Vec<String>,
}

impl Coordinator {
    /// Lists one page of `query`'s range: every node is asked for its
    /// records there (nodes believed down are not called), and a key counts
    /// only when `consistency` of its owners answered, or the page is 503.
    pub async fn list(
        self: &Arc<Self>,
        query: &ListQuery,
        consistency: Consistency,
    ) -> Result<ListReport, CoordError> {
        Stats::add(&self.stats.lists, 1);
        let view = self.view();
        let nodes: Vec<String> = view.placement.nodes();
        let down = self.replicas.io.believed_down(&nodes);
        let request = Arc::new(RangeRequest {
            range: query.range.clone(),
            limit: query.limit,
        });
        let mut calls = JoinSet::new();
        for node in nodes.iter().filter(|n| !down.contains(n)) {
            let this = Arc::clone(self);
            let request = Arc::clone(&request);
            let node = node.clone();
            calls.spawn(async move {
                let page = this.replicas.io.range_on(&node, &request).await;
                (node, page)
            });
        }
        let mut pages: BTreeMap<String, NodePage> = BTreeMap::new();
        let mut failed: Vec<ReplicaFailure> = Vec::new();
        while let Some(joined) = calls.join_next().await {
            match joined {
                Ok((node, Ok(page))) => {
                    pages.insert(node, page);
                }
                Ok((node, Err(error))) => {
                    debug!(%node, %error, "listing page failed");
                    failed.push(ReplicaFailure {
                        node,
                        kind: error.kind,
                    });
                }
                Err(join_error) => warn!(%join_error, "listing call task failed"),
            }
        }
        // As a read: a version beyond this node's drift bound is one the
        // other replicas refuse, so it is neither listed nor repaired.
        let clock = &self.replicas.io.clock;
        let reference_ms = self.replicas.io.reference_now_ms();
        for page in pages.values_mut() {
            let before = page.records.len();
            page.records
                .retain(|(_, r)| clock.check_at(r.version.ts, reference_ms).is_ok());
            let dropped = (before - page.records.len()) as u64;
            if dropped > 0 {
                Stats::add(&self.stats.refused_versions, dropped);
            }
        }
        let required =
            consistency.required(self.cfg.replication_factor.min(view.placement.ring().len()));
        let bounds = PageBounds {
            items: query.limit,
            bytes: LIST_PAGE_BYTES_MAX,
        };
        let merged = merge_pages(
            &pages,
            |key| {
                view.placement
                    .read_replicas(key)
                    .into_iter()
                    .map(str::to_owned)
                    .collect()
            },
            required,
            bounds,
            reference_ms,
        )
        .map_err(|short| {
            Stats::add(&self.stats.unavailable, 1);
            let answered = short
                .owners
                .iter()
                .filter(|o| pages.contains_key(*o))
                .cloned()
                .collect();
            let failed = failed
                .iter()
                .filter(|f| short.owners.contains(&f.node))
                .map(NodeFailure::from)
                .chain(
                    down.iter()
                        .filter(|n| short.owners.contains(n))
                        .map(|n| NodeFailure {
                            node: n.clone(),
                            code: "down",
                            error: "believed down by this node; not asked",
                        }),
                )
                .collect();
            CoordError::Unavailable(Box::new(Unavailable {
                operation: "list",
                consistency,
                required: short.required,
                replicas: short.owners,
                answered,
                failed,
                stored_on: Vec::new(),
                queued_for: Vec::new(),
                hinted_for: Vec::new(),
            }))
        })?;
        for (node, key, record) in merged.repairs {
            self.spawn_repair(node, key, record);
        }
        Ok(ListReport {
            items: merged.items,
            next_after: merged.next_after,
            consistency,
            answered: pages.into_keys().collect(),
        })
    }
}
