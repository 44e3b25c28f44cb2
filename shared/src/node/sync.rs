//! Anti-entropy: compare hash trees with a peer and pull only the records of
//! the leaves that differ; the start-up restore (`try_restore`) is one such
//! exchange with every peer.

use std::sync::Arc;

use serde::Serialize;
use tracing::{info, warn};

use super::hints::SCAN_PAGE_LEN;
use super::stats::Stats;
use super::{CoordError, Coordinator};
use crate::clock::{lock, now_ms};
use crate::core::limits::SYNC_BATCH_RECORDS_MAX;
use crate::core::merkle::{Summary, bucket_of, shared_by};
use crate::core::message::{ApplyStatus, KeyedRecord};
use crate::core::record::Record;
use crate::storage::{Space, StoreError};

/// Per-peer outcome of an anti-entropy exchange.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestorePeerReport {
    pub node: String,
    /// Records both nodes should hold, as summarised here and on the peer.
    pub local_records: u64,
    pub peer_records: u64,
    /// Leaves of the hash tree that differed (0 when the roots matched).
    pub leaves_differing: u64,
    /// Records received from the peer (those of differing leaves only).
    pub received: u64,
    /// Of those, records newer than the local copy, now stored.
    pub stored: u64,
    /// Records refused (version too far in the future).
    pub refused: u64,
    /// Approximate bytes of the records received (keys, versions, values).
    pub bytes_received: u64,
    pub error: Option<String>,
}

/// Outcome of pulling this node's data from its peers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreReport {
    pub node: String,
    pub leaves_differing: u64,
    pub received: u64,
    /// Records newer than the local copy, now stored.
    pub stored: u64,
    pub refused: u64,
    pub bytes_received: u64,
    /// Peers that answered.
    pub peers_synced: u64,
    pub peers: Vec<RestorePeerReport>,
    pub elapsed_ms: u64,
}

/// Where this node's start-up restore stands.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum RestoreState {
    Idle,
    Restoring { started_ms: u64 },
    Ready { report: RestoreReport },
    Failed { error: String },
}

impl Coordinator {
    /// Pulls, from every peer (or only `from`), the records this node should
    /// hold and that differ, by comparing hash trees (anti-entropy).
    pub async fn restore(
        self: &Arc<Self>,
        from: Option<String>,
    ) -> Result<RestoreReport, CoordError> {
        let started = now_ms();
        let sources: Vec<String> = match from {
            Some(node) if node != self.cfg.node_id && self.cfg.nodes.contains_key(&node) => {
                vec![node]
            }
            Some(node) => return Err(CoordError::UnknownNode(node)),
            None => self
                .cfg
                .nodes
                .keys()
                .filter(|n| **n != self.cfg.node_id)
                .cloned()
                .collect(),
        };
        let mut report = RestoreReport {
            node: self.cfg.node_id.clone(),
            ..RestoreReport::default()
        };
        for source in sources {
            let peer = self.sync_from(&source).await?;
            if peer.error.is_none() {
                report.peers_synced += 1;
            }
            report.leaves_differing += peer.leaves_differing;
            report.received += peer.received;
            report.stored += peer.stored;
            report.refused += peer.refused;
            report.bytes_received += peer.bytes_received;
            report.peers.push(peer);
        }
        report.elapsed_ms = now_ms().saturating_sub(started);
        Stats::add(&self.stats.anti_entropy_runs, 1);
        Stats::add(&self.stats.anti_entropy_stored, report.stored);
        Ok(report)
    }

    /// Visits every local record of `space`, page by page.
    async fn for_each_local(
        &self,
        space: &Space,
        mut visit: impl FnMut(String, Record),
    ) -> Result<(), StoreError> {
        let mut cursor = 0;
        loop {
            let page = self.store().scan_in(space, cursor, SCAN_PAGE_LEN).await?;
            for (key, record) in page.records {
                visit(key, record);
            }
            if page.next_cursor == 0 {
                return Ok(());
            }
            cursor = page.next_cursor;
        }
    }

    /// The hash tree of the local records that both this node and `peer`
    /// should hold.
    pub async fn summary_for(&self, peer: &str) -> Result<Summary, StoreError> {
        let n = self.cfg.replication_factor;
        let me = self.cfg.node_id.as_str();
        let mut summary = Summary::default();
        self.for_each_local(&Space::Data, |key, record| {
            if shared_by(&self.ring, n, &key, me, peer) {
                summary.add(&key, &record.version);
            }
        })
        .await?;
        Ok(summary)
    }

    /// One page of the local records of the given leaves that both this node
    /// and `peer` should hold: scans from `cursor` until about
    /// [`SYNC_BATCH_RECORDS_MAX`] records are found; returns them and the
    /// cursor to continue from (0 = done). One pass over the store in all.
    pub async fn bucket_records_for(
        &self,
        peer: &str,
        buckets: &[u16],
        mut cursor: u64,
    ) -> Result<(Vec<KeyedRecord>, u64), StoreError> {
        let n = self.cfg.replication_factor;
        let me = self.cfg.node_id.as_str();
        let wanted: std::collections::BTreeSet<u16> = buckets.iter().copied().collect();
        let mut out = Vec::new();
        loop {
            let page = self
                .store()
                .scan_in(&Space::Data, cursor, SCAN_PAGE_LEN)
                .await?;
            for (key, record) in page.records {
                if wanted.contains(&bucket_of(&key)) && shared_by(&self.ring, n, &key, me, peer) {
                    out.push(KeyedRecord { key, record });
                }
            }
            cursor = page.next_cursor;
            if cursor == 0 || out.len() >= SYNC_BATCH_RECORDS_MAX {
                return Ok((out, cursor));
            }
        }
    }

    /// One anti-entropy exchange: compare trees with `peer`, then page
    /// through the peer's records of the differing leaves (one pass over its
    /// store) and store the newer ones.
    pub async fn sync_from(&self, peer: &str) -> Result<RestorePeerReport, CoordError> {
        let mut report = RestorePeerReport {
            node: peer.to_owned(),
            ..RestorePeerReport::default()
        };
        let theirs = match self
            .replicas
            .io
            .tracked(peer, self.replicas.io.peers.merkle(peer))
            .await
        {
            Ok(response) => response.summary,
            Err(error) => {
                report.error = Some(error.kind.message().to_owned());
                warn!(%peer, %error, "anti-entropy exchange failed");
                return Ok(report);
            }
        };
        let ours = self.summary_for(peer).await?;
        report.local_records = ours.records();
        report.peer_records = theirs.records();
        let differing = ours.diff(&theirs);
        report.leaves_differing = differing.len() as u64;
        // Leaves the peer has records in (our extra records go the other way,
        // when the peer syncs from us).
        let wanted: Vec<u16> = differing
            .into_iter()
            .filter(|b| theirs.leaves.get(b).is_some_and(|l| l.count > 0))
            .collect();
        if wanted.is_empty() {
            return Ok(report);
        }
        let mut cursor = 0u64;
        loop {
            let call = self.replicas.io.peers.buckets(peer, wanted.clone(), cursor);
            let (records, next_cursor) = match self.replicas.io.tracked(peer, call).await {
                Ok(response) => (response.records, response.next_cursor),
                Err(error) => {
                    report.error = Some(error.kind.message().to_owned());
                    warn!(%peer, %error, "anti-entropy exchange failed");
                    return Ok(report);
                }
            };
            report.received += records.len() as u64;
            report.bytes_received += records
                .iter()
                .map(|kr| {
                    let value_len = kr.record.value.as_ref().map_or(0, |v| v.get().len());
                    (kr.key.len() + kr.record.version.to_string().len() + value_len) as u64
                })
                .sum::<u64>();
            for status in self.replicas.io.apply_local(records).await? {
                match status {
                    ApplyStatus::Stored => report.stored += 1,
                    ApplyStatus::Unchanged => {}
                    ApplyStatus::Refused => report.refused += 1,
                }
            }
            if next_cursor == 0 {
                return Ok(report);
            }
            cursor = next_cursor;
        }
    }

    /// The start-up restore (`try_restore`): pull what this node should hold
    /// from its peers, recording progress for `/cluster/` and the logs.
    pub async fn try_restore(self: &Arc<Self>) {
        *lock(&self.restore_state) = RestoreState::Restoring {
            started_ms: now_ms(),
        };
        info!(node = %self.cfg.node_id, "restore from peers started");
        let state = match self.restore(None).await {
            Ok(report) => {
                info!(
                    node = %self.cfg.node_id,
                    peers_synced = report.peers_synced,
                    leaves_differing = report.leaves_differing,
                    received = report.received,
                    bytes_received = report.bytes_received,
                    stored = report.stored,
                    elapsed_ms = report.elapsed_ms,
                    "restore from peers finished"
                );
                RestoreState::Ready { report }
            }
            Err(error) => {
                warn!(node = %self.cfg.node_id, %error, "restore from peers failed");
                RestoreState::Failed {
                    error: error.to_string(),
                }
            }
        };
        *lock(&self.restore_state) = state;
    }
}
