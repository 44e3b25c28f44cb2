//! Anti-entropy: compare hash trees with a peer and pull only the records of
//! the leaves that differ; the start-up restore (`try_restore`) is one such
//! exchange with every peer, retried with backoff until every peer synced.
//!
//! The trees are kept current by every write (`core::merkle`, the storage
//! scripts), so an exchange costs a read of the tree (at most 65,536 small
//! entries) and the records of the leaves that differ — never a scan of the
//! store. Two identical nodes exchange the middle level of their trees (a
//! few KB) and stop there. Every call has a timeout sized to a bounded page
//! ([`SYNC_CALL_TIMEOUT_MS`]); every answer is bounded in bytes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::members::View;
use super::stats::Stats;
use super::{CoordError, Coordinator, Node};
use crate::clock::{lock, now_ms};
use crate::core::limits::{
    INTERNAL_ANSWER_BYTES_MAX, SYNC_LEAVES_PER_REQUEST_MAX, SYNC_PAGE_RECORDS_MAX,
};
use crate::core::merkle::{Sharing, Tree, differing, shared_by, sharing_table};
use crate::core::message::{ApplyStatus, KeyedRecord, MerkleResponse};
use crate::storage::StoreError;

pub use crate::core::limits::SYNC_CALL_TIMEOUT_MS;

/// First pause before a start-up restore that did not reach every peer is
/// tried again; it doubles up to [`RESTORE_RETRY_MAX_MS`].
pub const RESTORE_RETRY_FIRST_MS: u64 = 1_000;
pub const RESTORE_RETRY_MAX_MS: u64 = 60_000;

/// Per-peer outcome of an anti-entropy exchange.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RestorePeerReport {
    pub node: String,
    /// Records both nodes should hold, as summarised here and on the peer.
    pub local_records: u64,
    pub peer_records: u64,
    /// Leaves of the hash tree that differed (0 when the trees matched).
    pub leaves_differing: u64,
    /// Of those, the leaves (ranges of the hash space) the peer has records
    /// in, to pull; and those whose records were all received.
    pub leaves_wanted: u64,
    pub leaves_pulled: u64,
    /// Records received from the peer (those of differing leaves only).
    pub received: u64,
    /// Of those, records newer than the local copy, now stored.
    pub stored: u64,
    /// Records refused (version too far in the future).
    pub refused: u64,
    /// Approximate bytes of the records received (keys, versions, values).
    pub bytes_received: u64,
    /// Bytes of every answer of the peer in the exchange (trees and pages).
    pub answer_bytes: u64,
    pub error: Option<String>,
}

/// Outcome of pulling this node's data from its peers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RestoreReport {
    pub node: String,
    pub leaves_differing: u64,
    pub leaves_wanted: u64,
    pub leaves_pulled: u64,
    pub received: u64,
    /// Records newer than the local copy, now stored.
    pub stored: u64,
    pub refused: u64,
    pub bytes_received: u64,
    pub answer_bytes: u64,
    /// Peers that answered.
    pub peers_synced: u64,
    pub peers: Vec<RestorePeerReport>,
    pub elapsed_ms: u64,
}

impl RestoreReport {
    fn add(&mut self, peer: RestorePeerReport) {
        if peer.error.is_none() {
            self.peers_synced += 1;
        }
        self.leaves_differing += peer.leaves_differing;
        self.leaves_wanted += peer.leaves_wanted;
        self.leaves_pulled += peer.leaves_pulled;
        self.received += peer.received;
        self.stored += peer.stored;
        self.refused += peer.refused;
        self.bytes_received += peer.bytes_received;
        self.answer_bytes += peer.answer_bytes;
        self.peers.push(peer);
    }
}

/// Where this node's start-up restore stands. Only `ready` means every
/// peer was synced; `partial` and `failed` name what is missing and are
/// retried with backoff.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum RestoreState {
    Idle,
    Restoring {
        started_ms: u64,
        attempt: u32,
    },
    Ready {
        report: RestoreReport,
    },
    /// Some peers synced, others did not (named in `missing`).
    Partial {
        report: RestoreReport,
        missing: Vec<String>,
        attempt: u32,
        retry_in_ms: u64,
    },
    /// No peer synced, or this node's own storage failed.
    Failed {
        error: String,
        missing: Vec<String>,
        attempt: u32,
        retry_in_ms: u64,
    },
}

/// Which leaves each peer shares with this node, computed once per peer
/// and topology epoch.
#[derive(Default)]
pub struct SharingCache {
    tables: Mutex<BTreeMap<String, EpochTable>>,
}

/// A peer's sharing table and the topology epoch it was computed for.
type EpochTable = (u64, Arc<Vec<Sharing>>);

/// Approximate bytes of a record on the wire: key, version and value.
fn record_bytes(kr: &KeyedRecord) -> usize {
    kr.key.len() + 32 + kr.record.value.as_ref().map_or(0, |v| v.get().len())
}

impl Node {
    /// Pulls, from every peer (or only `from`), the records this node should
    /// hold and that differ, by comparing hash trees (anti-entropy).
    pub async fn restore(&self, from: Option<String>) -> Result<RestoreReport, CoordError> {
        let sources: Vec<String> = match from {
            Some(node) if self.peer_ids().contains(&node) => vec![node],
            Some(node) => return Err(CoordError::UnknownNode(node)),
            None => self.peer_ids(),
        };
        self.restore_paced(&sources, None, false).await
    }

    /// Every other node of the topology (owners now or next).
    pub(super) fn peer_ids(&self) -> Vec<String> {
        self.view().topology.peers_of(&self.cfg.node_id)
    }

    /// [`Node::restore`] from `sources`, at most `bytes_per_s` when given.
    pub(super) async fn restore_paced(
        &self,
        sources: &[String],
        bytes_per_s: Option<u64>,
        live: bool,
    ) -> Result<RestoreReport, CoordError> {
        let started = now_ms();
        let mut report = RestoreReport {
            node: self.cfg.node_id.clone(),
            ..RestoreReport::default()
        };
        for source in sources {
            let exchange = self.sync_paced(source, bytes_per_s, live).await;
            if live {
                // Whichever way the exchange ended, it is not in progress.
                *lock(&self.pulling) = None;
            }
            report.add(exchange?);
        }
        report.elapsed_ms = now_ms().saturating_sub(started);
        Stats::add(&self.stats.anti_entropy_runs, 1);
        Stats::add(&self.stats.anti_entropy_stored, report.stored);
        Ok(report)
    }

    /// Which leaves `peer` shares with this node in `view` (cached per
    /// peer and epoch).
    fn sharing_with(&self, view: &View, peer: &str) -> Arc<Vec<Sharing>> {
        let epoch = view.topology.epoch;
        if let Some((at, table)) = lock(&self.sharing.tables).get(peer)
            && *at == epoch
        {
            return Arc::clone(table);
        }
        let table = Arc::new(sharing_table(&view.placement, &self.cfg.node_id, peer));
        lock(&self.sharing.tables).insert(peer.to_owned(), (epoch, Arc::clone(&table)));
        table
    }

    /// The hash tree of the local records that both this node and `peer`
    /// should hold: the stored leaves that `peer` wholly shares, and the
    /// partly shared leaves digested from their shared records.
    pub async fn shared_tree(&self, peer: &str) -> Result<Tree, StoreError> {
        let view = self.view();
        let sharing = self.sharing_with(&view, peer);
        let mut whole = Vec::new();
        let mut part = Vec::new();
        for (leaf, value) in self.store().tree().await? {
            match sharing[usize::from(leaf)] {
                Sharing::Whole => whole.push((leaf, value)),
                Sharing::Part => part.push(leaf),
                Sharing::None => {}
            }
        }
        let mut tree = Tree::from_leaves(whole);
        let me = self.cfg.node_id.as_str();
        for records in self.store().leaf_records(&part).await? {
            for (key, record) in records {
                if shared_by(&view.placement, &key, me, peer) {
                    tree.add(&key, &record.version);
                }
            }
        }
        Ok(tree)
    }

    /// The answer to a peer's `/internal/merkle`: the middle nodes of the
    /// tree shared with it, or the leaves under the given middle nodes.
    pub async fn merkle_for(
        &self,
        peer: &str,
        mids: Option<&[u8]>,
    ) -> Result<MerkleResponse, StoreError> {
        let tree = self.shared_tree(peer).await?;
        let (mids, leaves) = match mids {
            None => (tree.mids(), BTreeMap::new()),
            Some(under) => (BTreeMap::new(), tree.leaves_under(under)),
        };
        Ok(MerkleResponse {
            node: self.cfg.node_id.clone(),
            records: tree.records(),
            mids,
            leaves,
        })
    }

    /// One page of the local records of the given leaves that both this node
    /// and `peer` should hold, from leaf index `cursor` on, whole leaves at a
    /// time, bounded by [`INTERNAL_ANSWER_BYTES_MAX`] and
    /// [`SYNC_PAGE_RECORDS_MAX`] (a single leaf beyond them still goes);
    /// returns them and the index to continue from (0 = done).
    pub async fn bucket_records_for(
        &self,
        peer: &str,
        leaves: &[u16],
        cursor: u64,
    ) -> Result<(Vec<KeyedRecord>, u64), StoreError> {
        let view = self.view();
        let sharing = self.sharing_with(&view, peer);
        let me = self.cfg.node_id.as_str();
        let mut index = usize::try_from(cursor).unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while index < leaves.len() {
            // A few leaves per read: most pages end within them.
            let group = &leaves[index..leaves.len().min(index + 16)];
            let wanted: Vec<u16> = group
                .iter()
                .copied()
                .filter(|l| sharing[usize::from(*l)] != Sharing::None)
                .collect();
            let mut records = self.store().leaf_records(&wanted).await?.into_iter();
            for leaf in group {
                index += 1;
                if sharing[usize::from(*leaf)] == Sharing::None {
                    continue;
                }
                for (key, record) in records.next().into_iter().flatten() {
                    if sharing[usize::from(*leaf)] == Sharing::Part
                        && !shared_by(&view.placement, &key, me, peer)
                    {
                        continue;
                    }
                    let kr = KeyedRecord { key, record };
                    bytes += record_bytes(&kr);
                    out.push(kr);
                }
                if bytes >= INTERNAL_ANSWER_BYTES_MAX || out.len() >= SYNC_PAGE_RECORDS_MAX {
                    let next = if index < leaves.len() {
                        index as u64
                    } else {
                        0
                    };
                    return Ok((out, next));
                }
            }
        }
        Ok((out, 0))
    }

    /// One anti-entropy exchange: compare middle nodes with `peer`, then
    /// the leaves under those that differ, then page through the peer's
    /// records of the differing leaves and store the newer ones.
    pub async fn sync_from(&self, peer: &str) -> Result<RestorePeerReport, CoordError> {
        self.sync_paced(peer, None, false).await
    }

    /// [`Node::sync_from`], pausing between pages so that the records
    /// received stay under `bytes_per_s` on average, when given.
    async fn sync_paced(
        &self,
        peer: &str,
        bytes_per_s: Option<u64>,
        live: bool,
    ) -> Result<RestorePeerReport, CoordError> {
        let started = std::time::Instant::now();
        let mut report = RestorePeerReport {
            node: peer.to_owned(),
            ..RestorePeerReport::default()
        };
        let io = &self.replicas.io;
        let fail = |mut report: RestorePeerReport, error: super::ReplicaError| {
            report.error = Some(error.kind.message().to_owned());
            warn!(%peer, %error, "anti-entropy exchange failed");
            report
        };
        let theirs = match io.tracked(peer, io.peers.merkle(peer, None)).await {
            Ok((answer, bytes)) => {
                report.answer_bytes += bytes as u64;
                answer
            }
            Err(error) => return Ok(fail(report, error)),
        };
        let ours = self.shared_tree(peer).await?;
        report.local_records = ours.records();
        report.peer_records = theirs.records;
        let mids = differing(&ours.mids(), &theirs.mids);
        if mids.is_empty() {
            return Ok(report);
        }
        let theirs = match io
            .tracked(peer, io.peers.merkle(peer, Some(mids.clone())))
            .await
        {
            Ok((answer, bytes)) => {
                report.answer_bytes += bytes as u64;
                answer.leaves
            }
            Err(error) => return Ok(fail(report, error)),
        };
        let ours = ours.leaves_under(&mids);
        let leaves = differing(&ours, &theirs);
        report.leaves_differing = leaves.len() as u64;
        // Leaves the peer has records in (our extra records go the other
        // way, when the peer syncs from us).
        let wanted: Vec<u16> = leaves
            .into_iter()
            .filter(|l| theirs.get(l).is_some_and(|leaf| leaf.count > 0))
            .collect();
        report.leaves_wanted = wanted.len() as u64;
        let show = |report: &RestorePeerReport| {
            if live {
                *lock(&self.pulling) = Some(report.clone());
            }
        };
        show(&report);
        for chunk in wanted.chunks(SYNC_LEAVES_PER_REQUEST_MAX) {
            let mut cursor = 0u64;
            loop {
                let call = io.peers.buckets(peer, chunk.to_vec(), cursor);
                let (records, next) = match io.tracked(peer, call).await {
                    Ok((answer, bytes)) => {
                        report.answer_bytes += bytes as u64;
                        (answer.records, answer.next_cursor)
                    }
                    Err(error) => return Ok(fail(report, error)),
                };
                report.received += records.len() as u64;
                report.bytes_received += records.iter().map(record_bytes).sum::<usize>() as u64;
                for status in io.apply_local(records).await? {
                    match status {
                        ApplyStatus::Stored => report.stored += 1,
                        ApplyStatus::Unchanged | ApplyStatus::NotHeld => {}
                        ApplyStatus::Refused => report.refused += 1,
                    }
                }
                show(&report);
                if let Some(rate) = bytes_per_s.filter(|r| *r > 0) {
                    let due = Duration::from_secs_f64(report.bytes_received as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
                if next == 0 || next <= cursor {
                    break;
                }
                cursor = next;
            }
            report.leaves_pulled += chunk.len() as u64;
            show(&report);
        }
        Ok(report)
    }
}

impl Node {
    /// The paced exchange (a membership change's pull) in progress now:
    /// the peer, the leaves (hash ranges) to pull and pulled, records and
    /// bytes so far; `None` when none runs.
    pub fn pulling(&self) -> Option<RestorePeerReport> {
        lock(&self.pulling).clone()
    }
}

impl Coordinator {
    /// The start-up restore (`try_restore`): pull what this node should hold
    /// from every peer, recording progress for `/cluster/` and the logs.
    /// Peers that could not be synced are tried again with backoff until
    /// every one has been; only then is the state `ready`.
    pub async fn try_restore(self: &Arc<Self>) {
        let started = now_ms();
        let mut missing = self.peer_ids();
        let mut total = RestoreReport {
            node: self.cfg.node_id.clone(),
            ..RestoreReport::default()
        };
        let mut delay_ms = RESTORE_RETRY_FIRST_MS;
        info!(node = %self.cfg.node_id, peers = missing.len(), "restore from peers started");
        for attempt in 1u32.. {
            Stats::add(&self.stats.restore_attempts, 1);
            *lock(&self.restore_state) = RestoreState::Restoring {
                started_ms: started,
                attempt,
            };
            let mut still = Vec::new();
            let mut error = None;
            let stored_before = total.stored;
            for peer in &missing {
                match self.sync_from(peer).await {
                    Ok(report) => {
                        if report.error.is_some() {
                            still.push(peer.clone());
                        }
                        total.add(report);
                    }
                    Err(e) => {
                        still.push(peer.clone());
                        error = Some(e.to_string());
                    }
                }
            }
            total.elapsed_ms = now_ms().saturating_sub(started);
            Stats::add(&self.stats.anti_entropy_runs, 1);
            Stats::add(
                &self.stats.anti_entropy_stored,
                total.stored - stored_before,
            );
            if still.is_empty() {
                info!(
                    node = %self.cfg.node_id,
                    attempts = attempt,
                    leaves_differing = total.leaves_differing,
                    received = total.received,
                    bytes_received = total.bytes_received,
                    stored = total.stored,
                    elapsed_ms = total.elapsed_ms,
                    "restore from peers finished"
                );
                *lock(&self.restore_state) = RestoreState::Ready { report: total };
                return;
            }
            let synced_any = total.peers_synced > 0;
            warn!(node = %self.cfg.node_id, attempt, missing = ?still, retry_in_ms = delay_ms, "restore incomplete; retrying");
            *lock(&self.restore_state) = match error {
                Some(error) => RestoreState::Failed {
                    error,
                    missing: still.clone(),
                    attempt,
                    retry_in_ms: delay_ms,
                },
                None if synced_any => RestoreState::Partial {
                    report: total.clone(),
                    missing: still.clone(),
                    attempt,
                    retry_in_ms: delay_ms,
                },
                None => RestoreState::Failed {
                    error: "no peer could be synced".to_owned(),
                    missing: still.clone(),
                    attempt,
                    retry_in_ms: delay_ms,
                },
            };
            missing = still;
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            delay_ms = (delay_ms * 2).min(RESTORE_RETRY_MAX_MS);
        }
    }
}
