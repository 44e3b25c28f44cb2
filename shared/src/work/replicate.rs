//! The replication job function, and the retry / dead-letter decision
//! shared by every job kind.

use std::time::Duration;

use serde::Serialize;
use thiserror::Error;
use tracing::{debug, warn};

use crate::clock::now_ms;
use crate::core::jobs::{ReplicateJob, RetryDecision};
use crate::core::message::ApplyStatus;
use crate::node::{Node, Stats};
use crate::queue::{JobQueues, QueueError, REPLICATE};
/// Why a job run failed (it will be retried or dead-lettered).
#[derive(Debug, Error)]
#[error("{reason}")]
pub struct JobFailure {
    pub reason: String,
    /// Indexes of the records the target refused as beyond its clock's
    /// drift bound (the others failed with the call, or were stored).
    pub refused: Vec<usize>,
}

impl JobFailure {
    fn call(reason: String) -> Self {
        JobFailure {
            reason,
            refused: Vec::new(),
        }
    }
}

/// The replication job function: delivers the records to the target
/// replica. Shared by workers and the inline runner. Safe to replay.
/// Jobs a worker runs at the same time for the same target share one call
/// (see [`crate::coalesce`]); each still gets its own statuses.
pub async fn run_replicate(node: &Node, job: &ReplicateJob) -> Result<(), JobFailure> {
    let statuses = node
        .transport()
        .apply(&job.target, job.records.clone())
        .await
        .map_err(|e| JobFailure::call(e.to_string()))?;
    if statuses.len() != job.records.len() {
        return Err(JobFailure::call(format!(
            "{} answered {} statuses for {} records",
            job.target,
            statuses.len(),
            job.records.len()
        )));
    }
    // `NotHeld`: the target no longer holds the key (a membership change
    // since the write); the write reached the new holders itself.
    let refused: Vec<usize> = statuses
        .iter()
        .enumerate()
        .filter(|(_, s)| **s == ApplyStatus::Refused)
        .map(|(i, _)| i)
        .collect();
    if !refused.is_empty() {
        // The target refused versions from beyond its clock's drift bound:
        // not delivered. Retried (the clocks may come back within the
        // bound), then dead-lettered, visibly, and never kept as a hint.
        warn!(target = %job.target, refused = refused.len(), "replica refused records from the future");
        return Err(JobFailure {
            reason: format!(
                "{} refused {} of {} records (version beyond its clock drift bound)",
                job.target,
                refused.len(),
                job.records.len()
            ),
            refused,
        });
    }
    Ok(())
}

/// What became of a job run, after retries are decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    Delivered,
    Retrying,
    Dead,
}

/// After a failed run: push the job again after the policy's delay, or,
/// when out of attempts (or `retryable` is false), write a dead letter.
/// `requeue` receives the new attempt count and the delay.
#[allow(clippy::too_many_arguments)]
pub async fn retry_or_dead_letter<J: Serialize>(
    queues: &JobQueues,
    kind: &str,
    runs: u32,
    retryable: bool,
    reason: String,
    job: &J,
    requeue: impl AsyncFnOnce(u32, Duration) -> Result<(), QueueError>,
) -> Result<(), QueueError> {
    match queues.decide(runs, retryable) {
        RetryDecision::RetryAfter { delay_ms, attempt } => {
            debug!(kind, attempt, delay_ms, %reason, "job failed; retrying");
            requeue(attempt, Duration::from_millis(delay_ms)).await?;
            queues.count("retried", 1).await?;
        }
        RetryDecision::GiveUp => queues.dead_letter_job(kind, runs, reason, job).await?,
    }
    Ok(())
}

/// Runs a replication job once and, on failure, schedules the retry on the
/// queue or dead-letters it (keeping the records as a hint). Used by the
/// worker's job function.
#[tracing::instrument(name = "job", skip_all, fields(node = %node.node_id(), queue = "replicate", target = %job.target, records = job.records.len(), attempt = job.attempt))]
pub async fn replicate_and_settle(
    node: &Node,
    queues: &JobQueues,
    job: ReplicateJob,
) -> Result<JobOutcome, QueueError> {
    let grace_ms = u64::try_from(node.config().tombstone_grace.as_millis()).unwrap_or(u64::MAX);
    let age_ms = now_ms().saturating_sub(job.created_ms);
    if age_ms > grace_ms {
        // Older than the tombstone grace: its records may be deletes that GC
        // has since collected elsewhere, or values whose deletes it has, so
        // replaying it could bring a deleted key back (Cassandra's rule: a
        // hint older than gc_grace is never replayed). Anti-entropy repairs.
        warn!(target = %job.target, age_ms, records = job.records.len(), "dropping a replication job older than the tombstone grace");
        Stats::add(&node.stats.jobs_expired, 1);
        return Ok(JobOutcome::Dead);
    }
    let failure = match run_replicate(node, &job).await {
        Ok(()) => {
            queues
                .record_delivery(now_ms().saturating_sub(job.created_ms))
                .await?;
            return Ok(JobOutcome::Delivered);
        }
        Err(failure) => failure,
    };
    let runs = job.attempt.saturating_add(1);
    let give_up = queues.policy.after_failure(runs) == RetryDecision::GiveUp;
    let mut reason = failure.reason;
    if give_up {
        // The job is dead, not the data: keep what was not refused as a
        // hint, which is delivered as soon as the target answers again.
        // Refused records are not kept: a version from beyond the drift
        // bound must not win later, once real time passes it.
        let keep: Vec<_> = job
            .records
            .iter()
            .enumerate()
            .filter(|(i, _)| !failure.refused.contains(i))
            .map(|(_, r)| r.clone())
            .collect();
        let kept = !keep.is_empty() && node.keep_hint(&job.target, keep).await;
        reason = if kept {
            format!("{reason}; gave up after {runs} runs, records not refused kept as a hint")
        } else {
            format!("{reason}; gave up after {runs} runs, no hint kept (anti-entropy will repair)")
        };
    }
    retry_or_dead_letter(
        queues,
        REPLICATE,
        runs,
        true,
        reason,
        &job,
        async |attempt, delay| {
            let next = ReplicateJob {
                attempt,
                ..job.clone()
            };
            queues.push_replicate(next, Some(delay)).await
        },
    )
    .await?;
    Ok(if give_up {
        JobOutcome::Dead
    } else {
        JobOutcome::Retrying
    })
}
