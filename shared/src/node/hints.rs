//! Hinted handoff: records kept for an owner that could not be reached,
//! within bounds, and their delivery once it answers.

use tracing::{debug, info, warn};

use super::Node;
use super::replicas::ReplicaIo;
use super::stats::Stats;
use crate::clock::now_ms;
use crate::core::limits::APPLY_BATCH_LEN_MAX;
use crate::core::message::{ApplyStatus, KeyedRecord};
use crate::core::record::Record;
use crate::keyspace::hint_since_key;
use crate::storage::{Space, StoreError};

/// Records read per page when a node scans its own store.
pub const SCAN_PAGE_LEN: usize = 1000;

impl ReplicaIo {
    /// Keeps records as hints for `owner` on this node, within the bounds:
    /// at most `hints_per_node_max` per owner, and only while the owner has
    /// been missing for less than `hint_window` (past it, anti-entropy
    /// repairs instead, as Cassandra's `max_hint_window`). Returns whether kept.
    pub async fn keep_hint(&self, owner: &str, records: Vec<KeyedRecord>) -> bool {
        match self.store_hints(owner, records).await {
            Ok(true) => true,
            Ok(false) => {
                Stats::add(&self.stats.hints_dropped, 1);
                false
            }
            Err(error) => {
                Stats::add(&self.stats.hints_dropped, 1);
                warn!(%owner, %error, "cannot keep a hint");
                false
            }
        }
    }

    async fn store_hints(
        &self,
        owner: &str,
        records: Vec<KeyedRecord>,
    ) -> Result<bool, StoreError> {
        let space = Space::Hints(owner.to_owned());
        let now = now_ms();
        let since_key = hint_since_key(&self.cfg.node_id, owner);
        let since: Option<u64> = self
            .store
            .get_plain(&since_key)
            .await?
            .and_then(|s| s.parse().ok());
        let window_ms = u64::try_from(self.cfg.hint_window.as_millis()).unwrap_or(u64::MAX);
        if let Some(since) = since
            && now.saturating_sub(since) > window_ms
        {
            warn!(%owner, "owner missing longer than the hint window; not keeping a hint (anti-entropy will repair)");
            return Ok(false);
        }
        let held = self.store.count_in(&space).await?;
        if held.saturating_add(records.len() as u64) > self.cfg.hints_per_node_max {
            warn!(%owner, held, "hint store for owner is full; not keeping a hint (anti-entropy will repair)");
            return Ok(false);
        }
        if since.is_none() {
            self.store
                .set_plain(&[(since_key, now.to_string())])
                .await?;
        }
        let pairs: Vec<(String, Record)> =
            records.into_iter().map(|kr| (kr.key, kr.record)).collect();
        self.store.apply_in(&space, &pairs).await?;
        Stats::add(&self.stats.hints_kept, pairs.len() as u64);
        Ok(true)
    }

    /// Keeps records as hints for `owner` (this node is a sloppy-quorum
    /// fallback). All are stored, or all refused when the hint bounds are hit.
    pub async fn apply_local_as_hint(
        &self,
        owner: &str,
        records: Vec<KeyedRecord>,
    ) -> Result<Vec<ApplyStatus>, StoreError> {
        let len = records.len();
        let reference_ms = self.reference_now_ms();
        let in_bounds = records.iter().all(|kr| {
            self.clock
                .check_at(kr.record.version.ts, reference_ms)
                .is_ok()
        });
        if !self.view().topology.nodes.contains_key(owner)
            || owner == self.cfg.node_id
            || !in_bounds
        {
            return Ok(vec![ApplyStatus::Refused; len]);
        }
        let kept = self.store_hints(owner, records).await?;
        let status = if kept {
            ApplyStatus::Stored
        } else {
            ApplyStatus::Refused
        };
        Ok(vec![status; len])
    }
}

impl Node {
    /// Delivers one page of hints to `owner` (`None`: it did not answer).
    /// Hints older than the tombstone grace are dropped, not delivered: GC
    /// may have collected a delete they would undo. Hints the owner refused
    /// (beyond its clock's drift bound) are dropped and dead-lettered.
    async fn deliver_page(
        &self,
        owner: &str,
        space: &Space,
        records: Vec<(String, Record)>,
    ) -> Result<Option<u64>, StoreError> {
        let io = &self.replicas.io;
        let grace_ms = u64::try_from(self.cfg.tombstone_grace.as_millis()).unwrap_or(u64::MAX);
        let horizon_ms = now_ms().saturating_sub(grace_ms);
        let (expired, fresh): (Vec<_>, Vec<_>) = records
            .into_iter()
            .partition(|(_, r)| r.version.ts.wall_ms < horizon_ms);
        if !expired.is_empty() {
            let dropped = io.store.remove_if_same(space, &expired).await?;
            Stats::add(&io.stats.hints_expired, dropped);
            warn!(%owner, dropped, "dropped hints older than the tombstone grace (anti-entropy repairs)");
        }
        if fresh.is_empty() {
            return Ok(Some(0));
        }
        let batch: Vec<KeyedRecord> = fresh
            .iter()
            .map(|(key, record)| KeyedRecord {
                key: key.clone(),
                record: record.clone(),
            })
            .collect();
        let Ok(statuses) = io.apply_on(owner, batch).await else {
            return Ok(None);
        };
        if statuses.len() != fresh.len() {
            return Ok(None);
        }
        let (accepted, refused): (Vec<_>, Vec<_>) = fresh
            .into_iter()
            .zip(statuses)
            .partition(|(_, status)| *status != ApplyStatus::Refused);
        if !refused.is_empty() {
            // The owner refused these versions as beyond its clock's drift
            // bound. They are not kept for later: once real time passed
            // them they would win over writes made after them. The records
            // live on the replicas that acknowledged them; anti-entropy
            // repairs the owner once the clocks agree.
            let refused: Vec<(String, Record)> = refused.into_iter().map(|(r, _)| r).collect();
            let dropped = io.store.remove_if_same(space, &refused).await?;
            Stats::add(&io.stats.hints_refused, dropped);
            warn!(%owner, refused = refused.len(), "owner refused hints (clock drift); dead-lettered");
            if let Some(queues) = &self.queues {
                let versions: Vec<String> = refused
                    .iter()
                    .map(|(k, r)| format!("{k}@{}", r.version))
                    .collect();
                let reason =
                    format!("{owner} refused these hints: version beyond its clock drift bound");
                if let Err(error) = queues.dead_letter_job("hints", 1, reason, &versions).await {
                    warn!(%error, "cannot record refused hints as a dead letter");
                }
            }
        }
        // The owner no longer holds these keys (a membership change since
        // the write): they go to the keys' holders now, then are dropped.
        for ((key, record), _) in accepted.iter().filter(|(_, s)| *s == ApplyStatus::NotHeld) {
            for holder in self.holders(key).into_iter().filter(|h| h != owner) {
                let batch = vec![KeyedRecord {
                    key: key.clone(),
                    record: record.clone(),
                }];
                if let Err(error) = io.apply_on(&holder, batch).await {
                    debug!(%key, %holder, %error, "re-routed hint not delivered; anti-entropy repairs");
                }
            }
        }
        let accepted: Vec<(String, Record)> = accepted.into_iter().map(|(r, _)| r).collect();
        let removed = io.store.remove_if_same(space, &accepted).await?;
        Stats::add(&io.stats.hints_delivered, removed);
        Ok(Some(removed))
    }

    /// Delivers the hints this node keeps to their owners that answer, in
    /// batches; each delivered hint is removed only if it was not replaced
    /// meanwhile. Returns how many records were delivered.
    pub async fn deliver_hints(&self) -> Result<u64, StoreError> {
        let io = &self.replicas.io;
        let mut delivered = 0u64;
        let view = self.view();
        for owner in view
            .topology
            .nodes
            .keys()
            .filter(|n| **n != self.cfg.node_id)
        {
            let space = Space::Hints(owner.clone());
            if io.store.count_in(&space).await? == 0 {
                continue;
            }
            let mut cursor = 0;
            loop {
                let page = io
                    .store
                    .scan_in(&space, cursor, SCAN_PAGE_LEN.min(APPLY_BATCH_LEN_MAX))
                    .await?;
                if !page.records.is_empty() {
                    let removed = self.deliver_page(owner, &space, page.records).await?;
                    let Some(removed) = removed else {
                        break; // still down; try again next round
                    };
                    delivered += removed;
                }
                if page.next_cursor == 0 {
                    break;
                }
                cursor = page.next_cursor;
            }
            if io.store.count_in(&space).await? == 0 {
                io.store
                    .delete_plain(&hint_since_key(&self.cfg.node_id, owner))
                    .await?;
                info!(%owner, "all hints delivered");
            }
        }
        Ok(delivered)
    }
}
