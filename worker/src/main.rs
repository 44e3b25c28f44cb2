//! The `worker` binary: runs one node's background jobs.
//!
//! It attaches to its node's Redis (the same `REDIS_URL` / `KV_NODE_ID` as the
//! node's API) and runs apalis workers over the node's queues. Job functions
//! are thin: they call the same shared code the API process uses when
//! background sync is off. Any number of worker processes may run per node;
//! they share the queues. SIGTERM or Ctrl-C stops it: jobs in progress get
//! [`SHUTDOWN_DEADLINE_S`] to finish, the rest go back to the queue.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use apalis::prelude::{BoxDynError, Data, WorkerBuilder, WorkerBuilderExt, WorkerError};
use shared::core::jobs::{Lenient, PeriodicJob, PeriodicTask, ReplicateJob};
use shared::core::limits::REDIS_STARTUP_WAIT_MS;
use shared::core::mail::MailJob;
use shared::mail::Mailer;
use shared::node::Node;
use shared::queue::{EMAIL, JobQueues, PERIODIC, REPLICATE, retry_policy};
use shared::storage::{RedisStore, Store, connect_redis_ready};
use shared::work::mail::mail_and_settle;
use shared::work::periodic::{run_periodic_job, spawn_counter_flush};
use shared::work::replicate::{JobOutcome, replicate_and_settle, retry_or_dead_letter};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// How long jobs in progress may run after a shutdown signal.
const SHUTDOWN_DEADLINE_S: u64 = 10;
/// Pause before a queue's worker that stopped on an error (a Redis stall
/// ends an apalis worker) is started again; it doubles with each restart
/// in a row, up to [`RESTART_DELAY_MS_MAX`].
const RESTART_DELAY_MS_MIN: u64 = 500;
const RESTART_DELAY_MS_MAX: u64 = 10_000;
/// A worker that ran at least this long before it stopped restarts after
/// the shortest pause again.
const RESTART_HEALTHY_RUN_S: u64 = 60;
/// How often the janitor trims finished job records.
const JANITOR_INTERVAL_S: u64 = 5;

/// E-mails one worker sends at once.
const MAIL_CONCURRENCY: usize = 4;
/// Periodic jobs one worker runs at once: one per task, so a long round of
/// one task (anti-entropy) does not hold the others' jobs until they are
/// stale; two runs of one task are kept apart by its lease.
const PERIODIC_CONCURRENCY: usize = PeriodicTask::ALL.len();

/// Runs one queue's apalis worker until shutdown, and starts a new one
/// after an async pause whenever it stops on an error, so a Redis outage
/// never ends the process for good. The pause doubles with each restart in
/// a row ([`RESTART_DELAY_MS_MIN`] to [`RESTART_DELAY_MS_MAX`]): a Redis
/// that stays down costs a few attempts a minute, not a spinning loop.
/// `run(restart, stop)` builds the worker and runs it until `stop`.
async fn supervise<F, Fut>(queue: &'static str, mut stop: watch::Receiver<bool>, mut run: F)
where
    F: FnMut(usize, StopSignal) -> Fut,
    Fut: Future<Output = Result<(), WorkerError>>,
{
    let mut delay_ms = RESTART_DELAY_MS_MIN;
    for restart in 0usize.. {
        let started = Instant::now();
        let result = run(restart, stop_signal(stop.clone())).await;
        if *stop.borrow() {
            return;
        }
        match result {
            Ok(()) => warn!(queue, restart, "job worker ended; restarting"),
            Err(error) => warn!(queue, restart, %error, "job worker stopped; restarting"),
        }
        if started.elapsed() >= Duration::from_secs(RESTART_HEALTHY_RUN_S) {
            delay_ms = RESTART_DELAY_MS_MIN;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(delay_ms)) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        delay_ms = delay_ms.saturating_mul(2).min(RESTART_DELAY_MS_MAX);
    }
}

/// Resolves when the process is told to stop (what `run_until` waits for).
type StopSignal = std::pin::Pin<Box<dyn Future<Output = Result<(), WorkerError>> + Send>>;

fn stop_signal(mut stop: watch::Receiver<bool>) -> StopSignal {
    Box::pin(async move {
        // A dropped sender also means stop.
        let _ = stop.wait_for(|stopped| *stopped).await;
        Ok(())
    })
}

/// This process's name on the queues (apalis refuses a second live worker
/// of the same name): `KV_WORKER_NAME` or `{node}-worker`, then the host
/// name and the process id. The pid alone is not enough: in containers
/// (`docker compose up --scale worker1=3`) every worker is pid 1, while
/// each container has its own host name (its id).
fn worker_name(node_id: &str) -> String {
    let base = std::env::var("KV_WORKER_NAME")
        .ok()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| format!("{node_id}-worker"));
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .take(64)
        .collect();
    let pid = std::process::id();
    if host.is_empty() {
        format!("{base}-{pid}")
    } else {
        format!("{base}-{host}-{pid}")
    }
}

/// What the e-mail job function gets.
#[derive(Clone)]
struct MailState {
    mailer: Option<Arc<Mailer>>,
    queues: JobQueues,
}

/// What every job function gets.
#[derive(Clone)]
struct WorkerState {
    /// The node's shared handle: transport, hints, sync, GC, counters.
    node: Arc<Node>,
    queues: JobQueues,
    /// This process's name, as the holder of periodic leases.
    name: Arc<str>,
}

/// mimalloc: the request path allocates many small, short-lived objects
/// (headers, keys, records, futures); it measured faster than the system
/// allocator in `make bench` (see README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    if let Err(error) = run().await {
        eprintln!("worker: {error:#}");
        std::process::exit(2);
    }
}

async fn run() -> anyhow::Result<()> {
    let cfg = shared::process::start().context("configuration error")?;
    let cfg = Arc::new(cfg);
    let conn = connect_redis_ready(&cfg, Duration::from_millis(REDIS_STARTUP_WAIT_MS))
        .await
        .with_context(|| format!("REDIS_URL: cannot reach {}", cfg.redis_url_redacted()))?;
    let name = worker_name(&cfg.node_id);

    if !cfg.background_sync {
        // Background sync off: the API process runs the jobs itself.
        info!(node = %cfg.node_id, "KV_BACKGROUND_SYNC is off: this worker has nothing to do; idle until stopped");
        shared::process::shutdown_signal().await;
        return Ok(());
    }

    let store = Store::Redis(
        RedisStore::new(conn.clone(), &cfg.node_id).with_change_log(cfg.watch_log_len),
    );
    let queues =
        JobQueues::new(conn, &cfg.node_id, retry_policy(&cfg)).with_jobs_max(cfg.queue_jobs_max);
    // Jobs that raise notifications (heartbeat alerts) push them on the queues.
    let node = Node::build(Arc::clone(&cfg), store, Some(queues.clone()), None)
        .context("cannot build the peer HTTP client")?;
    spawn_counter_flush(Arc::clone(&node));
    // The API keeps the node's topology in Redis; the worker follows it.
    node.spawn_topology_follow();
    let state = WorkerState {
        node,
        queues: queues.clone(),
        name: Arc::from(name.as_str()),
    };

    let janitor = tokio::spawn(janitor(queues.clone()));
    info!(node = %cfg.node_id, worker = %name, concurrency = cfg.worker_concurrency, "worker started");

    let concurrency = cfg.worker_concurrency;
    let replicate_storage = queues.worker_storage::<ReplicateJob>(REPLICATE);
    let periodic_storage = queues.worker_storage::<PeriodicJob>(PERIODIC);
    let email_storage = queues.worker_storage::<MailJob>(EMAIL);
    let mailer = match &cfg.email {
        Some(email) => Some(Arc::new(
            Mailer::new(email).context("e-mail configuration")?,
        )),
        None => None,
    };
    let mail_state = MailState {
        mailer: mailer.clone(),
        queues: queues.clone(),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    // Each queue's apalis worker, started again after a pause when it stops
    // on an error. A new name per start: apalis-redis refuses to register a
    // name whose last beat is recent.
    let replicate = supervise(REPLICATE, stop_rx.clone(), |restart, stop| {
        WorkerBuilder::new(format!("{name}-replicate-{restart}"))
            .backend(replicate_storage.clone())
            .data(state.clone())
            .concurrency(concurrency)
            .build(replicate_job)
            .run_until(stop)
    });
    let periodic = supervise(PERIODIC, stop_rx.clone(), |restart, stop| {
        WorkerBuilder::new(format!("{name}-periodic-{restart}"))
            .backend(periodic_storage.clone())
            .data(state.clone())
            .concurrency(PERIODIC_CONCURRENCY)
            .build(periodic_job)
            .run_until(stop)
    });
    let email = supervise(EMAIL, stop_rx, |restart, stop| {
        WorkerBuilder::new(format!("{name}-email-{restart}"))
            .backend(email_storage.clone())
            .data(mail_state.clone())
            .concurrency(MAIL_CONCURRENCY)
            .build(mail_job)
            .run_until(stop)
    });
    let workers = async {
        tokio::join!(replicate, periodic, email);
    };
    tokio::pin!(workers);
    tokio::select! {
        () = &mut workers => warn!("every job worker ended"),
        () = shared::process::shutdown_signal() => {
            info!(deadline_s = SHUTDOWN_DEADLINE_S, "stopping: jobs in progress may finish");
            // No receiver left only if every worker loop ended already.
            let _ = stop_tx.send(true);
            let deadline = Duration::from_secs(SHUTDOWN_DEADLINE_S);
            if tokio::time::timeout(deadline, &mut workers).await.is_err() {
                warn!("jobs still running at the shutdown deadline; they go back to the queue");
            }
        }
    }
    janitor.abort();
    info!("worker stopped");
    Ok(())
}

/// The replication job function: deliver, or schedule the retry, or
/// dead-letter. An error here (Redis unreachable while settling) lets apalis
/// retry the whole job, which is safe: delivery is idempotent.
async fn replicate_job(
    job: Lenient<ReplicateJob>,
    state: Data<WorkerState>,
) -> Result<(), BoxDynError> {
    let job = match job {
        Lenient::Valid(job) => job,
        Lenient::Invalid(raw) => {
            return Ok(state.queues.dead_letter_invalid(REPLICATE, raw).await?);
        }
    };
    let (target, records) = (job.target.clone(), job.records.len());
    let outcome = match replicate_and_settle(&state.node, &state.queues, job).await? {
        JobOutcome::Delivered => "delivered",
        JobOutcome::Retrying => "retrying",
        JobOutcome::Dead => "dead",
    };
    // Which worker ran which job (RUST_LOG=info,worker=debug): how an
    // operator sees scaled workers share a queue.
    debug!(worker = %state.name, %target, records, outcome, "replication job run");
    Ok(())
}

/// The periodic job function: one round of the heartbeat, hint delivery,
/// anti-entropy or GC (skipped when stale or already running elsewhere).
async fn periodic_job(
    job: Lenient<PeriodicJob>,
    state: Data<WorkerState>,
) -> Result<(), BoxDynError> {
    let job = match job {
        Lenient::Valid(job) => job,
        Lenient::Invalid(raw) => {
            return Ok(state.queues.dead_letter_invalid(PERIODIC, raw).await?);
        }
    };
    run_periodic_job(&state.node, &state.queues, &job, &state.name).await;
    Ok(())
}

/// The e-mail job function: send (or digest, or skip a duplicate), retry,
/// dead-letter. Without SMTP settings on this worker, the job waits for a
/// worker that has them (its failure is retried, then dead-lettered).
async fn mail_job(job: Lenient<MailJob>, state: Data<MailState>) -> Result<(), BoxDynError> {
    let job = match job {
        Lenient::Valid(job) => job,
        Lenient::Invalid(raw) => return Ok(state.queues.dead_letter_invalid(EMAIL, raw).await?),
    };
    match &state.mailer {
        Some(mailer) => mail_and_settle(mailer, &state.queues, job).await?,
        None => {
            retry_or_dead_letter(
                &state.queues,
                EMAIL,
                job.attempt.saturating_add(1),
                true,
                "this worker has no SMTP settings (EMAIL_HOST)".to_owned(),
                &job,
                async |attempt, delay| {
                    state
                        .queues
                        .push_mail(
                            MailJob {
                                attempt,
                                ..job.clone()
                            },
                            Some(delay),
                        )
                        .await
                },
            )
            .await?
        }
    }
    Ok(())
}

/// Deletes finished job records every few seconds, so they stay bounded.
async fn janitor(queues: JobQueues) {
    let mut ticker = tokio::time::interval(Duration::from_secs(JANITOR_INTERVAL_S));
    loop {
        ticker.tick().await;
        match queues.janitor_pass().await {
            Ok(0) => {}
            Ok(n) => debug!(deleted = n, "janitor trimmed finished jobs"),
            Err(error) => warn!(%error, "janitor pass failed"),
        }
    }
}
