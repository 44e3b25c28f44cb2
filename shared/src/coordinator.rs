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
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde::Serialize;
use serde_json::value::RawValue;
use thiserror::Error;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::coalesce::{BatchFuture, BatchLimits, Coalescer};
use crate::config::Config;
use crate::core::hlc::HybridClock;
use crate::core::jobs::{PendingReplication, RetryDecision, RetryPolicy};
use crate::core::limits::{
    APPLY_BATCH_LEN_MAX, GC_BATCH_LEN_MAX, READ_BATCH_LEN_MAX, READ_REPAIRS_IN_FLIGHT_MAX,
    SYNC_BATCH_RECORDS_MAX,
};
use crate::core::mail::{MailJob, MailKind, PREVIEW_CHARS_MAX, key_notifies, preview};
use crate::core::membership::{Health, Membership, PeerState, Transition};
use crate::core::merkle::{Summary, bucket_of, shared_by};
use crate::core::message::{ApplyStatus, KeyedRecord};
use crate::core::quorum::{Consistency, QuorumTally, TallyState};
use crate::core::record::{Record, Version};
use crate::core::ring::Ring;
use crate::jobs::{JobQueues, ReplicationBatcher};
use crate::mail::Mailer;
use crate::peer::{PeerClient, PeerSetupError};
use crate::storage::{ScanPage, Space, Store, StoreError};

/// Notifications sent at once by the API process when background sync is off;
/// beyond it a notification is logged and counted as not queued.
pub const MAIL_INLINE_IN_FLIGHT_MAX: usize = 64;

/// Records read per page when a node scans its own store.
pub const SCAN_PAGE_LEN: usize = 1000;

/// Attempts of a client write whose version a replica already exceeds
/// (the coordinator's clock is behind); see [`Coordinator::write`].
pub const WRITE_ATTEMPTS_MAX: u32 = 3;

/// Approximate bytes of the records one group-committed apply carries
/// (a single large record still goes alone), well under the internal body limit.
pub const COALESCED_APPLY_BYTES_MAX: usize = 4 * 1024 * 1024;

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
    /// Replicas not contacted before the write returned (background sync
    /// on: the other N−W); a replication job delivers to them.
    pub pending: Vec<String>,
    /// Replicas that could not be reached: the node holding a hint for each.
    pub hints: Vec<HintPlacement>,
    /// True when a fallback node outside the preference list counted toward W.
    pub sloppy: bool,
}

/// Where a hint for an unreachable replica is kept.
#[derive(Debug, Clone, Serialize)]
pub struct HintPlacement {
    pub owner: String,
    pub holder: String,
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
    pub hints_kept: AtomicU64,
    pub hints_dropped: AtomicU64,
    pub hints_delivered: AtomicU64,
    pub sloppy_writes: AtomicU64,
    /// Writes stamped again because a replica held a newer version.
    pub writes_restamped: AtomicU64,
    pub peer_transitions: AtomicU64,
    pub anti_entropy_runs: AtomicU64,
    pub anti_entropy_stored: AtomicU64,
    pub tombstones_collected: AtomicU64,
    pub gc_runs: AtomicU64,
    pub mail_enqueued: AtomicU64,
    pub mail_not_queued: AtomicU64,
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
    queues: OnceLock<JobQueues>,
    batcher: OnceLock<ReplicationBatcher>,
    mailer: OnceLock<Arc<Mailer>>,
    mail_permits: Arc<Semaphore>,
    /// Group commit of client writes and reads per replica (this node
    /// included), started on first use.
    applies: BTreeMap<String, OnceLock<Coalescer<KeyedRecord, ApplyStatus>>>,
    reads: BTreeMap<String, OnceLock<Coalescer<String, Option<Record>>>>,
    me: Weak<Coordinator>,
    pub stats: Stats,
}

/// The order in which a request calls replicas: this node first (a local
/// call is cheapest), then the others in ring order, and last those marked
/// down, which are called only when the others cannot make the quorum.
fn call_order(replicas: &[String], me: &str, down: &[String]) -> VecDeque<String> {
    let local = replicas.iter().filter(|n| *n == me);
    let up = replicas.iter().filter(|n| *n != me && !down.contains(n));
    let down_last = replicas.iter().filter(|n| *n != me && down.contains(n));
    local.chain(up).chain(down_last).cloned().collect()
}

/// Plain Redis key holding when this node started keeping hints for `owner`.
pub fn hint_since_key(node: &str, owner: &str) -> String {
    format!("kv:{node}:hints:{owner}:since")
}

/// `KV_CLOCK_OFFSET_MS`, set once at start (fault injection for clock-skew tests).
static CLOCK_OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Shifts this process's clock by `offset_ms` (see `Config::clock_offset_ms`).
pub fn set_clock_offset_ms(offset_ms: i64) {
    CLOCK_OFFSET_MS.store(offset_ms, Ordering::Relaxed);
}

/// Milliseconds since the Unix epoch, from the system clock (plus the
/// configured test offset). The one place the coordinator reads the wall
/// clock; the core only ever receives it.
pub fn now_ms() -> u64 {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    wall.saturating_add_signed(CLOCK_OFFSET_MS.load(Ordering::Relaxed))
}

/// A batch call made directly on a replica, for [`Coordinator::coalescer`].
type Direct<T, R> = fn(Arc<Coordinator>, String, Vec<T>) -> BatchFuture<R>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the state torn
    // (each critical section is a single assignment or a pure call), so the
    // poisoned value is still valid.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Coordinator {
    pub fn new(cfg: Arc<Config>, store: Store) -> Result<Arc<Self>, PeerSetupError> {
        set_clock_offset_ms(cfg.clock_offset_ms);
        let ring = Ring::new(cfg.nodes.keys().cloned(), cfg.vnodes);
        let peers = PeerClient::new(
            &cfg.node_id,
            cfg.nodes.clone(),
            &cfg.cluster_secret.0,
            cfg.peer_connect_timeout,
            cfg.peer_request_timeout,
            cfg.peer_source_addr,
        )?;
        let others: Vec<String> = cfg
            .nodes
            .keys()
            .filter(|n| **n != cfg.node_id)
            .cloned()
            .collect();
        let applies = cfg
            .nodes
            .keys()
            .map(|n| (n.clone(), OnceLock::new()))
            .collect();
        let reads = cfg
            .nodes
            .keys()
            .map(|n| (n.clone(), OnceLock::new()))
            .collect();
        Ok(Arc::new_cyclic(|me| Coordinator {
            applies,
            reads,
            me: me.clone(),
            membership: Mutex::new(Membership::new(
                others,
                PEER_RETRY_AFTER_MS,
                PEER_DOWN_AFTER_FAILURES,
            )),
            clock: Mutex::new(HybridClock::new(cfg.clock_drift_ms_max)),
            repair_permits: Arc::new(Semaphore::new(READ_REPAIRS_IN_FLIGHT_MAX)),
            restore_state: Mutex::new(RestoreState::Idle),
            queues: OnceLock::new(),
            batcher: OnceLock::new(),
            mailer: OnceLock::new(),
            mail_permits: Arc::new(Semaphore::new(MAIL_INLINE_IN_FLIGHT_MAX)),
            stats: Stats::default(),
            ring,
            store,
            peers,
            cfg,
        }))
    }

    /// [`Coordinator::apply_on`], sharing one call with the concurrent
    /// writes bound for the same replica (see [`crate::coalesce`]).
    pub async fn apply_coalesced(
        &self,
        node: &str,
        records: Vec<KeyedRecord>,
    ) -> Result<Vec<ApplyStatus>, String> {
        let limits = BatchLimits {
            items_max: APPLY_BATCH_LEN_MAX,
            bytes_max: COALESCED_APPLY_BYTES_MAX,
        };
        let direct: Direct<KeyedRecord, ApplyStatus> =
            |this, node, records| Box::pin(async move { this.apply_on(&node, records).await });
        match self.coalescer(
            &self.applies,
            node,
            limits,
            KeyedRecord::approx_bytes,
            direct,
        ) {
            Some(coalescer) => coalescer.call(records).await,
            None => self.apply_on(node, records).await,
        }
    }

    /// [`Coordinator::read_on`], sharing one call with the concurrent reads
    /// bound for the same replica.
    pub async fn read_coalesced(
        &self,
        node: &str,
        keys: Vec<String>,
    ) -> Result<Vec<Option<Record>>, String> {
        let limits = BatchLimits {
            items_max: READ_BATCH_LEN_MAX,
            bytes_max: COALESCED_APPLY_BYTES_MAX,
        };
        let direct: Direct<String, Option<Record>> =
            |this, node, keys| Box::pin(async move { this.read_on(&node, keys).await });
        match self.coalescer(&self.reads, node, limits, String::len, direct) {
            Some(coalescer) => coalescer.call(keys).await,
            None => self.read_on(node, keys).await,
        }
    }

    /// The coalescer towards `node` in `slots`, started on first use with
    /// `direct` as its batch call; `None` for a node outside the cluster.
    fn coalescer<'a, T: Send + 'static, R: Send + 'static>(
        &self,
        slots: &'a BTreeMap<String, OnceLock<Coalescer<T, R>>>,
        node: &str,
        limits: BatchLimits,
        weight: fn(&T) -> usize,
        direct: Direct<T, R>,
    ) -> Option<&'a Coalescer<T, R>> {
        let slot = slots.get(node)?;
        Some(slot.get_or_init(|| {
            let (me, node) = (self.me.clone(), node.to_owned());
            Coalescer::start(limits, weight, move |items| {
                let (me, node) = (me.clone(), node.clone());
                Box::pin(async move {
                    let this = me.upgrade().ok_or("node is stopping")?;
                    direct(this, node, items).await
                })
            })
        }))
    }

    /// Sets the node's job queues (once, at start). With background sync on,
    /// replicas not contacted by a write get a replication job on them.
    pub fn set_queues(&self, queues: JobQueues) {
        if self.cfg.background_sync && self.batcher.get().is_none() {
            let _ = self.batcher.set(ReplicationBatcher::start(queues.clone()));
        }
        if self.queues.set(queues).is_err() {
            warn!("job queues already set; keeping the first");
        }
    }

    pub fn queues(&self) -> Option<&JobQueues> {
        self.queues.get()
    }

    /// Sets the SMTP sender used in-process when background sync is off.
    pub fn set_mailer(&self, mailer: Arc<Mailer>) {
        if self.mailer.set(mailer).is_err() {
            warn!("mailer already set; keeping the first");
        }
    }

    /// Queues (or, background sync off, sends in-process) one notification.
    /// Never waits for SMTP; a failure to queue is logged and counted.
    pub async fn notify(&self, job: MailJob) {
        let Some(queues) = self.queues.get() else {
            return;
        };
        if self.cfg.background_sync {
            match queues.push_mail(job, None).await {
                Ok(()) => {
                    self.stats.mail_enqueued.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    self.stats.mail_not_queued.fetch_add(1, Ordering::Relaxed);
                    warn!(%error, "cannot queue a notification");
                }
            }
            return;
        }
        let (Some(mailer), Ok(permit)) = (
            self.mailer.get(),
            Arc::clone(&self.mail_permits).try_acquire_owned(),
        ) else {
            self.stats.mail_not_queued.fetch_add(1, Ordering::Relaxed);
            warn!(id = %job.id, "notification not sent: no mailer or too many in flight");
            return;
        };
        self.stats.mail_enqueued.fetch_add(1, Ordering::Relaxed);
        let (mailer, queues) = (Arc::clone(mailer), queues.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let mut job = job;
            // The same job function and retry policy as a worker, with the
            // delays slept here instead of scheduled on a queue.
            loop {
                let Err(failure) = crate::mail::run_mail_job(&mailer, &queues, &job).await else {
                    return;
                };
                let permanent = matches!(failure, crate::mail::MailError::Permanent(_));
                let runs = job.attempt.saturating_add(1);
                match queues.decide(runs, !permanent) {
                    RetryDecision::RetryAfter { delay_ms, attempt } => {
                        let _ = queues.count("retried", 1).await;
                        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                        job.attempt = attempt;
                    }
                    RetryDecision::GiveUp => {
                        let reason = failure.to_string();
                        if let Err(error) = queues
                            .dead_letter_job(crate::jobs::EMAIL, runs, reason, &job)
                            .await
                        {
                            warn!(%error, "cannot record the dead letter of a notification");
                        }
                        return;
                    }
                }
            }
        });
    }

    /// The notification of an acknowledged client write, if one is due.
    fn write_mail(&self, key: &str, record: &Record) -> Option<MailJob> {
        let email = self.cfg.email.as_ref()?;
        if (record.is_tombstone() && !email.on_delete) || !key_notifies(&email.key_patterns, key) {
            return None;
        }
        Some(MailJob {
            id: format!("w-{}", record.version),
            node: self.cfg.node_id.clone(),
            time_ms: record.version.ts.wall_ms,
            kind: MailKind::Write {
                key: key.to_owned(),
                preview: record
                    .value
                    .as_ref()
                    .map(|v| preview(v.get(), PREVIEW_CHARS_MAX)),
                version: record.version.to_string(),
            },
            attempt: 0,
        })
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

    /// Replicas not worth calling first: peers marked down that failed within
    /// the last [`PEER_RETRY_AFTER_MS`]. Calling them last saves a timeout
    /// per request on a hung peer; they are still called when the others
    /// fail. When skipping them would leave fewer than `required` replicas,
    /// none is skipped: a failed call costs little, and a peer that just came
    /// back answers at once.
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
        self.log_transition(transition);
    }

    fn note_failure(&self, node: &str, reason: &str) {
        if node == self.cfg.node_id {
            return;
        }
        let transition = lock(&self.membership).failure(node, reason, now_ms());
        self.log_transition(transition);
    }

    fn log_transition(&self, transition: Option<Transition>) {
        if let Some(t) = transition {
            self.stats.peer_transitions.fetch_add(1, Ordering::Relaxed);
            match t.to {
                Health::Up => info!(peer = %t.node, from = t.from.as_str(), "peer is up"),
                other => {
                    warn!(peer = %t.node, from = t.from.as_str(), to = other.as_str(), "peer health changed")
                }
            }
        }
    }

    /// Stamps a new version for a write coordinated here.
    fn next_version(&self) -> Version {
        let ts = lock(&self.clock).tick(now_ms());
        Version::new(ts, self.cfg.node_id.clone())
    }

    /// Writes (or, with `value = None`, deletes) a key at the given consistency.
    ///
    /// Background sync on: the record goes to just enough replicas for the
    /// consistency level (this node first), and each failure is replaced by
    /// the next untried replica. When no replica of the preference list is
    /// left, a fallback node beyond it (the next live node on the ring) takes
    /// the record as a hint for the missing owner and counts toward W
    /// (sloppy quorum). Replicas not contacted get a replication job.
    /// Background sync off: all N replicas are called and every answer is
    /// awaited. Either way, an owner that could not be reached and has no
    /// fallback holding a hint gets a hint on this node.
    pub async fn write(
        self: &Arc<Self>,
        key: String,
        value: Option<Box<RawValue>>,
        consistency: Consistency,
    ) -> Result<WriteReport, CoordError> {
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        let mut record = Record {
            version: self.next_version(),
            value,
        };
        let mut attempt = 1;
        loop {
            let (report, shadowed_by, written) =
                self.write_once(key.clone(), record, consistency).await?;
            if let Some(holder) = shadowed_by.filter(|_| attempt < WRITE_ATTEMPTS_MAX) {
                // A replica already holds a newer version than the one this
                // node stamped (its clock is behind another's). Acknowledging
                // would let the older-in-real-time write win, so learn the
                // newer version from that replica and write again above it.
                attempt += 1;
                self.stats.writes_restamped.fetch_add(1, Ordering::Relaxed);
                match self.read_on(&holder, vec![key.clone()]).await {
                    Ok(records) => {
                        let now = now_ms();
                        let mut clock = lock(&self.clock);
                        for r in records.iter().flatten() {
                            if let Err(error) = clock.observe(r.version.ts, now) {
                                warn!(%key, %error, "not adopting a version from the future");
                            }
                        }
                    }
                    Err(error) => {
                        debug!(%key, %holder, %error, "cannot read the newer version; stamping again anyway");
                    }
                }
                record = Record {
                    version: self.next_version(),
                    value: written.value,
                };
                continue;
            }
            if let Some(mail) = self.write_mail(&report.key, &written) {
                self.notify(mail).await;
            }
            return Ok(report);
        }
    }

    /// One attempt of [`Coordinator::write`] with a given record. Also names
    /// a replica that already held a newer version (the record is shadowed).
    async fn write_once(
        self: &Arc<Self>,
        key: String,
        record: Record,
        consistency: Consistency,
    ) -> Result<(WriteReport, Option<String>, Record), CoordError> {
        let version = record.version.clone();
        let created_ms = now_ms();
        let deleted = record.is_tombstone();
        // One walk of the ring: the first N nodes are the replicas, the rest
        // (minus nodes known down) the fallbacks of a sloppy quorum.
        let mut walk: Vec<String> = self
            .ring
            .walk(&key)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let fallbacks = walk.split_off(self.cfg.replication_factor.min(walk.len()));
        let replicas = walk;
        let required = consistency.required(replicas.len());
        let skip = self.nodes_to_skip(&replicas, required);
        let fallbacks: Vec<String> = {
            let now = now_ms();
            let membership = lock(&self.membership);
            fallbacks
                .into_iter()
                .filter(|n| membership.should_call(n, now))
                .collect()
        };
        let mut fallbacks: VecDeque<String> = fallbacks.into();
        let mut tally = QuorumTally::new(required, replicas.len() + fallbacks.len());
        let mut untried = call_order(&replicas, &self.cfg.node_id, &skip);
        let mut missing: VecDeque<String> = VecDeque::new();
        let mut called: Vec<String> = Vec::with_capacity(replicas.len());
        let fan_out = if self.cfg.background_sync {
            required
        } else {
            replicas.len() - skip.len()
        };
        let batch = vec![KeyedRecord {
            key: key.clone(),
            record: record.clone(),
        }];
        // Background sync: the replicas beyond the first W get their
        // replication job queued now, while the quorum calls run, instead of
        // after them (one Redis round trip, an fsync with `appendfsync
        // always`, off the write's latency). The write still answers only
        // once the job is on the queue. A queued replica that is then called
        // to replace a failed one gets the record twice, which is harmless.
        let early: Vec<String> = if self.cfg.background_sync {
            untried
                .iter()
                .skip(fan_out)
                .filter(|n| !skip.contains(n))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let early_defer = (!early.is_empty()).then(|| {
            let (this, early, batch) = (Arc::clone(self), early.clone(), batch.clone());
            tokio::spawn(async move { this.defer(&early, &batch, created_ms).await })
        });
        // The calls run inside this write's task (no task per call): each is
        // mostly a wait on the coalescer, which makes the actual call.
        let mut calls = FuturesUnordered::new();
        let start = |node: String, hint_for: Option<String>| {
            let batch = batch.clone();
            async move {
                let outcome = match &hint_for {
                    None => self.apply_coalesced(&node, batch).await,
                    Some(owner) => self.apply_hint_on(&node, owner, batch).await,
                };
                (node, hint_for, outcome)
            }
        };
        for _ in 0..fan_out {
            if let Some(node) = untried.pop_front() {
                called.push(node.clone());
                calls.push(start(node, None));
            }
        }
        let mut hints: Vec<HintPlacement> = Vec::new();
        let mut shadowed_by: Option<String> = None;
        // A replacement is started for each call that fails while the quorum
        // is still open: the next untried owner, else a fallback with a hint.
        let mut replacements_due = 0usize;
        loop {
            while replacements_due > 0 && tally.state() == TallyState::Waiting {
                replacements_due -= 1;
                if let Some(node) = untried.pop_front() {
                    called.push(node.clone());
                    calls.push(start(node, None));
                } else if let (Some(owner), Some(fallback)) =
                    (missing.front().cloned(), fallbacks.pop_front())
                {
                    missing.pop_front();
                    calls.push(start(fallback, Some(owner)));
                }
            }
            let Some((node, hint_for, outcome)) = calls.next().await else {
                break;
            };
            let ok = match outcome {
                Ok(statuses) => match statuses.first() {
                    Some(ApplyStatus::Stored) => Ok(()),
                    Some(ApplyStatus::Unchanged) => {
                        // A fresh version is never equal to a stored one:
                        // the replica holds a newer one.
                        if hint_for.is_none() {
                            shadowed_by = Some(node.clone());
                        }
                        Ok(())
                    }
                    Some(ApplyStatus::Refused) => Err("refused".to_owned()),
                    None => Err("empty answer".to_owned()),
                },
                Err(error) => Err(error),
            };
            match (ok, hint_for) {
                (Ok(()), None) => tally.ack(node),
                (Ok(()), Some(owner)) => {
                    hints.push(HintPlacement {
                        owner,
                        holder: node.clone(),
                    });
                    tally.ack(node);
                }
                (Err(error), hint_for) => {
                    tally.fail(node.clone(), error);
                    // The owner still needs a hint holder.
                    missing.push_back(hint_for.unwrap_or(node));
                    replacements_due += 1;
                }
            }
        }
        let acks = tally.acks().to_vec();
        // Owners believed down and never called need a hint too.
        for node in &skip {
            if !called.contains(node) && !missing.contains(node) {
                missing.push_back(node.clone());
            }
        }
        // Owners never reached and not covered by a fallback: keep the hint here.
        let covered: Vec<&String> = hints.iter().map(|h| &h.owner).collect();
        let unreached: Vec<String> = replicas
            .iter()
            .filter(|n| !acks.contains(n) && !covered.contains(n) && missing.contains(n))
            .cloned()
            .collect();
        if !acks.is_empty() {
            for owner in unreached.iter().filter(|o| **o != self.cfg.node_id) {
                if self.keep_hint(owner, batch.clone()).await {
                    hints.push(HintPlacement {
                        owner: owner.clone(),
                        holder: self.cfg.node_id.clone(),
                    });
                }
            }
        }
        let hinted: Vec<&String> = hints.iter().map(|h| &h.owner).collect();
        let pending: Vec<String> = replicas
            .iter()
            .filter(|n| !acks.contains(n) && !hinted.contains(n) && !missing.contains(n))
            .cloned()
            .collect();
        if let Some(early_defer) = early_defer
            && let Err(join_error) = early_defer.await
        {
            // Not known to be queued: queue again (a duplicate is harmless).
            warn!(%join_error, "replication enqueue task failed; enqueueing again");
            self.defer(&early, &batch, created_ms).await;
        }
        let late: Vec<String> = pending
            .iter()
            .filter(|n| !early.contains(n))
            .cloned()
            .collect();
        if !acks.is_empty() {
            self.defer(&late, &batch, created_ms).await;
        }
        let sloppy = hints
            .iter()
            .any(|h| h.holder != self.cfg.node_id && acks.contains(&h.holder));
        if sloppy {
            self.stats.sloppy_writes.fetch_add(1, Ordering::Relaxed);
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
            TallyState::Reached => Ok((
                WriteReport {
                    key,
                    version,
                    deleted,
                    consistency,
                    required,
                    replicas,
                    acks,
                    failed,
                    pending,
                    hints,
                    sloppy,
                },
                shadowed_by,
                record,
            )),
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

    /// Queues the records for every target (background sync on), through the
    /// group-commit batcher; waits until they are on the queue. A failure to
    /// enqueue falls back to a hint on this node.
    async fn defer(&self, targets: &[String], records: &[KeyedRecord], created_ms: u64) {
        let Some(batcher) = self.batcher.get() else {
            return;
        };
        for target in targets {
            let mut queued = true;
            for record in records {
                let item = PendingReplication {
                    target: target.clone(),
                    record: record.clone(),
                    created_ms,
                };
                queued &= batcher.submit(item).await;
            }
            if queued {
                self.stats.jobs_enqueued.fetch_add(1, Ordering::Relaxed);
            } else {
                self.stats
                    .jobs_enqueue_failed
                    .fetch_add(1, Ordering::Relaxed);
                warn!(%target, "cannot enqueue replication; keeping a hint instead");
                self.keep_hint(target, records.to_vec()).await;
            }
        }
    }

    /// Keeps records as hints for `owner` on this node, within the bounds:
    /// at most `hints_per_node_max` per owner, and only while the owner has
    /// been missing for less than `hint_window` (past it, anti-entropy
    /// repairs instead, as Cassandra's `max_hint_window`). Returns whether kept.
    pub async fn keep_hint(&self, owner: &str, records: Vec<KeyedRecord>) -> bool {
        match self.store_hints(owner, records).await {
            Ok(true) => true,
            Ok(false) => {
                self.stats.hints_dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
            Err(error) => {
                self.stats.hints_dropped.fetch_add(1, Ordering::Relaxed);
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
        self.stats
            .hints_kept
            .fetch_add(pairs.len() as u64, Ordering::Relaxed);
        Ok(true)
    }

    /// Reads a key: asks R replicas (more only to replace failures), returns
    /// the newest record among those that answered, and repairs the ones
    /// that answered with older data.
    pub async fn read(
        self: &Arc<Self>,
        key: String,
        consistency: Consistency,
    ) -> Result<ReadReport, CoordError> {
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        let replicas = self.replicas(&key);
        let required = consistency.required(replicas.len());
        let mut tally = QuorumTally::new(required, replicas.len());
        let skip = self.nodes_to_skip(&replicas, required);
        // Ask just R replicas, this node first (a local read is cheapest),
        // and replace each failure with the next one: R + W > N still holds.
        let mut untried = call_order(&replicas, &self.cfg.node_id, &skip);
        let mut calls = JoinSet::new();
        let start = |calls: &mut JoinSet<_>, node: String| {
            let this = Arc::clone(self);
            let keys = vec![key.clone()];
            calls.spawn(async move {
                let outcome = this.read_coalesced(&node, keys).await;
                (node, outcome)
            });
        };
        for _ in 0..required {
            if let Some(node) = untried.pop_front() {
                start(&mut calls, node);
            }
        }
        let mut answers: Vec<(String, Option<Record>)> = Vec::with_capacity(replicas.len());
        while let Some(joined) = calls.join_next().await {
            let failed = match joined {
                Ok((node, Ok(mut records))) => {
                    tally.ack(node.clone());
                    answers.push((node, records.pop().flatten()));
                    false
                }
                Ok((node, Err(error))) => {
                    tally.fail(node, error);
                    true
                }
                Err(join_error) => {
                    warn!(%join_error, "replica call task failed");
                    true
                }
            };
            if failed
                && tally.state() == TallyState::Waiting
                && let Some(node) = untried.pop_front()
            {
                start(&mut calls, node);
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
        let response = self
            .tracked(node, self.peers.apply(node, records, None))
            .await?;
        Ok(response.results)
    }

    /// Awaits a call to a peer and records its outcome in the membership
    /// view (a failure marks the peer suspect at once).
    async fn tracked<T>(
        &self,
        node: &str,
        call: impl std::future::Future<Output = Result<T, crate::peer::PeerError>>,
    ) -> Result<T, String> {
        match call.await {
            Ok(value) => {
                self.note_success(node);
                Ok(value)
            }
            Err(error) => {
                let reason = error.to_string();
                self.note_failure(node, &reason);
                Err(reason)
            }
        }
    }

    /// Asks `node`, a fallback, to keep records as hints for `owner`.
    pub async fn apply_hint_on(
        &self,
        node: &str,
        owner: &str,
        records: Vec<KeyedRecord>,
    ) -> Result<Vec<ApplyStatus>, String> {
        if node == self.cfg.node_id {
            return self
                .apply_local_as_hint(owner, records)
                .await
                .map_err(|e| e.to_string());
        }
        let call = self.peers.apply(node, records, Some(owner.to_owned()));
        Ok(self.tracked(node, call).await?.results)
    }

    /// Keeps records as hints for `owner` (this node is a sloppy-quorum
    /// fallback). All are stored, or all refused when the hint bounds are hit.
    pub async fn apply_local_as_hint(
        &self,
        owner: &str,
        records: Vec<KeyedRecord>,
    ) -> Result<Vec<ApplyStatus>, StoreError> {
        let now = now_ms();
        let len = records.len();
        let in_bounds = {
            let clock = lock(&self.clock);
            records
                .iter()
                .all(|kr| clock.check(kr.record.version.ts, now).is_ok())
        };
        if !self.cfg.nodes.contains_key(owner) || owner == self.cfg.node_id || !in_bounds {
            return Ok(vec![ApplyStatus::Refused; len]);
        }
        let kept = self.store_hints(owner, records).await?;
        Ok(vec![
            if kept {
                ApplyStatus::Stored
            } else {
                ApplyStatus::Refused
            };
            len
        ])
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
        Ok(self
            .tracked(node, self.peers.read(node, keys))
            .await?
            .records)
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
        self.stats.anti_entropy_runs.fetch_add(1, Ordering::Relaxed);
        self.stats
            .anti_entropy_stored
            .fetch_add(report.stored, Ordering::Relaxed);
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
            let page = self.store.scan_in(space, cursor, SCAN_PAGE_LEN).await?;
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
                .store
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
        let theirs = match self.tracked(peer, self.peers.merkle(peer)).await {
            Ok(response) => response.summary,
            Err(error) => {
                report.error = Some(error);
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
            let call = self.peers.buckets(peer, wanted.clone(), cursor);
            let (records, next_cursor) = match self.tracked(peer, call).await {
                Ok(response) => (response.records, response.next_cursor),
                Err(error) => {
                    report.error = Some(error);
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
            for status in self.apply_local(records).await? {
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

    /// Delivers the hints this node keeps to their owners that answer, in
    /// batches; each delivered hint is removed only if it was not replaced
    /// meanwhile. Returns how many records were delivered.
    pub async fn deliver_hints(&self) -> Result<u64, StoreError> {
        let mut delivered = 0u64;
        for owner in self.cfg.nodes.keys().filter(|n| **n != self.cfg.node_id) {
            let space = Space::Hints(owner.clone());
            if self.store.count_in(&space).await? == 0 {
                continue;
            }
            let mut cursor = 0;
            loop {
                let page = self
                    .store
                    .scan_in(&space, cursor, SCAN_PAGE_LEN.min(APPLY_BATCH_LEN_MAX))
                    .await?;
                if !page.records.is_empty() {
                    let batch: Vec<KeyedRecord> = page
                        .records
                        .iter()
                        .map(|(key, record)| KeyedRecord {
                            key: key.clone(),
                            record: record.clone(),
                        })
                        .collect();
                    if self.apply_on(owner, batch).await.is_err() {
                        break; // still down; try again next round
                    }
                    let removed = self.store.remove_if_same(&space, &page.records).await?;
                    delivered += removed;
                    self.stats
                        .hints_delivered
                        .fetch_add(removed, Ordering::Relaxed);
                }
                if page.next_cursor == 0 {
                    break;
                }
                cursor = page.next_cursor;
            }
            if self.store.count_in(&space).await? == 0 {
                self.store
                    .delete_plain(&hint_since_key(&self.cfg.node_id, owner))
                    .await?;
                info!(%owner, "all hints delivered");
            }
        }
        Ok(delivered)
    }

    /// Collects tombstones older than the grace period, and only those that
    /// every other replica of the key also holds (or has already collected):
    /// a replica still holding an older value, or one that does not answer,
    /// keeps the tombstone alive, so a deleted key cannot come back.
    pub async fn collect_tombstones(&self) -> Result<u64, StoreError> {
        let grace_ms = u64::try_from(self.cfg.tombstone_grace.as_millis()).unwrap_or(u64::MAX);
        let horizon_ms = now_ms().saturating_sub(grace_ms);
        self.stats.gc_runs.fetch_add(1, Ordering::Relaxed);
        let mut candidates: Vec<(String, Record)> = Vec::new();
        self.for_each_local(&Space::Data, |key, record| {
            if record.is_tombstone()
                && record.version.ts.wall_ms < horizon_ms
                && candidates.len() < GC_BATCH_LEN_MAX
            {
                candidates.push((key, record));
            }
        })
        .await?;
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
            let keys: Vec<String> = indexes.iter().map(|i| candidates[*i].0.clone()).collect();
            match self.read_on(&node, keys).await {
                Ok(records) if records.len() == indexes.len() => {
                    for (i, theirs) in indexes.iter().zip(records) {
                        let ours = &candidates[*i].1;
                        // Safe only if that replica has nothing older than our tombstone.
                        if theirs.is_some_and(|t| t.version < ours.version) {
                            safe[*i] = false;
                        }
                    }
                }
                _ => {
                    for i in indexes {
                        safe[i] = false;
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
            .store
            .remove_if_same(&Space::Data, &collectable)
            .await?;
        self.stats
            .tombstones_collected
            .fetch_add(removed, Ordering::Relaxed);
        Ok(removed)
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

    /// Whether `node` answers now (this node: whether its store answers).
    /// Records the outcome like any other call.
    pub async fn probe(&self, node: &str) -> bool {
        if node == self.cfg.node_id {
            return self.store.ping().await.is_ok();
        }
        self.tracked(node, self.peers.health(node)).await.is_ok()
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
                this.probe(&node).await;
            });
        }
        while calls.join_next().await.is_some() {}
    }
}
