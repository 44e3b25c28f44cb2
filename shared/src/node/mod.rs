//! One node: [`Node`], what every process of a node shares (API and
//! workers), and [`Coordinator`], the API's handle over it, which adds what
//! only client requests need. Both are wired once, in [`Node::build`] and
//! [`Coordinator::build`]. The operations, one concern per file:
//!
//! - [`replicas`]: apply / read on one replica (local or remote), group
//!   commit per replica, the failure detector and probes;
//! - [`write`] and [`read`] (the Coordinator's): drive the pure plans of
//!   `core::plan`;
//! - [`list`] (the Coordinator's): a page of the cluster's keys in order;
//! - [`hints`]: hinted handoff, kept and delivered;
//! - [`sync`]: anti-entropy, and the start-up restore (`try_restore`);
//! - [`gc`]: tombstone collection;
//! - [`explain`]: every node's view of one key, and its repair on request;
//! - `fence`: the clock fence and the persisted clock mark;
//! - [`notify`]: notification e-mails, queued or handed to the in-process sender;
//! - [`stats`]: the counter table, summed over the node's processes in Redis;
//! - [`status`]: what the dashboard shows of each node, gathered from every peer;
//! - [`watch`]: the live change feed of the API process, for watchers.
//!
//! Any node coordinates any request. Handlers (axum) and job functions
//! (`crate::work`, which take a [`Node`]) are thin wrappers over this.

pub mod conditional;
mod errors;
pub mod explain;
mod fence;
pub mod gc;
pub mod hints;
pub mod list;
pub mod members;
pub mod notify;
pub mod read;
pub mod replicas;
pub mod ryw;
pub mod stats;
pub mod status;
pub mod sync;
pub mod watch;
pub mod write;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use thiserror::Error;
use tokio::sync::{Semaphore, mpsc};

use crate::clock::{lock, set_clock_offset_ms};
use crate::config::Config;
use crate::core::jobs::RetryPolicy;
use crate::core::limits::READ_REPAIRS_IN_FLIGHT_MAX;
use crate::core::mail::MailJob;
use crate::core::membership::{Health, PeerState};
use crate::core::message::{ApplyStatus, KeyedRecord};
use crate::core::plan::ReplicaFailure;
use crate::keyspace::counters_key;
use crate::peer::{PeerClient, PeerSetupError};
use crate::queue::{JobQueues, ReplicationBatcher};
use crate::storage::{ScanPage, Store, StoreError};

pub use errors::{Shadowed, Unavailable};
pub use hints::SCAN_PAGE_LEN;
pub use list::ListReport;
pub use read::ReadReport;
pub use replicas::{ReplicaError, ReplicaIo, Replicas};
pub use stats::{COUNTERS, Stats};
pub use sync::{RestorePeerReport, RestoreReport, RestoreState};
pub use write::{HintPlacement, WRITE_ATTEMPTS_MAX, WriteReport};

/// Notifications waiting for the in-process sender (background sync off);
/// beyond it a notification is logged and counted as not queued.
pub const MAIL_INLINE_IN_FLIGHT_MAX: usize = 64;

/// How often the clock's high-water mark is persisted.
pub const CLOCK_PERSIST_INTERVAL_MS: u64 = 100;
/// How far above the persisted mark a restarted clock resumes: more than
/// the clock can advance between two persists. A mark adopted from a peer
/// in the last interval before a crash may be missed; the write path's
/// re-stamp (see [`write`]) still orders a write above what a replica holds.
pub const CLOCK_RESUME_MARGIN_MS: u64 = 1_000;

/// The sending end of the in-process mail channel (background sync off).
pub type MailSender = mpsc::Sender<MailJob>;

/// One replica that did not acknowledge, as a client sees it: the node, a
/// code and a safe message (never a peer's or Redis's own error text).
#[derive(Debug, Clone, Serialize)]
pub struct NodeFailure {
    pub node: String,
    pub code: &'static str,
    pub error: &'static str,
}

impl From<&ReplicaFailure> for NodeFailure {
    fn from(f: &ReplicaFailure) -> Self {
        NodeFailure {
            node: f.node.clone(),
            code: f.kind.as_str(),
            error: f.kind.message(),
        }
    }
}

/// Failures of a coordinated operation, grouped by what the caller can do.
#[derive(Debug, Error)]
pub enum CoordError {
    /// Not enough replicas answered: retry later or lower the consistency.
    #[error("{0}")]
    Unavailable(Box<Unavailable>),
    /// This node's clock is further from its peers' than the drift bound:
    /// it refuses to coordinate writes until it is back within the bound.
    #[error(
        "this node's clock is {offset_ms} ms from its peers' (bound {drift_max_ms} ms); it does not coordinate writes"
    )]
    ClockSkew { offset_ms: i64, drift_max_ms: u64 },
    /// A replica kept a newer version after every re-stamp.
    #[error("{0}")]
    Shadowed(Box<Shadowed>),
    /// This node's own storage failed: the node is unhealthy.
    #[error("local storage: {0}")]
    Storage(#[from] StoreError),
    /// A conditional write's condition did not hold: the key's current
    /// version (a tombstone's, with `deleted`), or none.
    #[error("precondition failed: the key's current version is {current:?}")]
    PreconditionFailed {
        current: Option<String>,
        deleted: bool,
    },
    /// A read with `min_version` found nothing that new within the wait.
    #[error(
        "no replica or hint holds a version of at least {min} (newest seen: {newest:?}) after {waited_ms} ms"
    )]
    MinVersion {
        min: String,
        newest: Option<String>,
        waited_ms: u64,
    },
    /// A `min_version` stamped beyond the drift bound from now: no write
    /// of this cluster was answered with it.
    #[error("min_version {min} is beyond this cluster's clock; no write answered it")]
    FutureMinVersion { min: String },
    /// A named peer is not part of the cluster.
    #[error("unknown node {0:?}")]
    UnknownNode(String),
    /// A membership change cannot start.
    #[error("{0}")]
    Membership(#[from] crate::core::topology::ChangeError),
    /// A step of a membership change was asked for another epoch than the
    /// one this node follows.
    #[error("asked for topology epoch {asked}; this node follows epoch {current}")]
    EpochMismatch { asked: u64, current: u64 },
}

/// What every process of a node shares — API and workers alike: its
/// configuration, ring, replica transport (with the failure detector and
/// the clock), queues and counters, and the operations jobs need (hints,
/// anti-entropy, GC, heartbeat probes, notifications). A worker holds only
/// this. Wired once in [`Node::build`].
pub struct Node {
    cfg: Arc<Config>,
    replicas: Replicas,
    queues: Option<JobQueues>,
    /// In-process notifications (background sync off).
    inline_mail: Option<MailSender>,
    /// Which hash-tree leaves each peer shares with this node.
    sharing: sync::SharingCache,
    /// The exchange with a peer in progress, if any (a membership change's
    /// pull), for `GET /cluster/members`.
    pulling: Mutex<Option<sync::RestorePeerReport>>,
    pub stats: Arc<Stats>,
}

/// The API process's handle: its [`Node`] (reached through `Deref`) plus
/// what only the coordination of client requests needs — group commit of
/// replication jobs, the bound on read repairs in flight, the start-up
/// restore's state and the clock fence's last state.
pub struct Coordinator {
    node: Arc<Node>,
    /// Group commit of replication jobs (background sync on).
    batcher: Option<ReplicationBatcher>,
    repair_permits: Arc<Semaphore>,
    restore_state: Mutex<RestoreState>,
    /// Whether the last probe round found this node's clock fenced.
    was_fenced: AtomicBool,
    /// Whether the start-up probe round has measured the peers' clocks
    /// (client requests wait for it; see [`Coordinator::wait_clock_measured`]).
    clock_measured: tokio::sync::watch::Sender<bool>,
    /// Per-key locks of the conditional writes this node referees.
    condition_locks: conditional::ConditionLocks,
    /// The membership change this node drives or drove last.
    change: Mutex<Option<members::ChangeProgress>>,
    /// Reads and writes in flight, by the topology epoch that placed them.
    in_flight: members::InFlight,
    /// A change in progress: the epoch this node follows and since when
    /// (ms), to resume a change no node drives (`resume_if_stalled`).
    stall: Mutex<(u64, u64)>,
}

impl std::ops::Deref for Coordinator {
    type Target = Node;

    fn deref(&self) -> &Node {
        &self.node
    }
}

impl Coordinator {
    /// A node without queues (tests of handlers and pure paths).
    /// Its clock counts as measured: nothing probes its peers first.
    pub fn new(cfg: Arc<Config>, store: Store) -> Result<Arc<Self>, PeerSetupError> {
        let coord = Self::build(cfg, store, None, None)?;
        coord.mark_clock_measured();
        Ok(coord)
    }

    /// Wires the API's handle over a new [`Node`]; see [`Node::build`].
    pub fn build(
        cfg: Arc<Config>,
        store: Store,
        queues: Option<JobQueues>,
        inline_mail: Option<MailSender>,
    ) -> Result<Arc<Self>, PeerSetupError> {
        let node = Node::build(cfg, store, queues, inline_mail)?;
        let batcher = node
            .queues
            .as_ref()
            .filter(|_| node.cfg.background_sync)
            .map(|q| ReplicationBatcher::start(q.clone()));
        Ok(Arc::new(Coordinator {
            node,
            batcher,
            repair_permits: Arc::new(Semaphore::new(READ_REPAIRS_IN_FLIGHT_MAX)),
            restore_state: Mutex::new(RestoreState::Idle),
            was_fenced: AtomicBool::new(false),
            clock_measured: tokio::sync::watch::Sender::new(false),
            condition_locks: conditional::ConditionLocks::default(),
            change: Mutex::new(None),
            in_flight: members::InFlight::default(),
            stall: Mutex::new((0, 0)),
        }))
    }

    /// The node under this handle (what job functions take).
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    pub fn restore_state(&self) -> RestoreState {
        lock(&self.restore_state).clone()
    }
}

impl Node {
    /// Wires a node: its queues (`None`: jobs are neither pushed nor run)
    /// and, with background sync off, the in-process mail sender. Must be
    /// called inside a tokio runtime when queues are given.
    pub fn build(
        cfg: Arc<Config>,
        store: Store,
        queues: Option<JobQueues>,
        inline_mail: Option<MailSender>,
    ) -> Result<Arc<Self>, PeerSetupError> {
        set_clock_offset_ms(cfg.clock_offset_ms);
        let view = members::View::new(members::initial_topology(&cfg), &cfg);
        let peers = PeerClient::new(
            &cfg.node_id,
            view.topology.nodes.clone(),
            &cfg.cluster_secret.0,
            cfg.peer_connect_timeout,
            cfg.peer_request_timeout,
            cfg.peer_source_addr,
            cfg.tls.client_config().map_err(PeerSetupError::Tls)?,
        )?;
        let stats = Arc::new(Stats::default());
        peers.set_peers(&view.topology.nodes, view.topology.epoch)?;
        let io = ReplicaIo::new(Arc::clone(&cfg), store, peers, Arc::clone(&stats), view);
        Ok(Arc::new(Node {
            replicas: Replicas::new(io),
            queues,
            inline_mail,
            sharing: sync::SharingCache::default(),
            pulling: Mutex::new(None),
            stats,
            cfg,
        }))
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn node_id(&self) -> &str {
        &self.cfg.node_id
    }

    pub fn store(&self) -> &Store {
        &self.replicas.io.store
    }

    pub fn queues(&self) -> Option<&JobQueues> {
        self.queues.as_ref()
    }

    /// Latency of this process's calls to its peers, per peer and route.
    pub fn peer_latency(&self) -> Vec<((String, &'static str), crate::core::histogram::Histogram)> {
        self.replicas.io.peers.latency().snapshot()
    }

    /// The replica transport (jobs deliver through its coalescers).
    pub fn transport(&self) -> &Replicas {
        &self.replicas
    }

    /// The replicas a read of `key` asks: the first N distinct nodes
    /// clockwise on the ring reads follow (see `core::topology`).
    pub fn replicas(&self, key: &str) -> Vec<String> {
        self.view()
            .placement
            .read_replicas(key)
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    /// Every node that should hold `key` now: the read replicas, and during
    /// a membership change the other owner set's too.
    pub fn holders(&self, key: &str) -> Vec<String> {
        self.view()
            .placement
            .holders(key)
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    /// This node's reference time (ms): its clock, corrected by the peers'
    /// median offset when fenced. Expiry is decided against it.
    pub fn reference_now_ms(&self) -> u64 {
        self.replicas.io.reference_now_ms()
    }

    /// This node's clock against its peers' (fenced or not).
    pub fn clock_view(&self) -> replicas::ClockView {
        self.replicas.io.clock_view()
    }

    pub fn peer_states(&self) -> BTreeMap<String, PeerState> {
        self.replicas.io.peer_states()
    }

    pub fn peer_health(&self, node: &str) -> Health {
        self.replicas.io.peer_health(node)
    }

    pub async fn probe(&self, node: &str) -> bool {
        self.replicas.io.probe(node).await
    }

    /// Stores records newer than the local copies (see [`ReplicaIo::apply_local`]).
    pub async fn apply_local(
        &self,
        records: Vec<KeyedRecord>,
    ) -> Result<Vec<ApplyStatus>, StoreError> {
        self.replicas.io.apply_local(records).await
    }

    /// Stores the records of keys this node holds (see [`ReplicaIo::apply_held`]).
    pub async fn apply_held(
        &self,
        records: Vec<KeyedRecord>,
    ) -> Result<Vec<ApplyStatus>, StoreError> {
        self.replicas.io.apply_held(records).await
    }

    /// Keeps records as hints for `owner` (this node is a fallback).
    pub async fn apply_local_as_hint(
        &self,
        owner: &str,
        records: Vec<KeyedRecord>,
    ) -> Result<Vec<ApplyStatus>, StoreError> {
        self.replicas.io.apply_local_as_hint(owner, records).await
    }

    /// Keeps records as hints for `owner` on this node; whether kept.
    pub async fn keep_hint(&self, owner: &str, records: Vec<KeyedRecord>) -> bool {
        self.replicas.io.keep_hint(owner, records).await
    }

    /// One page of this node's local records.
    pub async fn scan_local(&self, cursor: u64, count: usize) -> Result<ScanPage, StoreError> {
        self.store().scan(cursor, count).await
    }

    /// Removes local records that are still exactly as given (tombstones
    /// another replica collected); returns how many.
    pub async fn collect_local(&self, records: Vec<KeyedRecord>) -> Result<u64, StoreError> {
        let pairs: Vec<(String, crate::core::record::Record)> =
            records.into_iter().map(|kr| (kr.key, kr.record)).collect();
        let removed = self
            .store()
            .remove_if_same(&crate::storage::Space::Data, &pairs)
            .await?;
        Stats::add(&self.stats.tombstones_collected, removed);
        Ok(removed)
    }

    /// The retry policy of background jobs.
    pub fn retry_policy(&self) -> RetryPolicy {
        crate::queue::retry_policy(&self.cfg)
    }

    /// The node's counters, summed over its processes (see [`stats`]).
    pub async fn counters(&self) -> Vec<(&'static str, u64)> {
        self.stats
            .node_wide(self.store(), &counters_key(&self.cfg.node_id))
            .await
    }

    /// Adds this process's new counts to the node's counters in Redis.
    pub async fn flush_counters(&self) -> Result<(), StoreError> {
        self.stats
            .flush(self.store(), &counters_key(&self.cfg.node_id))
            .await
    }
}
