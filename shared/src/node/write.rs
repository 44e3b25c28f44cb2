//! A coordinated write: stamp, run the [`WritePlan`], keep hints, queue the
//! replicas not contacted, and stamp again when a replica held a newer version.

use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde::Serialize;
use serde_json::value::RawValue;
use tracing::{debug, warn};

use super::stats::Stats;
use super::{CoordError, Coordinator, NodeFailure, Shadowed, Unavailable};
use crate::clock::now_ms;
use crate::core::jobs::PendingReplication;
use crate::core::message::{ApplyStatus, KeyedRecord};
use crate::core::plan::{Answer, Call, FailureKind, WriteInput, WriteOutcome, WritePlan};
use crate::core::quorum::Consistency;
use crate::core::record::{Record, Version};
use crate::storage::Space;

pub use crate::core::plan::HintPlacement;

/// Attempts of a client write whose version a replica already exceeds
/// (the coordinator's clock is behind); see [`Coordinator::write`].
pub const WRITE_ATTEMPTS_MAX: u32 = 3;

/// What a client write achieved.
#[derive(Debug, Clone, Serialize)]
pub struct WriteReport {
    pub key: String,
    pub version: Version,
    pub deleted: bool,
    /// When the value expires (ms since the Unix epoch), for a write with a TTL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
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

impl Coordinator {
    /// Writes (or, with `value = None`, deletes) a key at the given
    /// consistency; a value with `ttl_s` expires that many seconds after
    /// the version's wall time (see `core::record`).
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
        ttl_s: Option<u64>,
        consistency: Consistency,
    ) -> Result<WriteReport, CoordError> {
        Stats::add(&self.stats.writes, 1);
        let clock = self.replicas.io.clock_view();
        let ahead_ms = self.replicas.io.clock.ahead_ms();
        if clock.fenced || ahead_ms > clock.drift_max_ms {
            // Fenced by the peers' clocks, or this clock adopted a reading
            // beyond the bound: any stamp now would be one peers refuse.
            Stats::add(&self.stats.unavailable, 1);
            let offset_ms = if clock.fenced {
                -clock.median_offset_ms
            } else {
                i64::try_from(ahead_ms).unwrap_or(i64::MAX)
            };
            return Err(CoordError::ClockSkew {
                offset_ms,
                drift_max_ms: clock.drift_max_ms,
            });
        }
        let mut record = Record::stamped(self.next_version(), value, ttl_s);
        let mut attempt = 1;
        loop {
            let (report, shadowed_by) = self
                .write_once(key.clone(), record.clone(), consistency)
                .await?;
            if let Some(holder) = shadowed_by {
                if attempt >= WRITE_ATTEMPTS_MAX {
                    // Still below a newer version after every re-stamp:
                    // acknowledging would report a write that reads will
                    // not return. Say so, and where it was stored anyway.
                    Stats::add(&self.stats.unavailable, 1);
                    warn!(%key, version = %record.version, %holder, "write still shadowed after every re-stamp");
                    return Err(CoordError::Shadowed(Box::new(Shadowed {
                        version: record.version.to_string(),
                        holder,
                        stored_on: report.acks,
                    })));
                }
                // A replica already holds a newer version than the one this
                // node stamped (its clock is behind another's). Acknowledging
                // would let the older-in-real-time write win, so learn the
                // newer version from that replica and write again above it.
                attempt += 1;
                Stats::add(&self.stats.writes_restamped, 1);
                self.learn_version(&holder, &key).await;
                record = Record::stamped(self.next_version(), record.value, ttl_s);
                continue;
            }
            if let Some(mail) = self.write_mail(&report.key, &record) {
                self.notify(mail).await;
            }
            return Ok(report);
        }
    }

    /// Stamps a new version for a write coordinated here.
    fn next_version(&self) -> Version {
        Version::new(self.replicas.io.clock.tick(), self.cfg.node_id.clone())
    }

    /// Reads `key` on `holder` and observes its version, so the next stamp
    /// is above it.
    async fn learn_version(&self, holder: &str, key: &str) {
        match self.replicas.io.read_on(holder, vec![key.to_owned()]).await {
            Ok(records) => {
                let refused = self
                    .replicas
                    .io
                    .clock
                    .observe_all(records.iter().flatten().map(|r| r.version.ts));
                if refused.contains(&false) {
                    warn!(%key, "not adopting a version from the future");
                }
            }
            Err(error) => {
                debug!(%key, %holder, %error, "cannot read the newer version; stamping again anyway");
            }
        }
    }

    /// One attempt of [`Coordinator::write`] with a given record. Also names
    /// a replica that already held a newer version (the record is shadowed).
    async fn write_once(
        self: &Arc<Self>,
        key: String,
        record: Record,
        consistency: Consistency,
    ) -> Result<(WriteReport, Option<String>), CoordError> {
        let created_ms = now_ms();
        // The replicas (during a membership change, both owner sets, with
        // W required of each; see `core::topology`), then the fallbacks of
        // a sloppy quorum in ring order.
        // Counted until done by the epoch that places it, so a change waits
        // for it (see `members::InFlight`).
        let (view, _in_flight) = self.placed();
        let set = view.placement.write_set(&key, consistency);
        drop(view);
        let (replicas, fallbacks, required) = (set.replicas, set.fallbacks, set.required);
        let io = &self.replicas.io;
        let down = io.believed_down(&replicas);
        let down_fallbacks = io.believed_down(&fallbacks);
        let fallbacks = fallbacks
            .into_iter()
            .filter(|n| !down_fallbacks.contains(n))
            .collect();
        let mut plan = WritePlan::new(WriteInput {
            required,
            replicas,
            fallbacks,
            me: self.cfg.node_id.clone(),
            down,
            background_sync: self.cfg.background_sync,
        });
        let batch = vec![KeyedRecord {
            key: key.clone(),
            record: record.clone(),
        }];
        let early = plan.queue_early().to_vec();
        let early_defer = (!early.is_empty()).then(|| {
            let (this, early, batch) = (Arc::clone(self), early.clone(), batch.clone());
            tokio::spawn(async move { this.defer(&early, &batch, created_ms).await })
        });
        // The calls run inside this write's task (no task per call): each is
        // mostly a wait on the coalescer, which makes the actual call.
        let start = |call: Call| {
            let batch = batch.clone();
            async move {
                let outcome = match &call.hint_for {
                    None => self.replicas.apply(&call.node, batch).await,
                    Some(owner) => {
                        self.replicas
                            .io
                            .apply_hint_on(&call.node, owner, batch)
                            .await
                    }
                };
                (call, outcome)
            }
        };
        let mut calls: FuturesUnordered<_> = plan.first_calls().into_iter().map(start).collect();
        while let Some((call, outcome)) = calls.next().await {
            let answer = match outcome {
                Ok(statuses) => match statuses.first() {
                    Some(ApplyStatus::Stored) => Answer::Stored,
                    // A fresh version is never equal to a stored one: the
                    // replica holds a newer one.
                    Some(ApplyStatus::Unchanged) => Answer::Newer,
                    Some(ApplyStatus::Refused) => Answer::Failed(FailureKind::VersionRefused),
                    // The replica places keys by another topology epoch.
                    Some(ApplyStatus::NotHeld) => Answer::Failed(FailureKind::StaleEpoch),
                    None => Answer::Failed(FailureKind::BadAnswer),
                },
                Err(error) => {
                    debug!(%key, %error, "replica call failed");
                    Answer::Failed(error.kind)
                }
            };
            if let Some(next) = plan.answer(&call, answer) {
                calls.push(start(next));
            }
        }
        let mut outcome = plan.finish();
        if let Some(early_defer) = early_defer
            && let Err(join_error) = early_defer.await
        {
            // Not known to be queued: queue again (a duplicate is harmless).
            warn!(%join_error, "replication enqueue task failed; enqueueing again");
            self.defer(&early, &batch, created_ms).await;
        }
        let hints = if outcome.refused_as_future() {
            // Replicas refused this node's stamp as too far ahead of their
            // clocks: take the local copy back, keep no hint, queue nothing
            // more (what is queued already is refused in turn and
            // dead-lettered), and count the refusals against this clock.
            self.retract(&key, &record, &mut outcome).await;
            Vec::new()
        } else {
            let hints = self.keep_planned_hints(&outcome, &batch).await;
            self.defer(&outcome.queue_late, &batch, created_ms).await;
            hints
        };
        if outcome.sloppy {
            Stats::add(&self.stats.sloppy_writes, 1);
        }
        let failed: Vec<NodeFailure> = outcome.failed.iter().map(NodeFailure::from).collect();
        if !outcome.reached {
            Stats::add(&self.stats.unavailable, 1);
            return Err(CoordError::Unavailable(Box::new(Unavailable {
                operation: "write",
                consistency,
                required: outcome.required,
                replicas: outcome.replicas,
                stored_on: outcome.acks.clone(),
                answered: outcome.acks,
                failed,
                queued_for: early,
                hinted_for: hints,
            })));
        }
        let report = WriteReport {
            key,
            deleted: record.is_tombstone(),
            expires_at: record.expires_at,
            version: record.version,
            consistency,
            required: outcome.required,
            replicas: outcome.replicas,
            acks: outcome.acks,
            failed,
            pending: outcome.pending,
            hints,
            sloppy: outcome.sloppy,
        };
        Ok((report, outcome.shadowed_by))
    }

    /// Takes back this node's copy of a write its replicas refused as from
    /// the future, and records their refusals as evidence against this
    /// node's clock (see `ReplicaIo::note_clock_refusal`).
    async fn retract(&self, key: &str, record: &Record, outcome: &mut WriteOutcome) {
        let io = &self.replicas.io;
        for failure in &outcome.failed {
            if failure.kind == FailureKind::VersionRefused {
                io.note_clock_refusal(&failure.node);
            }
        }
        Stats::add(&self.stats.writes_retracted, 1);
        warn!(%key, version = %record.version, "replicas refused this node's stamp as too far ahead: write taken back");
        let me = &self.cfg.node_id;
        if outcome.acks.contains(me) {
            let pair = [(key.to_owned(), record.clone())];
            match io.store.remove_if_same(&Space::Data, &pair).await {
                Ok(_) => outcome.acks.retain(|a| a != me),
                Err(error) => warn!(%key, %error, "cannot take back a refused write"),
            }
        }
    }

    /// Keeps the hints the plan gave this node; returns every hint placed
    /// (fallbacks' and those kept here).
    async fn keep_planned_hints(
        &self,
        outcome: &WriteOutcome,
        batch: &[KeyedRecord],
    ) -> Vec<HintPlacement> {
        let mut hints = outcome.hints.clone();
        for owner in &outcome.local_hints {
            if self.replicas.io.keep_hint(owner, batch.to_vec()).await {
                hints.push(HintPlacement {
                    owner: owner.clone(),
                    holder: self.cfg.node_id.clone(),
                });
            }
        }
        hints
    }

    /// Queues the records for every target (background sync on), through the
    /// group-commit batcher; waits until they are on the queue. A failure to
    /// enqueue falls back to a hint on this node.
    async fn defer(&self, targets: &[String], records: &[KeyedRecord], created_ms: u64) {
        let Some(batcher) = &self.batcher else {
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
                Stats::add(&self.stats.jobs_enqueued, 1);
            } else {
                Stats::add(&self.stats.jobs_enqueue_failed, 1);
                warn!(%target, "cannot enqueue replication; keeping a hint instead");
                self.replicas.io.keep_hint(target, records.to_vec()).await;
            }
        }
    }
}
