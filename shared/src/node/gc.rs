//! Tombstone collection, in two phases as Garage's `TableGc` does, so a
//! deleted key cannot come back (Riak's kv679). An expired value is a
//! tombstone from its `expires_at` on and is collected the same way:
//!
//! 1. Every other replica of the key is sent the tombstone (an apply: it
//!    stores it, or already holds it or something newer). A replica that
//!    holds nothing is *given* the tombstone rather than trusted — it may
//!    be a node that returned empty and has not restored yet.
//! 2. Only when every replica holds it, the tombstone is removed on every
//!    replica where it is still exactly that record (`/internal/collect`),
//!    then here. A replica that misses this keeps its tombstone and
//!    collects it later the same way; nothing is ever deleted that a
//!    replica does not know to be deleted.
//!
//! Candidates come from the tombstone index the storage scripts keep (the
//! oldest first, only those past the grace period), so a round never scans
//! the store. A round takes at most [`GC_BATCH_LEN_MAX`] and resumes where
//! the last one stopped (the position is kept in Redis, so whichever
//! process runs the next round continues); calls are chunked by the
//! internal bounds, and a failed chunk keeps only its own tombstones. What
//! makes the grace period safe against late writes is the rule that hints
//! and queued jobs older than the grace are never delivered (see
//! [`super::hints`] and `work::replicate`).

use std::collections::BTreeMap;

use tracing::debug;

use super::Node;
use super::stats::Stats;
use crate::clock::now_ms;
use crate::core::limits::{APPLY_BATCH_LEN_MAX, GC_BATCH_LEN_MAX};
use crate::core::message::{ApplyStatus, KeyedRecord};
use crate::core::record::Record;
use crate::keyspace::gc_cursor_key;
use crate::storage::{Space, StoreError};

/// Where a round resumes: the delete time (ms) of the next tombstone, and
/// how many of those with that time the last round already took.
type GcCursor = (u64, usize);

fn parse_cursor(text: &str) -> Option<GcCursor> {
    let (ms, skip) = text.split_once(':')?;
    Some((ms.parse().ok()?, skip.parse().ok()?))
}

/// The cursor after a round that took `found` (ascending by time) from `from`.
fn next_cursor(from: GcCursor, found: &[(String, u64)], limit: usize) -> GcCursor {
    let Some((_, last)) = found.last() else {
        return (0, 0);
    };
    if found.len() < limit {
        // The end of the collectable tombstones: start again from the oldest.
        return (0, 0);
    }
    let same = found.iter().filter(|(_, ms)| ms == last).count();
    if *last == from.0 {
        (*last, from.1 + same)
    } else {
        (*last, same)
    }
}

impl Node {
    /// One collection round; returns how many tombstones were removed here.
    pub async fn collect_tombstones(&self) -> Result<u64, StoreError> {
        let grace_ms = u64::try_from(self.cfg.tombstone_grace.as_millis()).unwrap_or(u64::MAX);
        let horizon_ms = now_ms().saturating_sub(grace_ms);
        Stats::add(&self.stats.gc_runs, 1);
        let store = self.store();
        let cursor_key = gc_cursor_key(&self.cfg.node_id);
        let mut from = store
            .get_plain(&cursor_key)
            .await?
            .as_deref()
            .and_then(parse_cursor)
            .unwrap_or((0, 0));
        let mut found = store.tombstones(from, horizon_ms, GC_BATCH_LEN_MAX).await?;
        if found.is_empty() && from != (0, 0) {
            from = (0, 0);
            found = store.tombstones(from, horizon_ms, GC_BATCH_LEN_MAX).await?;
        }
        let (ms, skip) = next_cursor(from, &found, GC_BATCH_LEN_MAX);
        store
            .set_plain(&[(cursor_key, format!("{ms}:{skip}"))])
            .await?;
        if found.is_empty() {
            return Ok(0);
        }
        // The records themselves, still deleted (a tombstone or an expired
        // value) before the horizon: a newer write may have replaced them.
        let keys: Vec<String> = found.into_iter().map(|(key, _)| key).collect();
        let candidates: Vec<KeyedRecord> = keys
            .iter()
            .zip(store.get_many(&keys).await?)
            .filter_map(|(key, record)| {
                record
                    .filter(|r| r.dead_since().is_some_and(|ms| ms < horizon_ms))
                    .map(|record| KeyedRecord {
                        key: key.clone(),
                        record,
                    })
            })
            .collect();
        let collectable = self.everywhere_held(&candidates).await;
        let by_node = self.other_replicas(&collectable);
        for (node, indexes) in &by_node {
            for chunk in indexes.chunks(APPLY_BATCH_LEN_MAX) {
                let batch: Vec<KeyedRecord> =
                    chunk.iter().map(|i| collectable[*i].clone()).collect();
                if let Err(error) = self.replicas.io.collect_on(node, batch).await {
                    debug!(%node, %error, keys = chunk.len(), "tombstone removal on a replica failed; it collects them later itself");
                }
            }
        }
        let pairs: Vec<(String, Record)> = collectable
            .into_iter()
            .map(|kr| (kr.key, kr.record))
            .collect();
        let removed = store.remove_if_same(&Space::Data, &pairs).await?;
        Stats::add(&self.stats.tombstones_collected, removed);
        Ok(removed)
    }

    /// For each candidate, the other holders of its key (by node): its
    /// replicas, and during a membership change both owner sets'.
    fn other_replicas(&self, candidates: &[KeyedRecord]) -> BTreeMap<String, Vec<usize>> {
        let mut by_node: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, kr) in candidates.iter().enumerate() {
            for node in self
                .holders(&kr.key)
                .into_iter()
                .filter(|n| *n != self.cfg.node_id)
            {
                by_node.entry(node).or_default().push(i);
            }
        }
        by_node
    }

    /// Phase 1: sends each tombstone to every other replica of its key and
    /// returns those that every replica now holds (or holds something newer).
    async fn everywhere_held(&self, candidates: &[KeyedRecord]) -> Vec<KeyedRecord> {
        let mut held = vec![true; candidates.len()];
        for (node, indexes) in self.other_replicas(candidates) {
            for chunk in indexes.chunks(APPLY_BATCH_LEN_MAX) {
                let batch: Vec<KeyedRecord> =
                    chunk.iter().map(|i| candidates[*i].clone()).collect();
                match self.replicas.io.apply_on(&node, batch).await {
                    Ok(statuses) if statuses.len() == chunk.len() => {
                        for (i, status) in chunk.iter().zip(statuses) {
                            if matches!(status, ApplyStatus::Refused | ApplyStatus::NotHeld) {
                                held[*i] = false;
                            }
                        }
                    }
                    outcome => {
                        debug!(%node, failed = outcome.is_err(), keys = chunk.len(), "tombstone check failed; keeping these tombstones");
                        for i in chunk {
                            held[*i] = false;
                        }
                    }
                }
            }
        }
        candidates
            .iter()
            .zip(held)
            .filter(|(_, ok)| *ok)
            .map(|(kr, _)| kr.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(ms: &[u64]) -> Vec<(String, u64)> {
        ms.iter().map(|m| (format!("k{m}"), *m)).collect()
    }

    #[test]
    fn the_cursor_resumes_after_the_last_batch_and_wraps_at_the_end() {
        // A short batch: everything collectable was seen; start over.
        assert_eq!(next_cursor((0, 0), &found(&[1, 2]), 3), (0, 0));
        assert_eq!(next_cursor((5, 1), &[], 3), (0, 0));
        // A full batch: resume at the last time, past those already taken.
        assert_eq!(next_cursor((0, 0), &found(&[1, 2, 2]), 3), (2, 2));
        // A full batch that all shares the cursor's time moves past it too,
        // so a run of equal times longer than a batch never stalls.
        assert_eq!(next_cursor((7, 3), &found(&[7, 7, 7]), 3), (7, 6));
        assert_eq!(parse_cursor("12:3"), Some((12, 3)));
        assert_eq!(parse_cursor("x"), None);
    }
}
