//! Background jobs: Redis-backed queues (apalis-redis), dead letters, queue
//! statistics, the janitor that bounds finished records, group commit of
//! replication jobs ([`batcher`]) and the leases that keep two runs of one
//! periodic task apart ([`lease`]). The job functions are in [`crate::work`].
//!
//! Each node has its own queues in its own Redis, named `kv:{node}:q:{kind}`.
//! API processes push; worker processes (any number) run the jobs. The
//! `periodic` queue carries the runs of the periodic tasks (heartbeat, hint
//! delivery, anti-entropy, GC) that the API's one scheduler pushes when due.
//! With background sync off there is no queue: the API process contacts
//! every replica itself and its scheduler runs the periodic tasks in-process
//! through the same functions.
//!
//! apalis-redis 1.0 is used with these choices, each working around a
//! behaviour of its source (see README, "Background sync"):
//! - workers poll every [`POLL_INTERVAL_MS`] (a plain storage only polls on
//!   its heartbeat, 30 s by default) on a timer of ours that is always
//!   re-armed ([`paced::PollEvery`]: apalis's can be left unarmed), and an
//!   empty fetch is answered only after that interval ([`paced`]): apalis
//!   otherwise fetches in a loop;
//! - worker heartbeat 2 s × 3 missed beats: jobs held by a killed worker are
//!   re-queued by a live worker after about 6-9 s (default would be 300 s);
//! - retries are ours, not apalis's (which reschedules failures linearly, up
//!   to a hard-coded 25 runs): a failed run re-pushes the job with
//!   `attempt + 1` after a capped exponential delay, and after
//!   `attempts_max` runs writes a [`DeadLetter`] to `kv:{node}:dead` (bounded);
//! - finished job records are never trimmed by apalis: [`JobQueues::janitor_pass`]
//!   deletes them.

pub mod batcher;
pub mod lease;
pub mod paced;

use std::time::Duration;

use apalis::prelude::{BackendExt, PollWith, TaskBuilder, TaskId, TaskSink};
use apalis_redis::{Config as QueueConfig, RedisStorage};
use redis::aio::ConnectionManager;
use serde::Serialize;
use thiserror::Error;
use tracing::warn;

use crate::clock::now_ms;
use crate::core::jobs::{
    DeadLetter, Lenient, PeriodicJob, ReplicateJob, RetryDecision, RetryPolicy,
};
use crate::core::mail::MailJob;
use crate::core::message::JobView;
use paced::{PacedConnection, PollEvery};

/// What a worker of one queue consumes: the queue's storage, read leniently,
/// through a [`PacedConnection`], polled by [`PollEvery`].
pub type WorkerStorage<T> = PollWith<RedisStorage<Lenient<T>, PacedConnection>, PollEvery>;

/// How often an idle worker looks for new jobs.
pub const POLL_INTERVAL_MS: u64 = 50;
/// Worker liveness beat; a worker missing [`MISSED_HEARTBEATS`] is presumed dead.
pub const WORKER_HEARTBEAT_S: u64 = 2;
pub const MISSED_HEARTBEATS: usize = 3;
/// Jobs one worker fetches at once.
pub const FETCH_BATCH_LEN: usize = 16;
/// Dead letters kept per node (newest first); older ones are dropped.
pub const DEAD_LETTERS_MAX: isize = 1000;
/// Finished job records the janitor deletes per queue per pass.
pub const JANITOR_BATCH_LEN: usize = 1000;

/// Queue kinds, one apalis queue each.
pub const REPLICATE: &str = "replicate";
pub const PERIODIC: &str = "periodic";
pub const EMAIL: &str = "email";
pub const QUEUE_KINDS: [&str; 3] = [REPLICATE, PERIODIC, EMAIL];

pub use crate::keyspace::{dead_key, job_stats_key, queue_name};

#[derive(Debug, Error)]
pub enum QueueError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("cannot enqueue: {0}")]
    Push(String),
    #[error("queue {queue} holds {depth} jobs, the limit is {max}")]
    Full { queue: String, depth: u64, max: u64 },
}

/// Jobs a queue may hold (ready plus scheduled) before new ones are refused:
/// `jobs_max` (`KV_QUEUE_JOBS_MAX`) for replication and e-mail, at most
/// [`PERIODIC_JOBS_MAX`] periodic runs. The check reads the depth before pushing, so concurrent
/// pushers may pass it by a few jobs; retries are not checked, since each
/// replaces the job that failed. A refused replication falls back to a
/// (bounded) hint, a refused mail is logged and counted, a refused periodic
/// run is skipped (the next one comes).
pub fn queue_jobs_max(kind: &str, jobs_max: u64) -> u64 {
    match kind {
        PERIODIC => jobs_max.min(PERIODIC_JOBS_MAX),
        _ => jobs_max,
    }
}

/// Default of `KV_QUEUE_JOBS_MAX`.
pub const QUEUE_JOBS_MAX_DEFAULT: u64 = 100_000;
/// Periodic runs the `periodic` queue holds: a backlog while no worker
/// runs stops growing there (its jobs are stale by the time one starts).
pub const PERIODIC_JOBS_MAX: u64 = 100;

/// The apalis-redis configuration of one queue.
pub fn queue_config(node: &str, kind: &str) -> QueueConfig {
    QueueConfig::default()
        .queue(queue_name(node, kind))
        .batch_size(FETCH_BATCH_LEN)
        .heartbeat_interval(Duration::from_secs(WORKER_HEARTBEAT_S))
        .missed_heartbeats(MISSED_HEARTBEATS)
        .emit_events(false)
}

/// Counts of one queue, for `/cluster/` and `/metrics`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueStats {
    pub queue: String,
    /// Ready to run now.
    pub depth: u64,
    /// Fetched by a worker and not finished.
    pub in_flight: u64,
    /// Waiting for a later run (retries with backoff).
    pub retrying: u64,
    /// Finished records not yet trimmed by the janitor.
    pub done_untrimmed: u64,
    /// Workers that beat within the orphan window.
    pub workers: u64,
}

/// Counters shared by every process of a node (kept in Redis).
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobCounters {
    pub delivered: u64,
    pub retried: u64,
    pub dead: u64,
    pub lag_ms_last: u64,
    pub lag_ms_sum: u64,
    pub mail_sent: u64,
    pub mail_failed: u64,
    pub mail_digested: u64,
    pub mail_duplicates_skipped: u64,
    pub status_changes: u64,
}

/// The retry policy of background jobs, from the configuration.
pub fn retry_policy(cfg: &crate::config::Config) -> RetryPolicy {
    RetryPolicy {
        attempts_max: cfg.job_attempts_max,
        backoff_base_ms: u64::try_from(cfg.job_backoff_base.as_millis()).unwrap_or(u64::MAX),
        backoff_max_ms: u64::try_from(cfg.job_backoff_max.as_millis()).unwrap_or(u64::MAX),
    }
}

/// The queues of one node.
#[derive(Clone)]
pub struct JobQueues {
    node: String,
    conn: ConnectionManager,
    replicate: RedisStorage<ReplicateJob>,
    periodic: RedisStorage<PeriodicJob>,
    email: RedisStorage<MailJob>,
    pub policy: RetryPolicy,
    jobs_max: u64,
}

impl JobQueues {
    pub fn new(conn: ConnectionManager, node: &str, policy: RetryPolicy) -> Self {
        let replicate = RedisStorage::new(conn.clone()).with_config(queue_config(node, REPLICATE));
        let periodic = RedisStorage::new(conn.clone()).with_config(queue_config(node, PERIODIC));
        let email = RedisStorage::new(conn.clone()).with_config(queue_config(node, EMAIL));
        JobQueues {
            node: node.to_owned(),
            conn,
            replicate,
            periodic,
            email,
            policy,
            jobs_max: QUEUE_JOBS_MAX_DEFAULT,
        }
    }

    /// Sets the bound of the replication and e-mail queues (`KV_QUEUE_JOBS_MAX`).
    #[must_use]
    pub fn with_jobs_max(mut self, jobs_max: u64) -> Self {
        self.jobs_max = jobs_max.max(1);
        self
    }

    /// The node's Redis connection (shared, multiplexed).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Pushes a mail job. Its task id is derived from the job id and
    /// attempt, so pushing the same job twice enqueues it once.
    pub async fn push_mail(&self, job: MailJob, delay: Option<Duration>) -> Result<(), QueueError> {
        if job.attempt == 0 {
            self.ensure_room(EMAIL).await?;
        }
        let id = TaskId::from_string(format!("{}-a{}", job.id, job.attempt));
        let mut builder = TaskBuilder::new(job).task_id(id);
        if let Some(delay) = delay {
            builder = builder.run_after(delay);
        }
        let mut storage = self.email.clone();
        storage
            .push_task(builder.build())
            .await
            .map_err(|e| QueueError::Push(e.to_string()))
    }

    /// Pushes a periodic run. Its task id names the task and the time it
    /// is due, so pushing the same run twice enqueues it once.
    pub async fn push_periodic(&self, job: PeriodicJob) -> Result<(), QueueError> {
        self.ensure_room(PERIODIC).await?;
        let id = TaskId::from_string(format!("{}-{}", job.task, job.scheduled_ms));
        let mut storage = self.periodic.clone();
        storage
            .push_task(TaskBuilder::new(job).task_id(id).build())
            .await
            .map_err(|e| QueueError::Push(e.to_string()))
    }

    /// Refuses a new job when queue `kind` is at its bound.
    async fn ensure_room(&self, kind: &str) -> Result<(), QueueError> {
        let queue = queue_name(&self.node, kind);
        let mut conn = self.conn.clone();
        let (ready, scheduled): (u64, u64) = redis::pipe()
            .cmd("LLEN")
            .arg(format!("{queue}:active"))
            .cmd("ZCARD")
            .arg(format!("{queue}:scheduled"))
            .query_async(&mut conn)
            .await?;
        let depth = ready + scheduled;
        let max = queue_jobs_max(kind, self.jobs_max);
        if depth >= max {
            return Err(QueueError::Full { queue, depth, max });
        }
        Ok(())
    }

    /// The storage a worker of queue `kind` consumes: the same queue, read
    /// leniently (see [`Lenient`]).
    /// It polls every [`POLL_INTERVAL_MS`] and its empty fetches are held
    /// back (see [`paced`]).
    pub fn worker_storage<T>(&self, kind: &str) -> WorkerStorage<T> {
        RedisStorage::new(PacedConnection::new(self.conn.clone()))
            .with_config(queue_config(&self.node, kind))
            .poll_with_strategy(PollEvery::new(Duration::from_millis(POLL_INTERVAL_MS)))
    }

    /// Dead-letters a job its worker could not decode.
    pub async fn dead_letter_invalid(
        &self,
        kind: &str,
        job: serde_json::Value,
    ) -> Result<(), QueueError> {
        let reason = "the job payload could not be decoded".to_owned();
        self.dead_letter_job(kind, 0, reason, &job).await
    }

    /// What to do after a failed run: the retry policy, or give up at once
    /// when the failure is not retryable.
    pub fn decide(&self, runs: u32, retryable: bool) -> RetryDecision {
        if retryable {
            self.policy.after_failure(runs)
        } else {
            RetryDecision::GiveUp
        }
    }

    /// Writes a job of queue `kind` that will not run again to the dead letters.
    pub async fn dead_letter_job<J: Serialize>(
        &self,
        kind: &str,
        runs: u32,
        reason: String,
        job: &J,
    ) -> Result<(), QueueError> {
        warn!(kind, runs, %reason, "job dead-lettered");
        let letter = DeadLetter {
            queue: queue_name(&self.node, kind),
            reason,
            attempts: runs,
            failed_ms: now_ms(),
            job: serde_json::to_value(job).unwrap_or_default(),
        };
        self.dead_letter(&letter).await
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Pushes a replication job, to run now or after `delay`.
    pub async fn push_replicate(
        &self,
        job: ReplicateJob,
        delay: Option<Duration>,
    ) -> Result<(), QueueError> {
        if job.attempt == 0 {
            self.ensure_room(REPLICATE).await?;
        }
        let mut builder = TaskBuilder::new(job);
        if let Some(delay) = delay {
            builder = builder.run_after(delay);
        }
        let mut storage = self.replicate.clone();
        storage
            .push_task(builder.build())
            .await
            .map_err(|e| QueueError::Push(e.to_string()))
    }

    /// Records a dead letter (bounded list, newest first).
    pub async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), QueueError> {
        let text = serde_json::to_string(letter).map_err(|e| QueueError::Push(e.to_string()))?;
        let mut conn = self.conn.clone();
        redis::pipe()
            .atomic()
            .cmd("LPUSH")
            .arg(dead_key(&self.node))
            .arg(text)
            .ignore()
            .cmd("LTRIM")
            .arg(dead_key(&self.node))
            .arg(0)
            .arg(DEAD_LETTERS_MAX - 1)
            .ignore()
            .cmd("HINCRBY")
            .arg(job_stats_key(&self.node))
            .arg("dead")
            .arg(1)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// The newest dead letters.
    pub async fn dead_letters(&self, limit: usize) -> Result<(u64, Vec<DeadLetter>), QueueError> {
        let mut conn = self.conn.clone();
        let (len, raw): (u64, Vec<String>) = redis::pipe()
            .cmd("LLEN")
            .arg(dead_key(&self.node))
            .cmd("LRANGE")
            .arg(dead_key(&self.node))
            .arg(0)
            .arg(limit.saturating_sub(1))
            .query_async(&mut conn)
            .await?;
        Ok((
            len,
            raw.iter()
                .filter_map(|r| serde_json::from_str(r).ok())
                .collect(),
        ))
    }

    /// Adds to the node's job counters.
    pub async fn count(&self, field: &str, by: u64) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        redis::cmd("HINCRBY")
            .arg(job_stats_key(&self.node))
            .arg(field)
            .arg(by)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    pub async fn record_delivery(&self, lag_ms: u64) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let key = job_stats_key(&self.node);
        redis::pipe()
            .cmd("HINCRBY")
            .arg(&key)
            .arg("delivered")
            .arg(1)
            .ignore()
            .cmd("HINCRBY")
            .arg(&key)
            .arg("lag_ms_sum")
            .arg(lag_ms)
            .ignore()
            .cmd("HSET")
            .arg(&key)
            .arg("lag_ms_last")
            .arg(lag_ms)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    pub async fn counters(&self) -> Result<JobCounters, QueueError> {
        let mut conn = self.conn.clone();
        let map: std::collections::HashMap<String, u64> = redis::cmd("HGETALL")
            .arg(job_stats_key(&self.node))
            .query_async(&mut conn)
            .await?;
        let get = |k: &str| map.get(k).copied().unwrap_or(0);
        Ok(JobCounters {
            delivered: get("delivered"),
            retried: get("retried"),
            dead: get("dead"),
            lag_ms_last: get("lag_ms_last"),
            lag_ms_sum: get("lag_ms_sum"),
            mail_sent: get("mail_sent"),
            mail_failed: get("mail_failed"),
            mail_digested: get("mail_digested"),
            mail_duplicates_skipped: get("mail_duplicates_skipped"),
            status_changes: get("status_changes"),
        })
    }

    /// Counts of every queue of this node, read from apalis-redis' keys
    /// (its own statistics calls are broken in 1.0.0).
    pub async fn stats(&self) -> Result<Vec<QueueStats>, QueueError> {
        let now_s = now_ms() / 1000;
        let orphan_s = WORKER_HEARTBEAT_S * MISSED_HEARTBEATS as u64;
        let mut out = Vec::with_capacity(QUEUE_KINDS.len());
        let mut conn = self.conn.clone();
        for kind in QUEUE_KINDS {
            let q = queue_name(&self.node, kind);
            let (active, due, later, done, live, all): (
                u64,
                u64,
                u64,
                u64,
                Vec<String>,
                Vec<String>,
            ) = redis::pipe()
                .cmd("LLEN")
                .arg(format!("{q}:active"))
                .cmd("ZCOUNT")
                .arg(format!("{q}:scheduled"))
                .arg("-inf")
                .arg(now_s)
                .cmd("ZCOUNT")
                .arg(format!("{q}:scheduled"))
                .arg(format!("({now_s}"))
                .arg("+inf")
                .cmd("SCARD")
                .arg(format!("{q}:done"))
                .cmd("ZRANGEBYSCORE")
                .arg(format!("{q}:workers"))
                .arg(now_s.saturating_sub(orphan_s))
                .arg("+inf")
                .cmd("ZRANGE")
                .arg(format!("{q}:workers"))
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await?;
            let mut in_flight = 0;
            if !all.is_empty() {
                let mut p = redis::pipe();
                for w in &all {
                    // apalis-redis names inflight sets by the worker's key.
                    let set = if w.starts_with(&q) {
                        w.clone()
                    } else {
                        format!("{q}:inflight:{w}")
                    };
                    p.cmd("SCARD").arg(set);
                }
                let per: Vec<u64> = p.query_async(&mut conn).await?;
                in_flight = per.iter().sum();
            }
            out.push(QueueStats {
                queue: q,
                depth: active + due,
                in_flight,
                retrying: later,
                done_untrimmed: done,
                workers: live.len() as u64,
            });
        }
        Ok(out)
    }

    /// The replication jobs waiting on this node's queue (ready, or
    /// scheduled for a retry) that carry `key`, looking at the newest
    /// `checked_max` of each; returns them and how many jobs were looked at.
    pub async fn replication_jobs_for(
        &self,
        key: &str,
        checked_max: usize,
    ) -> Result<(Vec<JobView>, u64), QueueError> {
        let q = queue_name(&self.node, REPLICATE);
        let last = isize::try_from(checked_max).unwrap_or(isize::MAX).max(1) - 1;
        let mut conn = self.conn.clone();
        let (ready, scheduled): (Vec<String>, Vec<String>) = redis::pipe()
            .cmd("LRANGE")
            .arg(format!("{q}:active"))
            .arg(0)
            .arg(last)
            .cmd("ZRANGE")
            .arg(format!("{q}:scheduled"))
            .arg(0)
            .arg(last)
            .query_async(&mut conn)
            .await?;
        let ids: Vec<(&String, &str)> = ready
            .iter()
            .map(|id| (id, "ready"))
            .chain(scheduled.iter().map(|id| (id, "scheduled")))
            .collect();
        if ids.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let data: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(format!("{q}:data"))
            .arg(ids.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>())
            .query_async(&mut conn)
            .await?;
        let mut out = Vec::new();
        for ((_, state), bytes) in ids.iter().zip(data) {
            let Some(job) = bytes.and_then(|b| serde_json::from_slice::<ReplicateJob>(&b).ok())
            else {
                continue;
            };
            for kr in job.records.iter().filter(|kr| kr.key == key) {
                out.push(JobView {
                    target: job.target.clone(),
                    record: kr.record.clone(),
                    attempt: job.attempt,
                    state: (*state).to_owned(),
                });
            }
        }
        Ok((out, ids.len() as u64))
    }

    /// Deletes finished (done or dead) job records, at most
    /// [`JANITOR_BATCH_LEN`] per queue. Returns how many were deleted.
    pub async fn janitor_pass(&self) -> Result<u64, QueueError> {
        let mut deleted = 0u64;
        let mut conn = self.conn.clone();
        for kind in QUEUE_KINDS {
            let q = queue_name(&self.node, kind);
            for set in ["done", "dead"] {
                let ids: Vec<String> = redis::cmd("SPOP")
                    .arg(format!("{q}:{set}"))
                    .arg(JANITOR_BATCH_LEN)
                    .query_async(&mut conn)
                    .await?;
                if ids.is_empty() {
                    continue;
                }
                let mut p = redis::pipe();
                p.cmd("HDEL").arg(format!("{q}:data")).arg(&ids).ignore();
                for id in &ids {
                    p.cmd("DEL").arg(format!("{q}:meta:{id}")).ignore();
                }
                p.query_async::<()>(&mut conn).await?;
                deleted += ids.len() as u64;
            }
        }
        Ok(deleted)
    }
}

pub use batcher::ReplicationBatcher;
