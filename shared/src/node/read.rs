//! A coordinated read: run the [`ReadPlan`], return the newest record, and
//! repair the replicas that answered with older data.

use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tracing::{debug, warn};

use super::stats::Stats;
use super::{CoordError, Coordinator, NodeFailure, Unavailable};
use crate::core::message::KeyedRecord;
use crate::core::plan::{ReadPlan, read_repairs};
use crate::core::quorum::Consistency;
use crate::core::record::Record;

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
    /// When the read decided (ms, this node's reference clock): a value
    /// whose `expires_at` is not after it reads as missing.
    pub read_at_ms: u64,
}

impl Coordinator {
    /// Reads a key: asks R replicas (more only to replace failures), returns
    /// the newest record among those that answered, and repairs the ones
    /// that answered with older data.
    pub async fn read(
        self: &Arc<Self>,
        key: String,
        consistency: Consistency,
    ) -> Result<ReadReport, CoordError> {
        Stats::add(&self.stats.reads, 1);
        // Counted until done, like a write: a change's cleanup waits for
        // reads placed by the old ring (see `members::InFlight`).
        let (view, _in_flight) = self.placed();
        let replicas: Vec<String> = view
            .placement
            .read_replicas(&key)
            .into_iter()
            .map(str::to_owned)
            .collect();
        drop(view);
        let required = consistency.required(replicas.len());
        let down = self.replicas.io.believed_down(&replicas);
        let mut plan = ReadPlan::new(&replicas, &self.cfg.node_id, &down, required);
        // The calls run inside this read's task, as a write's do (no task
        // per call): each is mostly a wait on the coalescer, which makes the
        // actual call. A task per call cost a spawn, a copy of the call's
        // future into it and a wake-up across threads on every read.
        let start = |node: String| {
            let keys = vec![key.clone()];
            async move {
                let outcome = self.replicas.read(&node, keys).await;
                (node, outcome)
            }
        };
        let mut calls: FuturesUnordered<_> = plan.first_calls().into_iter().map(start).collect();
        let mut answers: Vec<(String, Option<Record>)> = Vec::with_capacity(replicas.len());
        while let Some((node, outcome)) = calls.next().await {
            match outcome {
                Ok(mut records) => {
                    plan.answered(&node);
                    answers.push((node, records.pop().flatten()));
                }
                Err(error) => {
                    debug!(%key, %error, "replica read failed");
                    if let Some(next) = plan.failed(&node, error.kind) {
                        calls.push(start(next));
                    }
                }
            }
        }
        if !plan.reached() {
            Stats::add(&self.stats.unavailable, 1);
            return Err(CoordError::Unavailable(Box::new(Unavailable {
                operation: "read",
                consistency,
                required,
                replicas,
                answered: plan.answered_nodes(),
                failed: plan.failures().iter().map(NodeFailure::from).collect(),
                stored_on: Vec::new(),
                queued_for: Vec::new(),
                hinted_for: Vec::new(),
            })));
        }
        // A version beyond the drift bound of this node's clock (a node with
        // a fast clock stored it) is one the other replicas refuse: it is
        // neither returned nor spread by repair; the newest acceptable one is.
        let clock = &self.replicas.io.clock;
        let reference_ms = self.replicas.io.reference_now_ms();
        for (node, record) in &mut answers {
            if record
                .as_ref()
                .is_some_and(|r| clock.check_at(r.version.ts, reference_ms).is_err())
            {
                Stats::add(&self.stats.refused_versions, 1);
                warn!(%key, %node, "ignoring a version from beyond the clock drift bound");
                *record = None;
            }
        }
        let (newest, stale) = read_repairs(&answers);
        if let Some(newest) = &newest {
            // Versions read are observed, so a later write through this node
            // is stamped above them.
            if clock.observe(newest.version.ts).is_err() {
                Stats::add(&self.stats.refused_versions, 1);
            }
            for node in &stale {
                self.spawn_repair(node.clone(), key.clone(), newest.clone());
            }
        }
        Ok(ReadReport {
            key,
            record: newest,
            consistency,
            replicas,
            answered: plan.answered_nodes(),
            repaired: stale,
            read_at_ms: reference_ms,
        })
    }

    /// Sends `record` to `node` in the background, bounded by a semaphore:
    /// when too many repairs are in flight the repair is dropped and counted
    /// (a later read or anti-entropy repairs it), never queued without bound.
    pub(super) fn spawn_repair(self: &Arc<Self>, node: String, key: String, record: Record) {
        let Ok(permit) = Arc::clone(&self.repair_permits).try_acquire_owned() else {
            Stats::add(&self.stats.read_repairs_dropped, 1);
            return;
        };
        Stats::add(&self.stats.read_repairs, 1);
        let io = Arc::clone(&self.replicas.io);
        tokio::spawn(async move {
            let _permit = permit;
            match io.apply_on(&node, vec![KeyedRecord { key, record }]).await {
                Ok(_) => debug!(%node, "read repair delivered"),
                Err(error) => debug!(%node, %error, "read repair failed"),
            }
        });
    }
}
