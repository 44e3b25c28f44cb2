//! Membership at run time (the rules are in `core::topology`):
//!
//! - [`View`]: the topology a process follows and its placement, replaced
//!   whole when a newer topology is adopted — from a peer that refused a
//!   call as stale, a probe's answer, a push, or the node's Redis;
//! - the topology is kept in the node's Redis ([`topology_key`]), so a
//!   restart resumes from it rather than from `KV_PEERS`;
//! - on a node asked to move data: [`Node::rebalance`] pulls what it gains
//!   (anti-entropy over the change's holders, paced in bytes per second),
//!   [`Node::cleanup`] drops what it no longer holds;
//! - on the API that accepted an admin request: [`Coordinator::request_change`]
//!   starts a join or leave and a task drives it through its phases,
//!   issuing each epoch only after every node took the previous one.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::replicas::ReplicaIo;
use super::sync::RestoreReport;
use super::{CoordError, Coordinator, Node};
use crate::clock::{lock, now_ms};
use crate::config::Config;
use crate::core::limits::APPLY_BATCH_LEN_MAX;
use crate::core::membership::Health;
use crate::core::topology::{ChangeError, MemberState, Phase, Placement, Topology, gained_shares};
use crate::keyspace::topology_key;
use crate::storage::{Space, StoreError};

/// How long a step of a change (every node taking an epoch, a node pulling
/// its share) may take before a change still in its `moving` phase is
/// abandoned (a new stable epoch with the old owners). Past `moving` a
/// change cannot be abandoned safely and is retried until it completes.
pub const CHANGE_STEP_TIMEOUT_MS: u64 = 120_000;
/// Pause between two rounds of offering an epoch to nodes that did not take it.
pub const CHANGE_RETRY_MS: u64 = 500;
/// Longest a node's pull of its share may take in one call.
pub const REBALANCE_CALL_TIMEOUT_MS: u64 = 30 * 60 * 1_000;
/// Longest a node's cleanup may take in one call.
pub const CLEANUP_CALL_TIMEOUT_MS: u64 = 30 * 60 * 1_000;
/// How often a worker reads the topology its API keeps in Redis.
pub const TOPOLOGY_FOLLOW_MS: u64 = 1_000;
/// Records read per page when a cleanup scans the local store.
pub const CLEANUP_PAGE_LEN: usize = 1_000;

/// The topology a process follows and the placement derived from it.
#[derive(Debug)]
pub struct View {
    pub topology: Topology,
    pub placement: Placement,
}

impl View {
    pub fn new(topology: Topology, cfg: &Config) -> Self {
        let placement = Placement::new(&topology, cfg.vnodes, cfg.replication_factor);
        View {
            topology,
            placement,
        }
    }
}

/// The topology a process starts from, before its Redis or its peers tell
/// it a newer one: every `KV_PEERS` node a member at epoch 1, or, for a
/// node started to join (`KV_JOIN`), the seeds only (epoch 0).
pub fn initial_topology(cfg: &Config) -> Topology {
    if cfg.join {
        let mut seeds = cfg.nodes.clone();
        seeds.remove(&cfg.node_id);
        Topology::joining(seeds)
    } else {
        Topology::seed(cfg.nodes.clone())
    }
}

/// The stored rank of a topology: byte order is [`Topology::rank`] order.
fn rank_text(topology: &Topology) -> String {
    format!("{:020}:{:016x}", topology.epoch, topology.digest())
}

impl ReplicaIo {
    /// The topology this process follows now.
    pub fn view(&self) -> Arc<View> {
        Arc::clone(&self.view.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Follows `topology` if it supersedes the current one; whether it did.
    pub fn adopt(&self, topology: Topology) -> bool {
        let mut view = self.view.write().unwrap_or_else(PoisonError::into_inner);
        if !topology.supersedes(&view.topology) {
            return false;
        }
        if let Err(error) = self.peers.set_peers(&topology.nodes, topology.epoch) {
            warn!(epoch = topology.epoch, %error, "not adopting a topology with a bad URL");
            return false;
        }
        if topology.epoch == view.topology.epoch {
            warn!(
                epoch = topology.epoch,
                "two topologies with the same epoch and different members; following the higher digest"
            );
        }
        lock(&self.membership).set_peers(
            topology
                .nodes
                .keys()
                .filter(|n| **n != self.cfg.node_id)
                .cloned(),
        );
        info!(
            node = %self.cfg.node_id,
            from_epoch = view.topology.epoch,
            epoch = topology.epoch,
            phase = ?topology.phase,
            current = ?topology.current,
            next = ?topology.next,
            "topology adopted"
        );
        *view = Arc::new(View::new(topology, &self.cfg));
        true
    }

    /// Keeps `topology` in the node's Redis unless a newer one is there.
    pub async fn keep(&self, topology: &Topology) {
        let json = match serde_json::to_string(topology) {
            Ok(json) => json,
            Err(error) => {
                warn!(%error, "cannot encode the topology");
                return;
            }
        };
        let key = topology_key(&self.cfg.node_id);
        if let Err(error) = self
            .store
            .replace_if_ranked_higher(&key, &rank_text(topology), &json)
            .await
        {
            warn!(%error, epoch = topology.epoch, "cannot keep the topology in Redis");
        }
    }

    /// [`ReplicaIo::adopt`], then [`ReplicaIo::keep`] when adopted.
    pub async fn adopt_and_keep(&self, topology: Topology) -> bool {
        let adopted = self.adopt(topology.clone());
        if adopted {
            self.keep(&topology).await;
        }
        adopted
    }
}

/// The reads and writes this API coordinates, counted by the topology
/// epoch they were placed by. A node answers the offer of a new epoch only
/// once the operations placed by older ones are done
/// ([`InFlight::drained`]): when every node has taken `moving`, no write
/// placed by the old ring alone can still land after the new owners pulled
/// their share, and when every node has taken the final epoch, no read
/// still asks an old owner that is about to drop the key.
#[derive(Default)]
pub struct InFlight {
    counts: std::sync::Mutex<BTreeMap<u64, usize>>,
    changed: tokio::sync::Notify,
}

/// A write in flight, placed by one epoch; leaves the gate when dropped.
pub struct GateEntry<'a> {
    gate: &'a InFlight,
    epoch: u64,
}

impl InFlight {
    pub fn enter(&self, epoch: u64) -> GateEntry<'_> {
        *lock(&self.counts).entry(epoch).or_default() += 1;
        GateEntry { gate: self, epoch }
    }

    fn oldest(&self) -> Option<u64> {
        lock(&self.counts).keys().next().copied()
    }

    /// Waits up to `wait` until no write placed by an epoch before `epoch`
    /// is in flight; whether none is.
    pub async fn drained(&self, epoch: u64, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.changed.notified();
            if self.oldest().is_none_or(|oldest| oldest >= epoch) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.oldest().is_none_or(|oldest| oldest >= epoch);
            }
        }
    }
}

impl Drop for GateEntry<'_> {
    fn drop(&mut self) {
        let mut counts = lock(&self.gate.counts);
        if let Some(count) = counts.get_mut(&self.epoch) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.epoch);
            }
        }
        drop(counts);
        self.gate.changed.notify_waiters();
    }
}

/// How long a node waits, when offered a new epoch, for the operations
/// placed by older epochs to finish before it says it took the new one (the
/// driving node asks again until it has).
pub const DRAIN_WAIT_MS: u64 = 2_000;

/// What a node's cleanup removed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CleanupReport {
    pub node: String,
    pub epoch: u64,
    pub scanned: u64,
    pub removed: u64,
    pub elapsed_ms: u64,
}

impl Node {
    /// The topology this process follows now.
    pub fn view(&self) -> Arc<View> {
        self.replicas.io.view()
    }

    /// Follows the topology kept in the node's Redis, if newer; whether it did.
    pub async fn load_topology(&self) -> Result<bool, StoreError> {
        let key = topology_key(&self.cfg.node_id);
        let Some(json) = self.store().ranked_json(&key).await? else {
            return Ok(false);
        };
        match serde_json::from_str::<Topology>(&json) {
            Ok(topology) => Ok(self.replicas.io.adopt(topology)),
            Err(error) => {
                warn!(%error, "the topology kept in Redis does not decode; ignoring it");
                Ok(false)
            }
        }
    }

    /// Follows the topology kept in the node's Redis: now, then every
    /// [`TOPOLOGY_FOLLOW_MS`] (a worker's way to learn what its API adopted).
    pub fn spawn_topology_follow(self: &Arc<Self>) {
        let node = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(TOPOLOGY_FOLLOW_MS));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                if let Err(error) = node.load_topology().await {
                    warn!(%error, "cannot read the kept topology");
                }
            }
        });
    }

    /// Asks every known node for its topology and follows the newest.
    pub async fn catch_up_topology(&self) {
        let io = &self.replicas.io;
        let me = &self.cfg.node_id;
        let nodes: Vec<String> = self
            .view()
            .topology
            .nodes
            .keys()
            .filter(|n| *n != me)
            .cloned()
            .collect();
        for node in nodes {
            match io.tracked(&node, io.peers.topology(&node)).await {
                Ok(topology) => {
                    io.adopt_and_keep(topology).await;
                }
                Err(error) => info!(%node, %error, "cannot ask for the topology"),
            }
        }
    }

    /// Asks `node` (a caller at a newer epoch) for its topology and
    /// follows it; one such fetch at a time per process.
    pub async fn learn_topology_from(&self, node: &str) {
        let io = &self.replicas.io;
        if io.learning.swap(true, Ordering::AcqRel) {
            return;
        }
        match io.tracked(node, io.peers.topology(node)).await {
            Ok(topology) => {
                io.adopt_and_keep(topology).await;
            }
            Err(error) => info!(%node, %error, "cannot ask for the newer topology"),
        }
        io.learning.store(false, Ordering::Release);
    }

    /// A topology offered by a peer (a push of a change): follows it when
    /// newer, and answers with the one followed now.
    pub async fn offer(&self, topology: Topology) -> Topology {
        self.replicas.io.adopt_and_keep(topology).await;
        self.view().topology.clone()
    }

    /// Whether this node takes part in the topology (owns keys now or next).
    pub fn is_member(&self) -> bool {
        self.view().topology.is_member(&self.cfg.node_id)
    }

    fn at_epoch(&self, epoch: u64) -> Result<Arc<View>, CoordError> {
        let view = self.view();
        if view.topology.epoch == epoch {
            Ok(view)
        } else {
            Err(CoordError::EpochMismatch {
                asked: epoch,
                current: view.topology.epoch,
            })
        }
    }

    /// Pulls, from every peer of the change at `epoch`, the records this
    /// node holds in it and lacks (anti-entropy over the change's holders),
    /// at most `KV_MOVE_BYTES_PER_S`.
    pub async fn rebalance(&self, epoch: u64) -> Result<RestoreReport, CoordError> {
        let view = self.at_epoch(epoch)?;
        let peers = view.topology.peers_of(&self.cfg.node_id);
        if view.topology.state_of(&self.cfg.node_id) == Some(MemberState::Joining) {
            // A joining node starts empty: what it may hold from an earlier
            // membership (an abandoned join, a leave whose cleanup failed)
            // could be older than tombstones collected since. The writes
            // it received in this change are pulled again with the rest.
            let dropped = self.remove_local_where(epoch, |_| true).await?;
            if dropped.removed > 0 {
                warn!(node = %self.cfg.node_id, removed = dropped.removed, "a joining node dropped records from an earlier membership");
            }
        }
        info!(node = %self.cfg.node_id, epoch, ?peers, "pulling this node's share");
        let report = self
            .restore_paced(&peers, self.cfg.move_bytes_per_s, true)
            .await?;
        info!(
            node = %self.cfg.node_id,
            epoch,
            received = report.received,
            stored = report.stored,
            bytes_received = report.bytes_received,
            elapsed_ms = report.elapsed_ms,
            "share pulled"
        );
        Ok(report)
    }

    /// Removes the local records this node does not hold at the stable
    /// `epoch` (every record, when it is no longer a member).
    pub async fn cleanup(&self, epoch: u64) -> Result<CleanupReport, CoordError> {
        let view = self.at_epoch(epoch)?;
        if !view.topology.is_stable() {
            return Err(CoordError::EpochMismatch {
                asked: epoch,
                current: view.topology.epoch,
            });
        }
        let me = self.cfg.node_id.as_str();
        let report = self
            .remove_local_where(epoch, |key| !view.placement.holders(key).contains(&me))
            .await?;
        info!(node = %me, epoch, scanned = report.scanned, removed = report.removed, "records no longer held removed");
        Ok(report)
    }

    /// Removes the local records whose key `gone` names, if unchanged.
    async fn remove_local_where(
        &self,
        epoch: u64,
        gone: impl Fn(&str) -> bool,
    ) -> Result<CleanupReport, StoreError> {
        let started = now_ms();
        let mut report = CleanupReport {
            node: self.cfg.node_id.clone(),
            epoch,
            ..CleanupReport::default()
        };
        let mut cursor = 0u64;
        loop {
            let page = self.store().scan(cursor, CLEANUP_PAGE_LEN).await?;
            report.scanned += page.records.len() as u64;
            let remove: Vec<(String, crate::core::record::Record)> = page
                .records
                .into_iter()
                .filter(|(key, _)| gone(key))
                .collect();
            for chunk in remove.chunks(APPLY_BATCH_LEN_MAX) {
                report.removed += self.store().remove_if_same(&Space::Data, chunk).await?;
            }
            if page.next_cursor == 0 {
                break;
            }
            cursor = page.next_cursor;
        }
        report.elapsed_ms = now_ms().saturating_sub(started);
        Ok(report)
    }
}

/// One node's part in a change, as the driving node saw it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeMove {
    /// Records and bytes it pulled, and how long that took.
    pub records: u64,
    pub bytes: u64,
    /// Ranges of the hash space (hash-tree leaves) it had to pull from its
    /// peers, and those it pulled whole.
    pub ranges: u64,
    pub ranges_pulled: u64,
    pub pull_ms: u64,
    /// Records its cleanup removed.
    pub removed: u64,
    pub error: Option<String>,
}

/// A change driven by this node: what it is, where it stands.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeProgress {
    pub join: Option<String>,
    pub leave: Option<String>,
    /// The epoch the change started at (`moving`).
    pub started_epoch: u64,
    pub epoch: u64,
    pub phase: Phase,
    /// `running`, `done` or `abandoned`.
    pub state: &'static str,
    /// Nodes that have not yet taken `epoch` (while offering it).
    pub waiting_for: Vec<String>,
    /// Share of the hash space each gaining node gains (0..1).
    pub planned: BTreeMap<String, f64>,
    /// Nodes that left in this change, with their URLs.
    pub departed: Vec<(String, String)>,
    pub moves: BTreeMap<String, NodeMove>,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    pub error: Option<String>,
}

/// The answer to an admin request that started a change.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeStarted {
    pub epoch: u64,
    pub topology: Topology,
    pub planned: BTreeMap<String, f64>,
}

impl Coordinator {
    /// The view an operation is placed by, and its entry in [`InFlight`]
    /// (held until the operation is done). Entered before the epoch is
    /// checked again: a new epoch adopted in between is seen here, or its
    /// drain sees this operation.
    pub(super) fn placed(&self) -> (Arc<View>, GateEntry<'_>) {
        loop {
            let view = self.view();
            let entry = self.in_flight.enter(view.topology.epoch);
            if self.view().topology.epoch == view.topology.epoch {
                return (view, entry);
            }
        }
    }

    /// A topology offered by a peer: followed when newer; answers with the
    /// one followed now and whether the operations this node placed by
    /// older epochs are done (see [`InFlight`]).
    pub async fn offer_and_drain(&self, topology: Topology) -> (Topology, bool) {
        let now = self.offer(topology).await;
        let drained = self
            .in_flight
            .drained(now.epoch, Duration::from_millis(DRAIN_WAIT_MS))
            .await;
        (now, drained)
    }

    /// The change this node drives or drove last, if any.
    pub fn change_progress(&self) -> Option<ChangeProgress> {
        lock(&self.change).clone()
    }

    /// Starts a join (`join` = id and URL) or a leave, driven by this node
    /// in the background; answers with the new epoch at once.
    pub async fn request_change(
        self: &Arc<Self>,
        join: Option<(String, String)>,
        leave: Option<String>,
    ) -> Result<ChangeStarted, CoordError> {
        if self.is_driving() {
            let t = self.view().topology.clone();
            return Err(CoordError::Membership(ChangeError::InProgress {
                epoch: t.epoch,
                phase: t.phase,
            }));
        }
        let current = self.view().topology.clone();
        let next = current
            .change(
                join.as_ref().map(|(id, url)| (id.as_str(), url.as_str())),
                leave.as_deref(),
            )
            .map_err(CoordError::Membership)?;
        if !self.replicas.io.adopt_and_keep(next.clone()).await {
            return Err(CoordError::EpochMismatch {
                asked: next.epoch,
                current: self.view().topology.epoch,
            });
        }
        Ok(self.start_driving(next, join.map(|(id, _)| id), leave))
    }

    /// Records a change as running from `topology` on and drives it in the
    /// background.
    fn start_driving(
        self: &Arc<Self>,
        topology: Topology,
        join: Option<String>,
        leave: Option<String>,
    ) -> ChangeStarted {
        let planned = gained_shares(&topology, self.cfg.vnodes, self.cfg.replication_factor);
        *lock(&self.change) = Some(ChangeProgress {
            join,
            leave,
            started_epoch: topology.epoch,
            epoch: topology.epoch,
            phase: topology.phase,
            state: "running",
            waiting_for: Vec::new(),
            planned: planned.clone(),
            departed: Vec::new(),
            moves: BTreeMap::new(),
            started_ms: now_ms(),
            finished_ms: None,
            error: None,
        });
        let this = Arc::clone(self);
        tokio::spawn(async move { this.drive_change().await });
        ChangeStarted {
            epoch: topology.epoch,
            topology,
            planned,
        }
    }

    /// Drives on a change in progress that no node drives (its driving
    /// node restarted or died): the steps are deterministic, so driving
    /// from here finishes the same change. Refused when the topology is
    /// stable or this node drives a change already.
    pub async fn resume_change(self: &Arc<Self>) -> Result<ChangeStarted, CoordError> {
        let t = self.view().topology.clone();
        let running = self.is_driving();
        if running || t.is_stable() {
            return Err(CoordError::Membership(if running {
                ChangeError::InProgress {
                    epoch: t.epoch,
                    phase: t.phase,
                }
            } else {
                ChangeError::NothingToResume
            }));
        }
        let next = t.next.clone().unwrap_or_default();
        let join = next.iter().find(|n| !t.current.contains(*n)).cloned();
        let leave = t.current.iter().find(|n| !next.contains(*n)).cloned();
        info!(epoch = t.epoch, phase = ?t.phase, "resuming the membership change");
        Ok(self.start_driving(t, join, leave))
    }

    /// True while this node drives a change (peers read it in `/health`).
    pub fn is_driving(&self) -> bool {
        lock(&self.change)
            .as_ref()
            .is_some_and(|c| c.state == "running")
    }

    /// Resumes the change in progress when it has stayed at one epoch for
    /// `KV_CHANGE_RESUME_AFTER_S`, no node says it drives it, and this node
    /// is the one to resume it ([`Topology::resumer`]). Called every probe
    /// round; a change whose driving node died or restarted then finishes
    /// without an operator (`POST /cluster/change/resume` does it at once).
    pub async fn resume_if_stalled(self: &Arc<Self>) {
        let Some(after) = self.cfg.change_resume_after else {
            return;
        };
        // Every probe round: the view, not a copy of its topology.
        let view = self.view();
        let topology = &view.topology;
        let now = now_ms();
        let since = {
            let mut stall = lock(&self.stall);
            if topology.is_stable() || self.is_driving() || stall.0 != topology.epoch {
                *stall = (topology.epoch, now);
                return;
            }
            stall.1
        };
        if now.saturating_sub(since) < after.as_millis() as u64 {
            return;
        }
        let me = self.cfg.node_id.as_str();
        let io = &self.replicas.io;
        if topology.resumer(|id| io.peer_health(id) != Health::Down) != Some(me) {
            return;
        }
        for node in topology.nodes.keys().filter(|n| n.as_str() != me) {
            let driving = io
                .peers
                .health(node)
                .await
                .is_ok_and(|h| h["driving"] == true);
            if driving {
                // Slow, not stalled (a long pull): look again a period later.
                *lock(&self.stall) = (topology.epoch, now_ms());
                return;
            }
        }
        warn!(
            epoch = topology.epoch,
            phase = ?topology.phase,
            stalled_s = now.saturating_sub(since) / 1000,
            "the membership change made no progress and no node drives it: resuming it"
        );
        *lock(&self.stall) = (topology.epoch, now_ms());
        if let Err(error) = self.resume_change().await {
            info!(%error, "the stalled change was not resumed");
        }
    }

    /// A leaving node the failure detector marks down: a change neither
    /// waits for it to take an epoch nor needs to pull from it (the other
    /// holders have what it held).
    fn leaving_and_down(&self, topology: &Topology, node: &str) -> bool {
        topology.state_of(node) == Some(MemberState::Leaving)
            && self.replicas.io.peer_health(node) == Health::Down
    }

    fn progress(&self, update: impl FnOnce(&mut ChangeProgress)) {
        if let Some(change) = lock(&self.change).as_mut() {
            update(change);
        }
    }

    /// Drives the change in the topology this node follows to its end.
    async fn drive_change(self: Arc<Self>) {
        loop {
            let topology = self.view().topology.clone();
            self.progress(|c| {
                c.epoch = topology.epoch;
                c.phase = topology.phase;
            });
            let deadline = now_ms() + CHANGE_STEP_TIMEOUT_MS;
            let abandonable = topology.phase == Phase::Moving;
            // Every node (a leaving or left one too) takes the epoch first.
            let taken = self.offer_everywhere(&topology, abandonable.then_some(deadline));
            if !taken.await {
                self.abandon(&topology, "a node did not take the new epoch in time")
                    .await;
                return;
            }
            match topology.phase {
                Phase::Moving => {
                    // This node's own writes placed by the old ring, too.
                    let wait = Duration::from_millis(deadline.saturating_sub(now_ms()));
                    if !self.in_flight.drained(topology.epoch, wait).await {
                        self.abandon(
                            &topology,
                            "operations placed by the old ring did not finish",
                        )
                        .await;
                        return;
                    }
                    if let Err(error) = self.pull_shares(&topology, deadline).await {
                        self.abandon(&topology, &error).await;
                        return;
                    }
                }
                Phase::Switched => {
                    // The nodes leaving now: told the end and cleaned up by URL.
                    let departed = topology.nodes_in(MemberState::Leaving);
                    self.progress(|c| c.departed = departed);
                }
                Phase::Stable => {
                    // This node's own reads placed by the old ring, too
                    // (they end within their timeouts).
                    while !self
                        .in_flight
                        .drained(topology.epoch, Duration::from_millis(DRAIN_WAIT_MS))
                        .await
                    {
                        info!(
                            epoch = topology.epoch,
                            "waiting for operations placed by the old ring"
                        );
                    }
                    self.clean_everywhere(&topology).await;
                    self.progress(|c| {
                        c.state = "done";
                        c.finished_ms = Some(now_ms());
                    });
                    info!(epoch = topology.epoch, "membership change done");
                    return;
                }
            }
            let Some(next) = topology.advance() else {
                return;
            };
            if !self.replicas.io.adopt_and_keep(next.clone()).await {
                let error = format!(
                    "epoch {} was superseded by another change (now {})",
                    next.epoch,
                    self.view().topology.epoch
                );
                warn!(%error, "membership change stopped");
                self.progress(|c| {
                    c.state = "abandoned";
                    c.error = Some(error);
                    c.finished_ms = Some(now_ms());
                });
                return;
            }
        }
    }

    /// Offers `topology` to every node but this one until each has taken
    /// it (or a newer one), retrying; false when `deadline_ms` passed first.
    /// A leaving node that is down is not waited for (so a dead node can be
    /// removed).
    async fn offer_everywhere(&self, topology: &Topology, deadline_ms: Option<u64>) -> bool {
        let me = self.cfg.node_id.clone();
        let mut waiting: Vec<String> = topology
            .nodes
            .keys()
            .filter(|n| **n != me)
            .cloned()
            .collect();
        let io = &self.replicas.io;
        loop {
            let mut still = Vec::new();
            for node in waiting {
                match io
                    .tracked(&node, io.peers.offer_topology(&node, topology))
                    .await
                {
                    Ok(theirs) if theirs.epoch >= topology.epoch => {}
                    Ok(theirs) => {
                        warn!(%node, epoch = theirs.epoch, "node kept an older topology");
                        still.push(node);
                    }
                    // A leaving node that is down is not waited for: it is
                    // going away, and any write it coordinated from an older
                    // epoch was refused by the nodes that took this one.
                    Err(_) if self.leaving_and_down(topology, &node) => {
                        warn!(%node, epoch = topology.epoch, "leaving node is down; not waiting for it");
                    }
                    Err(error) => {
                        info!(%node, %error, epoch = topology.epoch, "node did not take the epoch yet");
                        still.push(node);
                    }
                }
            }
            self.progress(|c| c.waiting_for = still.clone());
            if still.is_empty() {
                return true;
            }
            if deadline_ms.is_some_and(|d| now_ms() >= d) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(CHANGE_RETRY_MS)).await;
            waiting = still;
        }
    }

    /// Asks every node of the next owner set to pull its share, in turn.
    /// A pull that could not reach a leaving node that is down still counts
    /// (the other holders had what it held).
    async fn pull_shares(&self, topology: &Topology, deadline_ms: u64) -> Result<(), String> {
        let io = &self.replicas.io;
        for node in topology.gaining() {
            loop {
                let started = now_ms();
                let outcome: Result<RestoreReport, String> = if node == self.cfg.node_id {
                    self.rebalance(topology.epoch)
                        .await
                        .map_err(|e| e.to_string())
                } else {
                    let timeout = Duration::from_millis(REBALANCE_CALL_TIMEOUT_MS);
                    io.peers
                        .rebalance(&node, topology.epoch, timeout)
                        .await
                        .map_err(|e| e.to_string())
                };
                let missing: Vec<String> = match &outcome {
                    Ok(report) => report
                        .peers
                        .iter()
                        .filter(|p| p.error.is_some())
                        .filter(|p| !self.leaving_and_down(topology, &p.node))
                        .map(|p| p.node.clone())
                        .collect(),
                    Err(_) => Vec::new(),
                };
                let error = match &outcome {
                    Err(e) => Some(e.clone()),
                    Ok(_) if !missing.is_empty() => {
                        Some(format!("could not pull from {}", missing.join(", ")))
                    }
                    Ok(_) => None,
                };
                self.progress(|c| {
                    let entry = c.moves.entry(node.clone()).or_default();
                    if let Ok(report) = &outcome {
                        entry.records += report.stored;
                        entry.bytes += report.bytes_received;
                        entry.ranges += report.leaves_wanted;
                        entry.ranges_pulled += report.leaves_pulled;
                    }
                    entry.pull_ms += now_ms().saturating_sub(started);
                    entry.error = error.clone();
                });
                match error {
                    None => break,
                    Some(e) if now_ms() >= deadline_ms => {
                        return Err(format!("{node} could not pull its share: {e}"));
                    }
                    Some(e) => {
                        warn!(%node, error = %e, "pull of a share failed; retrying");
                        tokio::time::sleep(Duration::from_millis(CHANGE_RETRY_MS * 4)).await;
                    }
                }
            }
        }
        Ok(())
    }

    /// Asks every node (those that left too, best effort) to drop what it
    /// no longer holds at the final stable `topology`.
    async fn clean_everywhere(&self, topology: &Topology) {
        let io = &self.replicas.io;
        let timeout = Duration::from_millis(CLEANUP_CALL_TIMEOUT_MS);
        for node in topology.nodes.keys() {
            let outcome: Result<CleanupReport, String> = if *node == self.cfg.node_id {
                self.cleanup(topology.epoch)
                    .await
                    .map_err(|e| e.to_string())
            } else {
                io.peers
                    .cleanup(node, topology.epoch, timeout)
                    .await
                    .map_err(|e| e.to_string())
            };
            self.note_cleanup(node, outcome);
        }
        self.clean_departed(topology).await;
    }

    /// Offers the final `topology` to the nodes that left in this change
    /// (by URL: they are no longer in it), then asks them to clean up.
    async fn clean_departed(&self, topology: &Topology) {
        let io = &self.replicas.io;
        let timeout = Duration::from_millis(CLEANUP_CALL_TIMEOUT_MS);
        let body = serde_json::json!({ "epoch": topology.epoch });
        let departed = lock(&self.change)
            .as_ref()
            .map(|c| c.departed.clone())
            .unwrap_or_default();
        for (node, url) in departed {
            let offered: Result<Topology, _> = io
                .peers
                .post_departed(
                    &node,
                    &url,
                    "topology",
                    topology,
                    self.cfg.peer_request_timeout,
                )
                .await;
            let outcome = match offered {
                Ok(_) => io
                    .peers
                    .post_departed(&node, &url, "cleanup", &body, timeout)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            self.note_cleanup(&node, outcome);
        }
    }

    fn note_cleanup(&self, node: &str, outcome: Result<CleanupReport, String>) {
        if let Err(error) = &outcome {
            warn!(%node, %error, "cleanup failed; the node keeps records it no longer holds");
        }
        self.progress(|c| {
            let entry = c.moves.entry(node.to_owned()).or_default();
            match outcome {
                Ok(report) => entry.removed += report.removed,
                Err(e) => entry.error = Some(format!("cleanup: {e}")),
            }
        });
    }

    /// Abandons a change still `moving`: a new stable epoch with the old
    /// owners (writes went to them all along); a joining node is told and
    /// drops its partial copy (and would again before a later join).
    async fn abandon(&self, topology: &Topology, error: &str) {
        warn!(epoch = topology.epoch, %error, "membership change abandoned");
        let back = Topology {
            epoch: topology.epoch + 1,
            nodes: topology
                .nodes
                .iter()
                .filter(|(id, _)| topology.current.contains(*id))
                .map(|(id, url)| (id.clone(), url.clone()))
                .collect(),
            current: topology.current.clone(),
            next: None,
            phase: Phase::Stable,
        };
        if self.replicas.io.adopt_and_keep(back.clone()).await {
            self.offer_everywhere(&back, Some(now_ms() + CHANGE_STEP_TIMEOUT_MS))
                .await;
            // The nodes that were joining drop what they pulled.
            let joining = topology.nodes_in(MemberState::Joining);
            self.progress(|c| c.departed = joining);
            self.clean_departed(&back).await;
        }
        self.progress(|c| {
            c.state = "abandoned";
            c.error = Some(error.to_owned());
            c.epoch = back.epoch;
            c.phase = back.phase;
            c.finished_ms = Some(now_ms());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_new_epoch_waits_for_operations_placed_by_older_ones() {
        let gate = Arc::new(InFlight::default());
        let old = gate.enter(1);
        let current = gate.enter(2);
        // Short: only the negative case waits it out.
        let wait = Duration::from_millis(50);
        assert!(
            !gate.drained(2, wait).await,
            "an epoch-1 write is in flight"
        );
        assert!(gate.drained(1, wait).await, "nothing older than epoch 1");
        // Released while a drain waits: the drain sees it at once.
        let waiter = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move { gate.drained(2, Duration::from_secs(60)).await })
        };
        tokio::task::yield_now().await;
        drop(old);
        assert!(waiter.await.unwrap());
        drop(current);
        assert!(gate.drained(3, wait).await);
    }
}
