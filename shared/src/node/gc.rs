//! Tombstone collection: only after the grace period, and only tombstones
//! that every other replica of the key also holds (or has already
//! collected), so a deleted key cannot come back (Riak's kv679).
//!
//! Each round scans at most [`GC_SCAN_RECORDS_MAX`] records from where the
//! last round stopped, collects at most [`GC_BATCH_LEN_MAX`] candidates, and
//! asks each other replica about them in batches of at most
//! [`READ_BATCH_LEN_MAX`] keys (the internal read's own bound). A batch that
//! fails keeps only its own tombstones alive.

use std::collections::BTreeMap;

use tracing::debug;

use super::Coordinator;
use super::hints::SCAN_PAGE_LEN;
use super::stats::Stats;
use crate::clock::{lock, now_ms};
use crate::core::limits::{GC_BATCH_LEN_MAX, GC_SCAN_RECORDS_MAX, READ_BATCH_LEN_MAX};
use crate::core::record::Record;
use crate::storage::{Space, StoreError};

impl Coordinator {
    /// One collection round; returns how many tombstones were removed.
    pub async fn collect_tombstones(&self) -> Result<u64, StoreError> {
        let grace_ms = u64::try_from(self.cfg.tombstone_grace.as_millis()).unwrap_or(u64::MAX);
        let horizon_ms = now_ms().saturating_sub(grace_ms);
        Stats::add(&self.stats.gc_runs, 1);
        let candidates = self.gc_candidates(horizon_ms).await?;
        if candidates.is_empty() {
            return Ok(0);
        }
        // Group the keys by the other replicas to ask.
        let mut by_node: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, (key, _)) in candidates.iter().enumerate() {
            for node in self
                .replicas(key)
                .into_iter()
                .filter(|n| *n != self.cfg.node_id)
            {
                by_node.entry(node).or_default().push(i);
            }
        }
        let mut safe = vec![true; candidates.len()];
        for (node, indexes) in by_node {
            for chunk in indexes.chunks(READ_BATCH_LEN_MAX) {
                let keys: Vec<String> = chunk.iter().map(|i| candidates[*i].0.clone()).collect();
                match self.replicas.io.read_on(&node, keys).await {
                    Ok(records) if records.len() == chunk.len() => {
                        for (i, theirs) in chunk.iter().zip(records) {
                            // Safe only if that replica has nothing older than our tombstone.
                            if theirs.is_some_and(|t| t.version < candidates[*i].1.version) {
                                safe[*i] = false;
                            }
                        }
                    }
                    outcome => {
                        debug!(%node, failed = outcome.is_err(), keys = chunk.len(), "tombstone check batch failed; keeping its tombstones");
                        for i in chunk {
                            safe[*i] = false;
                        }
                    }
                }
            }
        }
        let collectable: Vec<(String, Record)> = candidates
            .into_iter()
            .zip(safe)
            .filter_map(|(c, ok)| ok.then_some(c))
            .collect();
        let removed = self
            .store()
            .remove_if_same(&Space::Data, &collectable)
            .await?;
        Stats::add(&self.stats.tombstones_collected, removed);
        Ok(removed)
    }

    /// Tombstones older than `horizon_ms`, scanned from where the last round
    /// stopped (bounded by [`GC_SCAN_RECORDS_MAX`] and [`GC_BATCH_LEN_MAX`]).
    async fn gc_candidates(&self, horizon_ms: u64) -> Result<Vec<(String, Record)>, StoreError> {
        let mut cursor = *lock(&self.gc_cursor);
        let mut scanned = 0usize;
        let mut candidates = Vec::new();
        loop {
            let page = self
                .store()
                .scan_in(&Space::Data, cursor, SCAN_PAGE_LEN)
                .await?;
            scanned += page.records.len();
            candidates.extend(page.records.into_iter().filter(|(_, record)| {
                record.is_tombstone() && record.version.ts.wall_ms < horizon_ms
            }));
            cursor = page.next_cursor;
            if cursor == 0 || candidates.len() >= GC_BATCH_LEN_MAX || scanned >= GC_SCAN_RECORDS_MAX
            {
                break;
            }
        }
        *lock(&self.gc_cursor) = cursor;
        Ok(candidates)
    }
}
