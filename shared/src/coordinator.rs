//! The coordinator: drives the pure core against the local store and the peers.
//!
//! Any node coordinates any request. For a key it computes the preference
//! list on the ring, fans the operation out to those replicas in parallel,
//! counts answers with a [`QuorumTally`], and decides. Writes are stamped
//! with this node's hybrid logical clock; reads return the newest version any
//! replica holds and repair the replicas that answered with an older one.
//!
//! Handlers (axum) and job functions (workers) are thin wrappers over this.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::value::RawValue;
use thiserror::Error;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::core::hlc::HybridClock;
use crate::core::jobs::{ReplicateJob, RetryPolicy};
use crate::core::limits::{READ_REPAIRS_IN_FLIGHT_MAX, RESTORE_BATCH_LEN_MAX};
use crate::core::membership::{Health, Membership, PeerState, Transition};
use crate::core::message::{ApplyStatus, KeyedRecord};
use crate::core::quorum::{Consistency, QuorumTally, TallyState};
use crate::core::record::{Record, Version};
use crate::core::ring::Ring;
use crate::jobs::{InlineRunner, JobQueues};
use crate::peer::PeerClient;
use crate::storage::{ScanPage, Store, StoreError};

/// How long a peer that failed a call is skipped before it is tried again.
pub const PEER_RETRY_AFTER_MS: u64 = 1_000;
/// Failed calls in a row before a suspect peer is considered down.
pub const PEER_DOWN_AFTER_FAILURES: u32 = 2;

/// One replica that did not acknowledge, and why.
#[derive(Debug, Clone, Serialize)]
pub struct NodeFailure {
    pub node: String,
    pub error: String,
}

/// Failures of a coordinated operation, grouped by what the caller can do.
#[derive(Debug, Error)]
pub enum CoordError {
    /// Not enough replicas answered: retry later or lower the consistency.
    #[error(
        "{operation} at consistency {consistency} needs {required} of {replicas:?}; only {answered:?} answered"
    )]
    Unavailable {
        operation: &'static str,
        consistency: Consistency,
        required: usize,
        replicas: Vec<String>,
        answered: Vec<String>,
        failed: Vec<NodeFailure>,
    },
    /// This node's own storage failed: the node is unhealthy.
    #[error("local storage: {0}")]
    Storage(#[from] StoreError),
    /// A named peer is not part of the cluster.
    #[error("unknown node {0:?}")]
    UnknownNode(String),
}

/// What a client write achieved.
#[derive(Debug, Clone, Serialize)]
pub struct WriteReport {
    pub key: String,
    pub version: Version,
    pub deleted: bool,
    pub consistency: Consistency,
    pub required: usize,
    pub replicas: Vec<String>,
    pub acks: Vec<String>,
    pub failed: Vec<NodeFailure>,
    /// Replicas that had not acknowledged when the write returned; they get
    /// the record from a background job (queue or inline runner).
    pub pending: Vec<String>,
}

/// How replicas that did not acknowledge a write in time are caught up.
#[derive(Clone)]
pub enum Replicator {
    /// Background sync on: jobs on this node's Redis queue, run by workers.
    Queue(Box<JobQueues>),
    /// Background sync off: jobs run inside this process.
    Inline(InlineRunner),
}

/// What a client read found.
#[derive(Debug, Clone)]
pub struct ReadReport {
    pub key: String,
    /// The newest record among the replicas that answered.
    pub record: Option<Record>,
    pub consistency: Consistency,
    pub replicas: Vec<String>,
    pub answered: Vec<String>,
    /// Replicas sent the newest record because they answered with older data.
    pub repaired: Vec<String>,
}

/// Per-peer outcome of a restore.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestorePeerReport {
    pub node: String,
    pub scanned: u64,
    pub owned: u64,
    pub stored: u64,
    pub refused: u64,
    pub error: Option<String>,
}

/// Outcome of pulling this node's data from its peers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreReport {
    pub node: String,
    /// Records seen on peers.
    pub scanned: u64,
    /// Of those, records whose preference list includes this node.
    pub owned: u64,
    /// Of those, records that were newer than the local copy and were stored.
    pub stored: u64,
    /// Records refused (version too far in the future).
    pub refused: u64,
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

/// Counters shown in `/cluster/`.
#[derive(Debug, Default)]
pub struct Stats {
    pub writes: AtomicU64,
    pub reads: AtomicU64,
    pub unavailable: AtomicU64,
    pub read_repairs: AtomicU64,
    pub read_repairs_dropped: AtomicU64,
    pub refused_versions: AtomicU64,
    pub jobs_enqueued: AtomicU64,
    pub jobs_enqueue_failed: AtomicU64,
    pub inline_delivered: AtomicU64,
    pub inline_dropped: AtomicU64,
    pub inline_dead: AtomicU64,
}

/// The coordinator of one node.
pub struct Coordinator {
    cfg: Arc<Config>,
    ring: Ring,
    store: Store,
    peers: PeerClient,
    clock: Mutex<HybridClock>,
    membership: Mutex<Membership>,
    repair_permits: Arc<Semaphore>,
    restore_state: Mutex<RestoreState>,
    replicator: OnceLock<Replicator>,
    pub stats: Stats,
}

/// Milliseconds since the Unix epoch, from the system clock. The one place
/// the coordinator reads the wall clock; the core only ever receives it.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the state torn
    // (each critical section is a single assignment or a pure call), so the
    // poisoned value is still valid.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Coordinator {
    pub fn new(cfg: Arc<Config>, store: Store) -> Result<Arc<Self>, reqwest::Error> {
        let ring = Ring::new(cfg.nodes.keys().cloned(), cfg.vnodes);
        let peers = PeerClient::new(
            &cfg.node_id,
            cfg.nodes.clone(),
            &cfg.cluster_secret,
            cfg.peer_connect_timeout,
            cfg.peer_request_timeout,
        )?;
        let others = cfg.nodes.keys().filter(|n| **n != cfg.node_id).cloned();
        Ok(Arc::new(Coordinator {
            membership: Mutex::new(Membership::new(
                others,
                PEER_RETRY_AFTER_MS,
                PEER_DOWN_AFTER_FAILURES,
            )),
            clock: Mutex::new(HybridClock::new(cfg.clock_drift_ms_max)),
            repair_permits: Arc::new(Semaphore::new(READ_REPAIRS_IN_FLIGHT_MAX)),
            restore_state: Mutex::new(RestoreState::Idle),
            replicator: OnceLock::new(),
            stats: Stats::default(),
            ring,
            store,
            peers,
            cfg,
        }))
    }

    /// Sets how unacknowledged replicas are caught up (once, at start).
    /// Without one, they catch up only by read repair and restore.
    pub fn set_replicator(&self, replicator: Replicator) {
        if self.replicator.set(replicator).is_err() {
            warn!("replicator already set; keeping the first");
        }
    }

    pub fn replicator(&self) -> Option<&Replicator> {
        self.replicator.get()
    }

    /// The retry policy of background jobs.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            attempts_max: self.cfg.job_attempts_max,
            backoff_base_ms: u64::try_from(self.cfg.job_backoff_base.as_millis())
                .unwrap_or(u64::MAX),
            backoff_max_ms: u64::try_from(self.cfg.job_backoff_max.as_millis()).unwrap_or(u64::MAX),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn node_id(&self) -> &str {
        &self.cfg.node_id
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The key's preference list: the first N distinct nodes clockwise.
    pub fn replicas(&self, key: &str) -> Vec<String> {
        self.ring
            .preference_list(key, self.cfg.replication_factor)
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    pub fn restore_state(&self) -> RestoreState {
        lock(&self.restore_state).clone()
    }

    /// Health of every peer as this node sees it.
    pub fn peer_states(&self) -> BTreeMap<String, PeerState> {
        lock(&self.membership)
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect()
    }

    pub fn peer_health(&self, node: &str) -> Health {
        if node == self.cfg.node_id {
            Health::Up
        } else {
            lock(&self.membership).health(node)
        }
    }

    /// Replicas not worth calling now: peers marked down that failed within
    /// the last [`PEER_RETRY_AFTER_MS`]. Skipping saves a timeout per request
    /// on a hung peer. But when skipping them would leave fewer than
    /// `required` replicas, every replica is called anyway: a failed call
    /// costs little, and a peer that just came back answers at once.
    fn nodes_to_skip(&self, replicas: &[String], required: usize) -> Vec<String> {
        let now = now_ms();
        let membership = lock(&self.membership);
        let skip: Vec<String> = replicas
            .iter()
            .filter(|n| **n != self.cfg.node_id && !membership.should_call(n, now))
            .cloned()
            .collect();
        if replicas.len() - skip.len() < required {
            Vec::new()
        } else {
            skip
        }
    }

    fn note_success(&self, node: &str) {
        if node == self.cfg.node_id {
            return;
        }
        let transition = lock(&self.membership).success(node, now_ms());
        log_transition(transition);
    }

    fn note_failure(&self, node: &str, reason: &str) {
        if node == self.cfg.node_id {
            return;
        }
        let transition = lock(&self.membership).failure(node, reason, now_ms());
        log_transition(transition);
    }

    /// Stamps a new version for a write coordinated here.
    fn next_version(&self) -> Version {
        let ts = lock(&self.clock).tick(now_ms());
        Version::new(ts, self.cfg.node_id.clone())
    }

    /// Writes (or, with `value = None`, deletes) a key at the given consistency.
    ///
    /// Background sync on: the record is sent to just enough replicas for
    /// the consistency level (this node first), each failure replaced by the
    /// next untried replica, and the write returns once `required` stored it;
    /// every replica that has not acknowledged gets a replication job.
    /// Background sync off: the record is sent to all N replicas and the
    /// write waits for every answer; failed ones go to the in-process runner.
    pub async fn write(
        self: &Arc<Self>,
        key: String,
        value: Option<Box<RawValue>>,
        consistency: Consistency,
    ) -> Result<WriteReport, CoordError> {
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        let version = self.next_version();
        let created_ms = now_ms();
        let record = Record {
            version: version.clone(),
            value,
        };
        let deleted = record.is_tombstone();
        let replicas = self.replicas(&key);
        let required = consistency.required(replicas.len());
        let mut tally = QuorumTally::new(required, replicas.len());
        let skip = self.nodes_to_skip(&replicas, required);
        // This node first (a local write is cheapest), then ring order.
        let mut untried: VecDeque<String> = replicas
            .iter()
            .filter(|n| **n == self.cfg.node_id)
            .chain(replicas.iter().filter(|n| **n != self.cfg.node_id))
            .filter(|n| !skip.contains(n))
            .cloned()
            .collect();
        for node in &skip {
            tally.fail(node.clone(), "skipped: marked down after failed calls");
        }
        let fan_out = if self.cfg.background_sync {
            required
        } else {
            replicas.len()
        };
        let batch = vec![KeyedRecord {
            key: key.clone(),
            record: record.clone(),
        }];
        let mut calls = JoinSet::new();
        let start = |calls: &mut JoinSet<_>, node: String| {
            let this = Arc::clone(self);
            let batch = batch.clone();
            calls.spawn(async move {
                let outcome = this.apply_on(&node, batch).await;
                (node, outcome)
            });
        };
        for _ in 0..fan_out {
            if let Some(node) = untried.pop_front() {
                start(&mut calls, node);
            }
        }
        while let Some(joined) = calls.join_next().await {
            let failed = match joined {
                Ok((node, Ok(statuses))) => match statuses.first() {
                    Some(ApplyStatus::Stored | ApplyStatus::Unchanged) => {
                        tally.ack(node);
                        false
                    }
                    Some(ApplyStatus::Refused) => {
                        tally.fail(node, "refused: clock drift");
                        true
                    }
                    None => {
                        tally.fail(node, "empty answer");
                        true
                    }
                },
                Ok((node, Err(error))) => {
                    tally.fail(node, error);
                    true
                }
                Err(join_error) => {
                    warn!(%join_error, "replica call task failed");
                    true
                }
            };
            // Replace a failure with the next untried replica while the
            // quorum is still open.
            if failed
                && tally.state() == TallyState::Waiting
                && let Some(node) = untried.pop_front()
            {
                start(&mut calls, node);
            }
        }
        let acks = tally.acks().to_vec();
        let pending: Vec<String> = replicas
            .iter()
            .filter(|n| !acks.contains(n))
            .cloned()
            .collect();
        if !acks.is_empty() {
            self.defer(&pending, &batch, created_ms).await;
        }
        let failed: Vec<NodeFailure> = tally
            .failures()
            .iter()
            .map(|(node, error)| NodeFailure {
                node: node.clone(),
                error: error.clone(),
            })
            .collect();
        match tally.state() {
            TallyState::Reached => Ok(WriteReport {
                key,
                version,
                deleted,
                consistency,
                required,
                replicas,
                acks,
                failed,
                pending,
            }),
            TallyState::Impossible | TallyState::Waiting => {
                self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
                Err(CoordError::Unavailable {
                    operation: "write",
                    consistency,
                    required,
                    replicas,
                    answered: acks,
                    failed,
                })
            }
        }
    }

    /// Hands the records to the background replicator for every target.
    /// A failure to enqueue is logged and counted; read repair and restore
    /// remain as the safety net.
    async fn defer(&self, targets: &[String], records: &[KeyedRecord], created_ms: u64) {
        let Some(replicator) = self.replicator.get() else {
            return;
        };
        for target in targets {
            let job = ReplicateJob {
                target: target.clone(),
                records: records.to_vec(),
                attempt: 0,
                created_ms,
            };
            let outcome = match replicator {
                Replicator::Queue(queues) => queues.push_replicate(job, None).await,
                Replicator::Inline(runner) => runner.submit(job),
            };
            match outcome {
                Ok(()) => {
                    self.stats.jobs_enqueued.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    self.stats
                        .jobs_enqueue_failed
                        .fetch_add(1, Ordering::Relaxed);
                    warn!(%target, %error, "cannot enqueue replication; read repair and restore will catch up");
                }
            }
        }
    }

    /// Reads a key: asks the replicas, returns the newest record among those
    /// that answered, and repairs the ones that answered with older data.
    pub async fn read(
        self: &Arc<Self>,
        key: String,
        consistency: Consistency,
    ) -> Result<ReadReport, CoordError> {
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        let replicas = self.replicas(&key);
        let required = consistency.required(replicas.len());
        let mut tally = QuorumTally::new(required, replicas.len());
        let mut calls = JoinSet::new();
        let skip = self.nodes_to_skip(&replicas, required);
        for node in &replicas {
            if skip.contains(node) {
                tally.fail(node.clone(), "skipped: marked down after failed calls");
                continue;
            }
            let this = Arc::clone(self);
            let node = node.clone();
            let keys = vec![key.clone()];
            calls.spawn(async move {
                let outcome = this.read_on(&node, keys).await;
                (node, outcome)
            });
        }
        let mut answers: Vec<(String, Option<Record>)> = Vec::with_capacity(replicas.len());
        while let Some(joined) = calls.join_next().await {
            match joined {
                Ok((node, Ok(mut records))) => {
                    tally.ack(node.clone());
                    answers.push((node, records.pop().flatten()));
                }
                Ok((node, Err(error))) => tally.fail(node, error),
                Err(join_error) => warn!(%join_error, "replica call task failed"),
            }
        }
        if tally.state() != TallyState::Reached {
            self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
            return Err(CoordError::Unavailable {
                operation: "read",
                consistency,
                required,
                replicas,
                answered: tally.acks().to_vec(),
                failed: tally
                    .failures()
                    .iter()
                    .map(|(node, error)| NodeFailure {
                        node: node.clone(),
                        error: error.clone(),
                    })
                    .collect(),
            });
        }
        let newest = answers.iter().filter_map(|(_, r)| r.clone()).max();
        let mut repaired = Vec::new();
        if let Some(newest) = &newest {
            // Versions read are observed, so a later write through this node
            // is stamped above them. A refused (far-future) version is still
            // returned; it is the stored truth, just not adopted by our clock.
            if lock(&self.clock)
                .observe(newest.version.ts, now_ms())
                .is_err()
            {
                self.stats.refused_versions.fetch_add(1, Ordering::Relaxed);
            }
            for (node, record) in &answers {
                let stale = record.as_ref().is_none_or(|r| r < newest);
                if stale {
                    repaired.push(node.clone());
                    self.spawn_repair(node.clone(), key.clone(), newest.clone());
                }
            }
        }
        Ok(ReadReport {
            key,
            record: newest,
            consistency,
            replicas,
            answered: tally.acks().to_vec(),
            repaired,
        })
    }

    /// Sends `record` to `node` in the background, bounded by a semaphore:
    /// when too many repairs are in flight the repair is dropped and counted
    /// (a later read or anti-entropy repairs it), never queued without bound.
    fn spawn_repair(self: &Arc<Self>, node: String, key: String, record: Record) {
        let Ok(permit) = Arc::clone(&self.repair_permits).try_acquire_owned() else {
            self.stats
                .read_repairs_dropped
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.stats.read_repairs.fetch_add(1, Ordering::Relaxed);
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let _permit = permit;
            match this
                .apply_on(&node, vec![KeyedRecord { key, record }])
                .await
            {
                Ok(_) => debug!(%node, "read repair delivered"),
                Err(error) => debug!(%node, %error, "read repair failed"),
            }
        });
    }

    /// Applies records on one replica: locally, or through its internal API.
    pub async fn apply_on(
        &self,
        node: &str,
        records: Vec<KeyedRecord>,
    ) -> Result<Vec<ApplyStatus>, String> {
        if node == self.cfg.node_id {
            return self.apply_local(records).await.map_err(|e| e.to_string());
        }
        match self.peers.apply(node, records).await {
            Ok(response) => {
                self.note_success(node);
                Ok(response.results)
            }
            Err(error) => {
                let reason = error.to_string();
                self.note_failure(node, &reason);
                Err(reason)
            }
        }
    }

    /// Reads records from one replica: locally, or through its internal API.
    pub async fn read_on(
        &self,
        node: &str,
        keys: Vec<String>,
    ) -> Result<Vec<Option<Record>>, String> {
        if node == self.cfg.node_id {
            return self.store.get_many(&keys).await.map_err(|e| e.to_string());
        }
        match self.peers.read(node, keys).await {
            Ok(response) => {
                self.note_success(node);
                Ok(response.records)
            }
            Err(error) => {
                let reason = error.to_string();
                self.note_failure(node, &reason);
                Err(reason)
            }
        }
    }

    /// Stores records that are newer than the local copies. Records whose
    /// version is further ahead of our clock than the drift limit are refused
    /// (a timestamp bomb must not freeze a key); the others are observed by
    /// our clock so later writes coordinated here are ordered after them.
    pub async fn apply_local(
        &self,
        records: Vec<KeyedRecord>,
    ) -> Result<Vec<ApplyStatus>, StoreError> {
        let now = now_ms();
        let mut statuses = vec![ApplyStatus::Refused; records.len()];
        let mut accepted_at = Vec::with_capacity(records.len());
        let mut accepted = Vec::with_capacity(records.len());
        {
            let mut clock = lock(&self.clock);
            for (i, kr) in records.into_iter().enumerate() {
                match clock.observe(kr.record.version.ts, now) {
                    Ok(()) => {
                        accepted_at.push(i);
                        accepted.push((kr.key, kr.record));
                    }
                    Err(error) => {
                        self.stats.refused_versions.fetch_add(1, Ordering::Relaxed);
                        warn!(key = %kr.key, %error, "refused a record from the future");
                    }
                }
            }
        }
        let stored = self.store.apply(&accepted).await?;
        for (i, was_stored) in accepted_at.into_iter().zip(stored) {
            statuses[i] = if was_stored {
                ApplyStatus::Stored
            } else {
                ApplyStatus::Unchanged
            };
        }
        Ok(statuses)
    }

    /// One page of this node's local records.
    pub async fn scan_local(&self, cursor: u64, count: usize) -> Result<ScanPage, StoreError> {
        self.store.scan(cursor, count).await
    }

    /// Pulls, from every live peer (or only `from`), the records this node
    /// should hold, and stores those newer than the local copies.
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
            let peer = self.restore_from(&source).await?;
            report.scanned += peer.scanned;
            report.owned += peer.owned;
            report.stored += peer.stored;
            report.refused += peer.refused;
            report.peers.push(peer);
        }
        report.elapsed_ms = now_ms().saturating_sub(started);
        Ok(report)
    }

    async fn restore_from(&self, source: &str) -> Result<RestorePeerReport, CoordError> {
        let mut peer = RestorePeerReport {
            node: source.to_owned(),
            ..RestorePeerReport::default()
        };
        let mut cursor = 0u64;
        loop {
            let page = match self.peers.scan(source, cursor, RESTORE_BATCH_LEN_MAX).await {
                Ok(page) => {
                    self.note_success(source);
                    page
                }
                Err(error) => {
                    self.note_failure(source, &error.to_string());
                    peer.error = Some(error.to_string());
                    return Ok(peer);
                }
            };
            peer.scanned += page.records.len() as u64;
            let owned: Vec<KeyedRecord> = page
                .records
                .into_iter()
                .filter(|kr| {
                    self.replicas(&kr.key)
                        .iter()
                        .any(|n| *n == self.cfg.node_id)
                })
                .collect();
            peer.owned += owned.len() as u64;
            for status in self.apply_local(owned).await? {
                match status {
                    ApplyStatus::Stored => peer.stored += 1,
                    ApplyStatus::Unchanged => {}
                    ApplyStatus::Refused => peer.refused += 1,
                }
            }
            if page.next_cursor == 0 {
                return Ok(peer);
            }
            cursor = page.next_cursor;
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
                    scanned = report.scanned,
                    owned = report.owned,
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

    /// Calls the `/health` of every peer (or, with `only_unhealthy`, of every
    /// peer not known to be up) once and records the outcome. This light
    /// probe is what brings a peer marked down back into use.
    pub async fn probe_peers(self: &Arc<Self>, only_unhealthy: bool) {
        let targets: Vec<String> = {
            let membership = lock(&self.membership);
            membership
                .iter()
                .filter(|(_, state)| !only_unhealthy || state.health != Health::Up)
                .map(|(node, _)| node.clone())
                .collect()
        };
        let mut calls = JoinSet::new();
        for node in targets {
            let this = Arc::clone(self);
            calls.spawn(async move {
                match this.peers.health(&node).await {
                    Ok(_) => this.note_success(&node),
                    Err(error) => this.note_failure(&node, &error.to_string()),
                }
            });
        }
        while calls.join_next().await.is_some() {}
    }
}

fn log_transition(transition: Option<Transition>) {
    if let Some(t) = transition {
        match t.to {
            Health::Up => info!(peer = %t.node, from = t.from.as_str(), "peer is up"),
            other => {
                warn!(peer = %t.node, from = t.from.as_str(), to = other.as_str(), "peer health changed")
            }
        }
    }
}
