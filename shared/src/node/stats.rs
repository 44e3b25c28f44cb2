//! The node's work counters: one table, kept per process in atomics and
//! summed over every process of the node in its Redis.
//!
//! Work happens in the API process and in any number of workers (hint
//! delivery, GC and anti-entropy run in whichever worker takes the job). Each
//! process counts locally and [`Stats::flush`] adds what it counted since its
//! last flush to the node's counter hash (`kv:{node}:counters`); the API's
//! `/metrics` and `/cluster/` read [`Stats::node_wide`], the hash plus what
//! this process has not flushed yet. [`COUNTERS`] is the one list of names.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::lock;
use crate::storage::{Store, StoreError};

macro_rules! counters {
    ($($name:ident: $help:literal,)*) => {
        /// Counters of work done by this process (see the module docs).
        #[derive(Debug, Default)]
        pub struct Stats {
            $(#[doc = $help] pub $name: AtomicU64,)*
            /// What [`Stats::flush`] has already added to Redis, per counter.
            flushed: Mutex<BTreeMap<&'static str, u64>>,
        }

        /// Every counter: name and help text (for `/metrics`).
        pub const COUNTERS: &[(&str, &str)] = &[$((stringify!($name), $help),)*];

        impl Stats {
            /// This process's counts, in [`COUNTERS`] order.
            pub fn local(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    writes: "client writes coordinated",
    reads: "client reads coordinated",
    lists: "listing pages coordinated",
    unavailable: "operations answered 503: too few replicas",
    read_repairs: "stale replicas sent the newest record by a read",
    read_repairs_dropped: "read repairs dropped: too many in flight",
    refused_versions: "records refused: version beyond the clock drift bound",
    jobs_enqueued: "replication jobs queued",
    jobs_enqueue_failed: "replications that could not be queued (kept as hints)",
    hints_kept: "records kept as hints",
    hints_dropped: "hints not kept: bounds or errors",
    hints_delivered: "hints delivered to their owners",
    hints_expired: "hints dropped undelivered: older than the tombstone grace",
    hints_refused: "hints an owner refused (version beyond its clock drift bound)",
    jobs_expired: "replication jobs dropped: older than the tombstone grace",
    sloppy_writes: "writes acknowledged through a fallback (sloppy quorum)",
    writes_restamped: "writes stamped again above a newer version on a replica",
    min_version_found_beyond_replicas: "reads with min_version answered from a hint or a node the replicas asked did not include",
    writes_retracted: "failed writes taken back: replicas refused this node's stamp as from the future",
    peer_transitions: "peer health changes seen by this node",
    anti_entropy_runs: "anti-entropy rounds",
    anti_entropy_stored: "records stored by anti-entropy",
    tombstones_collected: "tombstones collected",
    gc_runs: "tombstone collection rounds",
    periodic_skipped: "periodic jobs skipped: stale, or their task still running elsewhere",
    corrupt_records_skipped: "stored records skipped by reads and scans: they did not decode",
    restore_attempts: "start-up restore attempts (retried until every peer synced)",
    mail_enqueued: "notifications queued",
    mail_not_queued: "notifications that could not be queued",
}

impl Stats {
    pub fn add(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }

    /// Copies what the store counts itself (corrupt records skipped).
    fn observe_store(&self, store: &Store) {
        self.corrupt_records_skipped
            .store(store.corrupt_skipped(), Ordering::Relaxed);
    }

    /// Adds to Redis what this process counted since its last flush.
    pub async fn flush(&self, store: &Store, key: &str) -> Result<(), StoreError> {
        self.observe_store(store);
        let local = self.local();
        let deltas: Vec<(&str, u64)> = {
            let flushed = lock(&self.flushed);
            local
                .iter()
                .map(|(name, now)| (*name, now.saturating_sub(*flushed.get(name).unwrap_or(&0))))
                .filter(|(_, delta)| *delta > 0)
                .collect()
        };
        store.add_counters(key, &deltas).await?;
        let mut flushed = lock(&self.flushed);
        for (name, delta) in deltas {
            *flushed.entry(name).or_default() += delta;
        }
        Ok(())
    }

    /// The node's counts: every process's flushed counts (from Redis) plus
    /// what this process has not flushed yet. Redis unreachable: this
    /// process's own counts.
    pub async fn node_wide(&self, store: &Store, key: &str) -> Vec<(&'static str, u64)> {
        self.observe_store(store);
        let local = self.local();
        let Ok(stored) = store.counters(key).await else {
            return local;
        };
        let flushed = lock(&self.flushed);
        local
            .into_iter()
            .map(|(name, now)| {
                let unflushed = now.saturating_sub(*flushed.get(name).unwrap_or(&0));
                (
                    name,
                    stored
                        .get(name)
                        .copied()
                        .unwrap_or(0)
                        .saturating_add(unflushed),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStore;

    #[tokio::test]
    async fn flushes_only_deltas_and_sums_processes() {
        let store = Store::Memory(MemoryStore::default());
        let (api, worker) = (Stats::default(), Stats::default());
        Stats::add(&api.writes, 3);
        Stats::add(&worker.hints_delivered, 5);
        api.flush(&store, "c").await.unwrap();
        api.flush(&store, "c").await.unwrap();
        worker.flush(&store, "c").await.unwrap();
        Stats::add(&api.writes, 1);
        let seen: BTreeMap<_, _> = api.node_wide(&store, "c").await.into_iter().collect();
        assert_eq!(seen["writes"], 4, "3 flushed once, 1 not yet flushed");
        assert_eq!(seen["hints_delivered"], 5, "counted by another process");
        assert_eq!(seen.len(), COUNTERS.len());
    }
}
