//! Group commit of replication jobs, through the same [`Coalescer`] that
//! groups calls to a replica.
//!
//! Writes hand over their pending replications and wait until a job holding
//! them is on the queue. One batch call is in flight at a time; the
//! replications that arrive meanwhile leave together in the next one (no
//! timer, so a lone write is not delayed), grouped into one job per target
//! ([`group_into_jobs`]). Under load, one queue push carries many writes.

use std::convert::Infallible;
use std::time::Duration;

use tracing::warn;

use super::JobQueues;
use crate::coalesce::{BatchFuture, BatchLimits, Coalescer};
use crate::core::jobs::{
    PendingReplication, REPLICATE_BATCH_BYTES_MAX, REPLICATE_BATCH_RECORDS_MAX, group_into_jobs,
};

/// How long a write waits for its replication job to be queued.
pub const REPLICATION_ENQUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// One batch: at most one job's worth of records and bytes, whatever their
/// targets (the grouping then splits it per target). Replications waiting
/// for a batch are bounded by the coalescer (`coalesce::WAITING_MAX`);
/// past it a write's replication is refused at once (and becomes a hint).
const LIMITS: BatchLimits = BatchLimits {
    items_max: REPLICATE_BATCH_RECORDS_MAX,
    bytes_max: REPLICATE_BATCH_BYTES_MAX,
};

/// Group commit for replication jobs (see the module docs).
pub struct ReplicationBatcher {
    coalescer: Coalescer<PendingReplication, bool, Infallible>,
}

impl ReplicationBatcher {
    /// Starts the batching task. Must be called inside a tokio runtime.
    pub fn start(queues: JobQueues) -> Self {
        let coalescer = Coalescer::start(
            LIMITS,
            |item: &PendingReplication| item.record.approx_bytes(),
            move |items| push_grouped(queues.clone(), items),
        );
        ReplicationBatcher { coalescer }
    }

    /// Queues one replication; true once a job holding it is on the queue
    /// (false: refused, not pushed, or not answered within
    /// [`REPLICATION_ENQUEUE_TIMEOUT`]).
    pub async fn submit(&self, item: PendingReplication) -> bool {
        matches!(
            tokio::time::timeout(REPLICATION_ENQUEUE_TIMEOUT, self.coalescer.call(vec![item])).await,
            Ok(Ok(pushed)) if pushed.first() == Some(&true)
        )
    }
}

/// The batch call: groups the items into one job per target, pushes each,
/// and answers every item with whether its job was pushed.
fn push_grouped(
    queues: JobQueues,
    items: Vec<PendingReplication>,
) -> BatchFuture<bool, Infallible> {
    Box::pin(async move {
        let (jobs, placement) = group_into_jobs(&items);
        let mut pushed = Vec::with_capacity(jobs.len());
        for job in jobs {
            let target = job.target.clone();
            let ok = match queues.push_replicate(job, None).await {
                Ok(()) => true,
                Err(error) => {
                    warn!(%target, %error, "cannot enqueue a replication job");
                    false
                }
            };
            pushed.push(ok);
        }
        Ok(placement
            .into_iter()
            .map(|job| pushed.get(job).copied().unwrap_or(false))
            .collect())
    })
}
