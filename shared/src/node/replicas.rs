//! Replica transport: apply and read records on one replica (this node's
//! store, or a peer's internal API), with group commit per replica, and the
//! failure detector fed by every call's outcome.
//!
//! [`ReplicaIo`] does the calls and owns no coalescer; [`Replicas`] adds one
//! coalescer per replica whose batch call holds an `Arc<ReplicaIo>`, so there
//! is no pointer back to the node handle.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use thiserror::Error;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::clock::{NodeClock, lock, now_ms};
use crate::coalesce::{BatchError, BatchFuture, BatchLimits, CallError, Coalescer};
use crate::config::Config;
use crate::core::limits::{APPLY_BATCH_LEN_MAX, INTERNAL_ANSWER_BYTES_MAX, READ_BATCH_LEN_MAX};
use crate::core::listing::NodePage;
use crate::core::membership::{Health, Membership, PeerState, Transition};
use crate::core::message::{ApplyStatus, KeyedRecord, RangeRequest};
use crate::core::plan::FailureKind;
use crate::core::record::Record;
use crate::node::members::View;
use crate::node::stats::Stats;
use crate::peer::{PeerClient, PeerError};
use crate::storage::{Store, StoreError};

/// Approximate bytes of the records one group-committed apply carries
/// (a single large record still goes alone), well under the internal body limit.
pub const COALESCED_APPLY_BYTES_MAX: usize = 4 * 1024 * 1024;
/// How long a peer that failed a call is skipped before it is tried again.
pub const PEER_RETRY_AFTER_MS: u64 = 1_000;
/// Failed calls in a row before a suspect peer is considered down.
pub const PEER_DOWN_AFTER_FAILURES: u32 = 2;

/// A replica call that failed: which node, what kind of failure, and the
/// detail for logs (never shown to clients).
#[derive(Debug, Clone, Error)]
#[error("{node}: {}: {detail}", kind.as_str())]
pub struct ReplicaError {
    pub node: String,
    pub kind: FailureKind,
    pub detail: String,
}

impl ReplicaError {
    pub fn new(node: &str, kind: FailureKind, detail: impl Into<String>) -> Self {
        ReplicaError {
            node: node.to_owned(),
            kind,
            detail: detail.into(),
        }
    }

    fn from_peer(node: &str, error: &PeerError) -> Self {
        let kind = match error {
            PeerError::UnknownNode(_) => FailureKind::UnknownNode,
            PeerError::Unreachable { .. } => FailureKind::Unreachable,
            PeerError::Timeout { .. } => FailureKind::Timeout,
            PeerError::Status { status: 503, .. } => FailureKind::Overloaded,
            PeerError::Status { .. } => FailureKind::Status,
            PeerError::Decode { .. } => FailureKind::BadAnswer,
            PeerError::StaleEpoch { .. } => FailureKind::StaleEpoch,
        };
        ReplicaError::new(node, kind, error.to_string())
    }

    fn from_store(node: &str, error: &StoreError) -> Self {
        ReplicaError::new(node, FailureKind::Storage, error.to_string())
    }

    fn from_call(node: &str, error: CallError<ReplicaError>) -> Self {
        match error {
            CallError::Call(error) => error,
            CallError::Batch(error @ BatchError::Overloaded) => {
                ReplicaError::new(node, FailureKind::Overloaded, error.to_string())
            }
            CallError::Batch(error) => {
                ReplicaError::new(node, FailureKind::BadAnswer, error.to_string())
            }
        }
    }
}

/// The calls themselves, and the view of peer health they feed.
pub struct ReplicaIo {
    pub(crate) cfg: Arc<Config>,
    pub(crate) store: Store,
    pub(crate) peers: PeerClient,
    pub(crate) clock: NodeClock,
    pub(crate) stats: Arc<Stats>,
    pub(crate) membership: Mutex<Membership>,
    /// Per peer: (its clock minus ours in ms, when measured), from probes.
    clock_offsets: Mutex<BTreeMap<String, (i64, u64)>>,
    /// The topology this process follows and the placement derived from
    /// it (see `members`); replaced whole when a newer one is adopted.
    pub(crate) view: RwLock<Arc<View>>,
    /// Whether a fetch of a newer topology is under way.
    pub(crate) learning: std::sync::atomic::AtomicBool,
}

/// How long a peer's measured clock offset counts toward fencing.
pub const CLOCK_OFFSET_TTL_MS: u64 = 30_000;

/// This node's clock against its peers' (see `core::hlc::fenced`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClockView {
    pub fenced: bool,
    pub peers_measured: usize,
    pub median_offset_ms: i64,
    pub drift_max_ms: u64,
}

impl ReplicaIo {
    pub fn new(
        cfg: Arc<Config>,
        store: Store,
        peers: PeerClient,
        stats: Arc<Stats>,
        view: View,
    ) -> Self {
        // The seeds too: a joining node learns the cluster by probing them.
        let others: Vec<String> = view
            .topology
            .nodes
            .keys()
            .filter(|n| **n != cfg.node_id)
            .cloned()
            .collect();
        ReplicaIo {
            view: RwLock::new(Arc::new(view)),
            learning: std::sync::atomic::AtomicBool::new(false),
            clock: NodeClock::new(cfg.clock_drift_ms_max),
            membership: Mutex::new(Membership::new(
                others,
                PEER_RETRY_AFTER_MS,
                PEER_DOWN_AFTER_FAILURES,
            )),
            clock_offsets: Mutex::new(BTreeMap::new()),
            cfg,
            store,
            peers,
            stats,
        }
    }

    /// This node's clock as its recently probed peers see it.
    pub fn clock_view(&self) -> ClockView {
        let now = now_ms();
        let offsets: Vec<i64> = lock(&self.clock_offsets)
            .values()
            .filter(|(_, at)| now.saturating_sub(*at) <= CLOCK_OFFSET_TTL_MS)
            .map(|(offset, _)| *offset)
            .collect();
        ClockView {
            fenced: crate::core::hlc::fenced(&offsets, self.cfg.clock_drift_ms_max),
            peers_measured: offsets.len(),
            median_offset_ms: crate::core::hlc::median_offset_ms(&offsets),
            drift_max_ms: self.cfg.clock_drift_ms_max,
        }
    }

    /// A peer refused a version this node stamped as too far ahead of its
    /// clock: count it as a measurement of the peer's clock beyond the
    /// bound (behind ours), until a probe measures it again. When most
    /// peers refuse, this node is fenced at once, before its next probes.
    pub fn note_clock_refusal(&self, node: &str) {
        let beyond = i64::try_from(self.cfg.clock_drift_ms_max)
            .unwrap_or(i64::MAX)
            .saturating_add(1);
        lock(&self.clock_offsets).insert(node.to_owned(), (-beyond, now_ms()));
    }

    /// "Now" by which versions are judged: this node's clock, or, while it
    /// is fenced, its peers' (its clock corrected by their median offset),
    /// so a fenced node never serves versions its own fast clock made.
    pub fn reference_now_ms(&self) -> u64 {
        let view = self.clock_view();
        if view.fenced {
            now_ms().saturating_add_signed(view.median_offset_ms)
        } else {
            now_ms()
        }
    }

    fn me(&self) -> &str {
        &self.cfg.node_id
    }

    /// Applies records on one replica: locally, or through its internal API.
    pub async fn apply_on(
        &self,
        node: &str,
        records: Vec<KeyedRecord>,
    ) -> Result<Vec<ApplyStatus>, ReplicaError> {
        if node == self.me() {
            return self
                .apply_held(records)
                .await
                .map_err(|e| ReplicaError::from_store(node, &e));
        }
        let response = self
            .tracked(node, self.peers.apply(node, records, None))
            .await?;
        Ok(response.results)
    }

    /// Asks `node`, a fallback, to keep records as hints for `owner`.
    pub async fn apply_hint_on(
        &self,
        node: &str,
        owner: &str,
        records: Vec<KeyedRecord>,
    ) -> Result<Vec<ApplyStatus>, ReplicaError> {
        if node == self.me() {
            return self
                .apply_local_as_hint(owner, records)
                .await
                .map_err(|e| ReplicaError::from_store(node, &e));
        }
        let call = self.peers.apply(node, records, Some(owner.to_owned()));
        Ok(self.tracked(node, call).await?.results)
    }

    /// Reads records from one replica: locally, or through its internal API.
    pub async fn read_on(
        &self,
        node: &str,
        keys: Vec<String>,
    ) -> Result<Vec<Option<Record>>, ReplicaError> {
        if node == self.me() {
            return self
                .store
                .get_many(&keys)
                .await
                .map_err(|e| ReplicaError::from_store(node, &e));
        }
        // An answer is bounded in bytes and may cover a prefix of the keys:
        // ask again for the rest until every key is answered.
        let mut out: Vec<Option<Record>> = Vec::with_capacity(keys.len());
        while out.len() < keys.len() {
            let rest = keys[out.len()..].to_vec();
            let asked = rest.len();
            let records = self
                .tracked(node, self.peers.read(node, rest))
                .await?
                .records;
            if records.is_empty() || records.len() > asked {
                return Err(ReplicaError::new(
                    node,
                    FailureKind::BadAnswer,
                    format!("{} records for {asked} keys", records.len()),
                ));
            }
            out.extend(records);
        }
        Ok(out)
    }

    /// One page of a replica's records in a key range (a listing): locally,
    /// or through its internal API.
    pub async fn range_on(
        &self,
        node: &str,
        request: &RangeRequest,
    ) -> Result<NodePage, ReplicaError> {
        if node == self.me() {
            return self
                .store
                .range(&request.range, request.limit, INTERNAL_ANSWER_BYTES_MAX)
                .await
                .map_err(|e| ReplicaError::from_store(node, &e));
        }
        self.tracked(node, self.peers.range(node, request)).await
    }

    /// Removes records on one replica that are still exactly as given
    /// (collected tombstones); returns how many were removed.
    pub async fn collect_on(
        &self,
        node: &str,
        records: Vec<KeyedRecord>,
    ) -> Result<u64, ReplicaError> {
        if node == self.me() {
            let pairs: Vec<(String, Record)> =
                records.into_iter().map(|kr| (kr.key, kr.record)).collect();
            return self
                .store
                .remove_if_same(&crate::storage::Space::Data, &pairs)
                .await
                .map_err(|e| ReplicaError::from_store(node, &e));
        }
        Ok(self
            .tracked(node, self.peers.collect(node, records))
            .await?
            .removed)
    }

    /// [`ReplicaIo::apply_local`] of the records whose keys this node holds
    /// in the topology it follows; the others answer
    /// [`ApplyStatus::NotHeld`] and are not stored (so a replication job
    /// queued before a membership change cannot put a key back on a node
    /// that no longer holds it).
    pub async fn apply_held(
        &self,
        records: Vec<KeyedRecord>,
    ) -> Result<Vec<ApplyStatus>, StoreError> {
        let view = self.view();
        let me = self.me();
        let held: Vec<bool> = records
            .iter()
            .map(|kr| view.placement.holders(&kr.key).contains(&me))
            .collect();
        if held.iter().all(|h| *h) {
            return self.apply_local(records).await;
        }
        let mut statuses = vec![ApplyStatus::NotHeld; records.len()];
        let (at, mine): (Vec<usize>, Vec<KeyedRecord>) = records
            .into_iter()
            .enumerate()
            .filter(|(i, _)| held[*i])
            .unzip();
        for (i, status) in at.into_iter().zip(self.apply_local(mine).await?) {
            statuses[i] = status;
        }
        Ok(statuses)
    }

    /// Stores records that are newer than the local copies. Records whose
    /// version is further ahead of our clock than the drift limit are refused
    /// (a timestamp bomb must not freeze a key); the others are observed by
    /// our clock so later writes coordinated here are ordered after them.
    pub async fn apply_local(
        &self,
        records: Vec<KeyedRecord>,
    ) -> Result<Vec<ApplyStatus>, StoreError> {
        let mut statuses = vec![ApplyStatus::Refused; records.len()];
        // Judged by the peers' time while this node is fenced: a node with a
        // fast clock must not take records from the future either.
        let observed = self.clock.observe_all_at(
            records.iter().map(|kr| kr.record.version.ts),
            self.reference_now_ms(),
        );
        let mut accepted_at = Vec::with_capacity(records.len());
        let mut accepted = Vec::with_capacity(records.len());
        for (i, (kr, ok)) in records.into_iter().zip(observed).enumerate() {
            if ok {
                accepted_at.push(i);
                accepted.push((kr.key, kr.record));
            } else {
                Stats::add(&self.stats.refused_versions, 1);
                warn!(key = %kr.key, version = %kr.record.version, "refused a record from the future");
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

    /// Awaits a call to a peer and records its outcome in the membership
    /// view (a failure marks the peer suspect at once).
    pub(crate) async fn tracked<T>(
        &self,
        node: &str,
        call: impl std::future::Future<Output = Result<T, PeerError>>,
    ) -> Result<T, ReplicaError> {
        match call.await {
            Ok(value) => {
                self.note_success(node);
                Ok(value)
            }
            Err(PeerError::StaleEpoch {
                node: peer,
                topology,
            }) => {
                // The peer answered: healthy, but this node is behind.
                self.note_success(node);
                let epoch = topology.epoch;
                self.adopt_and_keep(*topology).await;
                Err(ReplicaError::new(
                    &peer,
                    FailureKind::StaleEpoch,
                    format!("peer is at topology epoch {epoch}"),
                ))
            }
            Err(error) => {
                let refused = matches!(
                    error,
                    PeerError::Status {
                        status: 400 | 413 | 422,
                        ..
                    }
                );
                let error = ReplicaError::from_peer(node, &error);
                if refused {
                    // The peer answered and refused what was sent (a bound,
                    // a bad message): a fault of the request, not of the
                    // peer's health.
                    self.note_success(node);
                } else {
                    self.note_failure(node, &error.detail);
                }
                Err(error)
            }
        }
    }

    fn note_success(&self, node: &str) {
        if node == self.me() {
            return;
        }
        let transition = lock(&self.membership).success(node, now_ms());
        self.log_transition(transition);
    }

    fn note_failure(&self, node: &str, reason: &str) {
        if node == self.me() {
            return;
        }
        let transition = lock(&self.membership).failure(node, reason, now_ms());
        self.log_transition(transition);
    }

    fn log_transition(&self, transition: Option<Transition>) {
        if let Some(t) = transition {
            Stats::add(&self.stats.peer_transitions, 1);
            match t.to {
                Health::Up => info!(peer = %t.node, from = t.from.as_str(), "peer is up"),
                other => {
                    warn!(peer = %t.node, from = t.from.as_str(), to = other.as_str(), "peer health changed")
                }
            }
        }
    }

    /// Nodes of `nodes` not worth calling first: peers marked down that
    /// failed within the last [`PEER_RETRY_AFTER_MS`] (the plans call them
    /// last, or not at all when the others suffice).
    pub fn believed_down(&self, nodes: &[String]) -> Vec<String> {
        let now = now_ms();
        let membership = lock(&self.membership);
        nodes
            .iter()
            .filter(|n| **n != self.cfg.node_id && !membership.should_call(n, now))
            .cloned()
            .collect()
    }

    /// Health of every peer as this node sees it.
    pub fn peer_states(&self) -> BTreeMap<String, PeerState> {
        lock(&self.membership)
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect()
    }

    pub fn peer_health(&self, node: &str) -> Health {
        if node == self.me() {
            Health::Up
        } else {
            lock(&self.membership).health(node)
        }
    }

    /// Whether `node` answers now (this node: whether its store answers).
    /// Records the outcome like any other call.
    pub async fn probe(&self, node: &str) -> bool {
        if node == self.me() {
            return self.store.ping().await.is_ok();
        }
        let sent_ms = now_ms();
        let Ok(answer) = self.tracked(node, self.peers.health(node)).await else {
            return false;
        };
        let received_ms = now_ms();
        // A peer at a newer topology epoch: fetch it (the probes are how a
        // restarted or joining node catches up before its first request).
        if let Some(epoch) = answer.get("epoch").and_then(serde_json::Value::as_u64)
            && epoch > self.view().topology.epoch
            && let Ok(topology) = self.tracked(node, self.peers.topology(node)).await
        {
            self.adopt_and_keep(topology).await;
        }
        if let Some(peer_ms) = answer.get("now_ms").and_then(serde_json::Value::as_u64) {
            let middle_ms = sent_ms / 2 + received_ms / 2;
            let offset = i64::try_from(peer_ms).unwrap_or(i64::MAX)
                - i64::try_from(middle_ms).unwrap_or(i64::MAX);
            lock(&self.clock_offsets).insert(node.to_owned(), (offset, received_ms));
        }
        true
    }
}

/// One coalescer per replica, started on first use; a node that joins gets
/// its own then.
type Slots<T, R> = Mutex<BTreeMap<String, Arc<Coalescer<T, R, ReplicaError>>>>;
/// A batch call made directly on a replica.
type Direct<T, R> = fn(Arc<ReplicaIo>, String, Vec<T>) -> BatchFuture<R, ReplicaError>;

/// The transport with group commit per replica (see [`crate::coalesce`]).
pub struct Replicas {
    pub io: Arc<ReplicaIo>,
    applies: Slots<KeyedRecord, ApplyStatus>,
    reads: Slots<String, Option<Record>>,
}

impl Replicas {
    pub fn new(io: ReplicaIo) -> Self {
        Replicas {
            applies: Mutex::default(),
            reads: Mutex::default(),
            io: Arc::new(io),
        }
    }

    /// [`ReplicaIo::apply_on`], sharing one call with the concurrent
    /// writes bound for the same replica.
    pub async fn apply(
        &self,
        node: &str,
        records: Vec<KeyedRecord>,
    ) -> Result<Vec<ApplyStatus>, ReplicaError> {
        let limits = BatchLimits {
            items_max: APPLY_BATCH_LEN_MAX,
            bytes_max: COALESCED_APPLY_BYTES_MAX,
        };
        let direct: Direct<KeyedRecord, ApplyStatus> =
            |io, node, records| Box::pin(async move { io.apply_on(&node, records).await });
        match self.coalescer(
            &self.applies,
            node,
            limits,
            KeyedRecord::approx_bytes,
            direct,
        ) {
            Some(c) => c
                .call(records)
                .await
                .map_err(|e| ReplicaError::from_call(node, e)),
            None => self.io.apply_on(node, records).await,
        }
    }

    /// [`ReplicaIo::read_on`], sharing one call with the concurrent reads
    /// bound for the same replica.
    pub async fn read(
        &self,
        node: &str,
        keys: Vec<String>,
    ) -> Result<Vec<Option<Record>>, ReplicaError> {
        let limits = BatchLimits {
            items_max: READ_BATCH_LEN_MAX,
            bytes_max: COALESCED_APPLY_BYTES_MAX,
        };
        let direct: Direct<String, Option<Record>> =
            |io, node, keys| Box::pin(async move { io.read_on(&node, keys).await });
        match self.coalescer(&self.reads, node, limits, String::len, direct) {
            Some(c) => c
                .call(keys)
                .await
                .map_err(|e| ReplicaError::from_call(node, e)),
            None => self.io.read_on(node, keys).await,
        }
    }

    /// The coalescer towards `node`, started on first use (it needs a
    /// running tokio runtime); `None` for a node outside the topology.
    fn coalescer<T: Send + 'static, R: Send + 'static>(
        &self,
        slots: &Slots<T, R>,
        node: &str,
        limits: BatchLimits,
        weight: fn(&T) -> usize,
        direct: Direct<T, R>,
    ) -> Option<Arc<Coalescer<T, R, ReplicaError>>> {
        let mut slots = lock(slots);
        if let Some(c) = slots.get(node) {
            return Some(Arc::clone(c));
        }
        if !self.io.view().topology.nodes.contains_key(node) {
            return None;
        }
        let (io, target) = (Arc::clone(&self.io), node.to_owned());
        let c = Arc::new(Coalescer::start(limits, weight, move |items| {
            direct(Arc::clone(&io), target.clone(), items)
        }));
        slots.insert(node.to_owned(), Arc::clone(&c));
        Some(c)
    }

    /// Calls the `/health` of every peer (or, with `only_unhealthy`, of every
    /// peer not known to be up) once and records the outcome. This light
    /// probe is what brings a peer marked down back into use.
    pub async fn probe_peers(&self, only_unhealthy: bool) {
        let targets: Vec<String> = self
            .io
            .peer_states()
            .into_iter()
            .filter(|(_, state)| !only_unhealthy || state.health != Health::Up)
            .map(|(node, _)| node)
            .collect();
        let mut calls = JoinSet::new();
        for node in targets {
            let io = Arc::clone(&self.io);
            calls.spawn(async move {
                io.probe(&node).await;
            });
        }
        while calls.join_next().await.is_some() {}
    }
}
