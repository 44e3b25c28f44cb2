//! Periodic work as scheduled jobs (Celery beat's counterpart): the
//! heartbeat, hint delivery, anti-entropy and tombstone GC.
//!
//! Exactly one scheduler per node, in its API process ([`spawn_scheduler`]),
//! knows when each task is due (`Config::schedules`: its interval, or the
//! cron expression that replaces it; `core::schedule` does the arithmetic).
//! With background sync on, it pushes a [`PeriodicJob`] onto the node's
//! `periodic` queue when a run is due, however many workers there are, and
//! one of the node's workers runs it through [`run_periodic_job`], which
//! skips a job that is stale (two later runs came due while it waited: a
//! backlog left while no worker ran) or whose task is still running
//! elsewhere (the task's lease, `queue::lease`). With background sync off
//! the scheduler runs [`run_task`] itself, each run of a task after the
//! previous one has ended.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use super::heartbeat::heartbeat;
use crate::clock::now_ms;
use crate::core::jobs::{PeriodicJob, PeriodicTask};
use crate::core::schedule::Schedule;
use crate::node::{Node, Stats};
use crate::queue::JobQueues;

/// How long a periodic lease lasts unless renewed: how long a task stays
/// blocked after its runner died mid-run.
pub const LEASE_TTL_MS: u64 = 10_000;
/// How often a running task renews its lease (well inside [`LEASE_TTL_MS`]).
pub const LEASE_RENEW_INTERVAL_MS: u64 = 3_000;
/// Longest single sleep of the scheduler: it looks at the clock again at
/// least this often, so a wall-clock step does not leave it asleep for hours.
pub const SCHEDULER_SLEEP_MS_MAX: u64 = 60_000;

/// Where the scheduler sends a due run.
#[derive(Clone)]
pub enum Dispatch {
    /// Background sync on: onto the node's `periodic` queue, for a worker
    /// (boxed: the queue handle is large, the other variant empty).
    Queue(Box<JobQueues>),
    /// Background sync off: run here, in the scheduler's task.
    InProcess,
}

/// Starts the node's scheduler: one task per periodic task that is on.
/// Call it once per node, in the API process.
pub fn spawn_scheduler(node: Arc<Node>, dispatch: Dispatch) {
    for (task, schedule) in node.config().schedules.iter() {
        info!(%task, %schedule, "periodic task scheduled");
        tokio::spawn(schedule_task(
            Arc::clone(&node),
            task,
            schedule.clone(),
            dispatch.clone(),
        ));
    }
}

/// Sends each due run of `task` to `dispatch`, until the schedule ends.
async fn schedule_task(
    node: Arc<Node>,
    task: PeriodicTask,
    schedule: Schedule,
    dispatch: Dispatch,
) {
    let Some(mut due_ms) = schedule.first_run_ms(now_ms(), task.runs_at_start()) else {
        warn!(%task, %schedule, "the schedule names no future time; the task never runs");
        return;
    };
    // Whether the last push was refused: warn once per refusal streak.
    let mut refusing = false;
    loop {
        sleep_until_ms(due_ms).await;
        match &dispatch {
            Dispatch::InProcess => run_task(&node, task).await,
            Dispatch::Queue(queues) => {
                let job = PeriodicJob {
                    task,
                    scheduled_ms: due_ms,
                };
                match queues.push_periodic(job).await {
                    Ok(()) => refusing = false,
                    Err(error) if refusing => debug!(%task, %error, "periodic run not queued"),
                    Err(error) => {
                        refusing = true;
                        warn!(%task, %error, "cannot queue a periodic run; skipping runs until the queue takes them");
                    }
                }
            }
        }
        let Some(next_ms) = schedule.next_run_ms(due_ms, now_ms()) else {
            info!(%task, %schedule, "the schedule has no further time; the task stops");
            return;
        };
        due_ms = next_ms;
    }
}

/// Sleeps until the wall clock reads `due_ms`.
async fn sleep_until_ms(due_ms: u64) {
    loop {
        let now = now_ms();
        if now >= due_ms {
            return;
        }
        let wait_ms = (due_ms - now).min(SCHEDULER_SLEEP_MS_MAX);
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
    }
}

/// What a worker did with a periodic job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeriodicOutcome {
    Ran,
    /// Skipped: two later runs came due while it waited.
    Stale,
    /// Skipped: a run of the same task holds its lease.
    Busy,
    /// Skipped: the lease could not be read (Redis unreachable).
    LeaseUnavailable,
}

/// The periodic job function (a worker): one run of the job's task, unless
/// the job is stale or the task is running elsewhere. `holder` names this
/// process in the task's lease. A skipped or failed run is logged and
/// counted, never retried: the next scheduled run comes anyway.
#[tracing::instrument(name = "job", skip_all, fields(node = %node.node_id(), queue = "periodic", task = ?job.task, scheduled_ms = job.scheduled_ms))]
pub async fn run_periodic_job(
    node: &Arc<Node>,
    queues: &JobQueues,
    job: &PeriodicJob,
    holder: &str,
) -> PeriodicOutcome {
    let task = job.task;
    let now = now_ms();
    // The worker judges staleness by its own copy of the schedule (API and
    // workers of a node share their variables); a task this process thinks
    // is off still runs: the scheduler decided.
    let stale = node
        .config()
        .schedules
        .get(task)
        .is_some_and(|schedule| schedule.is_stale(job.scheduled_ms, now));
    if stale {
        debug!(%task, age_ms = now.saturating_sub(job.scheduled_ms), "skipping a stale periodic job");
        Stats::add(&node.stats.periodic_skipped, 1);
        return PeriodicOutcome::Stale;
    }
    let ttl = Duration::from_millis(LEASE_TTL_MS);
    match queues.try_lease(task.as_str(), holder, ttl).await {
        Ok(true) => {}
        Ok(false) => {
            debug!(%task, "skipping a periodic job: the task is still running elsewhere");
            Stats::add(&node.stats.periodic_skipped, 1);
            return PeriodicOutcome::Busy;
        }
        Err(error) => {
            warn!(%task, %error, "cannot take the periodic lease; skipping this run");
            Stats::add(&node.stats.periodic_skipped, 1);
            return PeriodicOutcome::LeaseUnavailable;
        }
    }
    let renew = async {
        let period = Duration::from_millis(LEASE_RENEW_INTERVAL_MS);
        loop {
            tokio::time::sleep(period).await;
            match queues.renew_lease(task.as_str(), holder, ttl).await {
                Ok(true) => {}
                Ok(false) => warn!(%task, "the periodic lease expired mid-run"),
                Err(error) => debug!(%task, %error, "cannot renew the periodic lease"),
            }
        }
    };
    tokio::select! {
        () = run_task(node, task) => {}
        () = renew => {}
    }
    if let Err(error) = queues.release_lease(task.as_str(), holder).await {
        // It expires on its own within LEASE_TTL_MS.
        debug!(%task, %error, "cannot release the periodic lease");
    }
    PeriodicOutcome::Ran
}

/// One run of a periodic task; failures are logged (the next run retries).
pub async fn run_task(node: &Arc<Node>, task: PeriodicTask) {
    match task {
        PeriodicTask::Heartbeat => {
            if let Err(error) = heartbeat(node).await {
                warn!(%error, "heartbeat failed");
            }
        }
        PeriodicTask::HintDelivery => match node.deliver_hints().await {
            Ok(0) => {}
            Ok(n) => info!(delivered = n, "hints delivered"),
            Err(error) => warn!(%error, "hint delivery failed"),
        },
        // A membership change moves data itself (each gaining node pulls
        // its share, and GC's "every holder" is in flux): both wait for it.
        PeriodicTask::AntiEntropy | PeriodicTask::Gc if node.view().placement.is_changing() => {
            info!(?task, "paused while a membership change is in progress");
        }
        PeriodicTask::AntiEntropy => match node.restore(None).await {
            Ok(report) if report.stored > 0 => info!(
                stored = report.stored,
                leaves_differing = report.leaves_differing,
                "anti-entropy repaired records"
            ),
            Ok(_) => debug!("anti-entropy: in sync"),
            Err(error) => warn!(%error, "anti-entropy failed"),
        },
        PeriodicTask::Gc => match node.collect_tombstones().await {
            Ok(0) => {}
            Ok(n) => info!(collected = n, "tombstones collected"),
            Err(error) => warn!(%error, "tombstone collection failed"),
        },
    }
}

/// How often a process adds its new counts to the node's counters in Redis.
pub const COUNTER_FLUSH_INTERVAL_MS: u64 = 1_000;

/// Flushes this process's counters to the node's Redis every
/// [`COUNTER_FLUSH_INTERVAL_MS`], so `/metrics` and `/cluster/` show work
/// done by any process of the node.
pub fn spawn_counter_flush(node: Arc<Node>) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(COUNTER_FLUSH_INTERVAL_MS));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(error) = node.flush_counters().await {
                debug!(%error, "cannot flush counters");
            }
        }
    });
}
