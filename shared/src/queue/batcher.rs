//! Group commit of replication jobs.

use std::time::Duration;

use tracing::warn;

use super::JobQueues;
use crate::core::jobs::{PendingReplication, REPLICATE_BATCH_RECORDS_MAX, group_into_jobs};

/// Replications waiting for the batcher before new writes fall back to hints.
pub const REPLICATION_QUEUE_LEN_MAX: usize = 10_000;
/// How long a write waits for its replication job to be queued.
pub const REPLICATION_ENQUEUE_TIMEOUT: Duration = Duration::from_secs(5);

type Waiter = (PendingReplication, tokio::sync::oneshot::Sender<bool>);

/// Group commit for replication jobs: writes hand over their pending
/// replications and wait until a job holding them is on the queue. The
/// batcher takes one item, drains whatever else is already waiting (no timer,
/// so a lone write is not delayed), groups it into one job per target and
/// pushes those. Under load, one queue push carries many writes.
#[derive(Clone)]
pub struct ReplicationBatcher {
    tx: tokio::sync::mpsc::Sender<Waiter>,
}

impl ReplicationBatcher {
    pub fn start(queues: JobQueues) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Waiter>(REPLICATION_QUEUE_LEN_MAX);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut waiting = vec![first];
                while waiting.len() < REPLICATE_BATCH_RECORDS_MAX {
                    match rx.try_recv() {
                        Ok(item) => waiting.push(item),
                        Err(_) => break,
                    }
                }
                let (items, replies): (Vec<PendingReplication>, Vec<_>) =
                    waiting.into_iter().unzip();
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
                for (reply, job) in replies.into_iter().zip(placement) {
                    let _ = reply.send(pushed[job]);
                }
            }
        });
        ReplicationBatcher { tx }
    }

    /// Queues one replication; true once a job holding it is on the queue.
    pub async fn submit(&self, item: PendingReplication) -> bool {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if self.tx.try_send((item, reply)).is_err() {
            return false;
        }
        matches!(
            tokio::time::timeout(REPLICATION_ENQUEUE_TIMEOUT, answer).await,
            Ok(Ok(true))
        )
    }
}
