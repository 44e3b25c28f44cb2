//! The mail job function: deduplicate, rate-bound into digests, send.

use std::time::Duration;

use tracing::{debug, warn};

use crate::clock::now_ms;
use crate::core::mail::{DIGEST_KEYS_SHOWN_MAX, MailJob, MailKind};
use crate::keyspace::{mail_digest_count_key, mail_digest_key, mail_sent_key, mail_window_key};
use crate::mail::{DIGEST_KEYS_MAX, MailError, Mailer, SENT_IDS_TTL_S};
use crate::queue::{EMAIL, JobQueues, QueueError};
use crate::work::replicate::retry_or_dead_letter;

/// Outcome of one mail job run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailOutcome {
    Sent,
    /// Already sent by an earlier delivery of the same job.
    Duplicate,
    /// Over the rate bound: added to the minute's digest.
    Digested,
    /// A digest with nothing left to send.
    Empty,
}

/// The mail job function (see the module docs).
pub async fn run_mail_job(
    mailer: &Mailer,
    queues: &JobQueues,
    job: &MailJob,
) -> Result<MailOutcome, MailError> {
    let node = queues.node().to_owned();
    let redis_err = |e: redis::RedisError| MailError::Transient(format!("redis: {e}"));
    let mut conn = queues.connection();
    let already: bool = redis::cmd("EXISTS")
        .arg(mail_sent_key(&node, &job.id))
        .query_async(&mut conn)
        .await
        .map_err(redis_err)?;
    if already {
        queues.count("mail_duplicates_skipped", 1).await.ok();
        return Ok(MailOutcome::Duplicate);
    }
    let job = match &job.kind {
        MailKind::Write { key, .. } => {
            let window_ms = u64::try_from(mailer.settings.rate_window.as_millis())
                .unwrap_or(60_000)
                .max(1);
            let minute = now_ms() / window_ms;
            let minute_key = mail_window_key(&node, minute);
            let (count,): (u64,) = redis::pipe()
                .cmd("INCR")
                .arg(&minute_key)
                .cmd("EXPIRE")
                .arg(&minute_key)
                .arg((window_ms / 1000).max(1) * 2)
                .ignore()
                .query_async(&mut conn)
                .await
                .map_err(redis_err)?;
            if count > mailer.settings.rate_per_minute {
                redis::pipe()
                    .atomic()
                    .cmd("RPUSH")
                    .arg(mail_digest_key(&node))
                    .arg(key)
                    .ignore()
                    .cmd("LTRIM")
                    .arg(mail_digest_key(&node))
                    .arg(-DIGEST_KEYS_MAX)
                    .arg(-1)
                    .ignore()
                    .cmd("INCR")
                    .arg(mail_digest_count_key(&node))
                    .ignore()
                    .cmd("SET")
                    .arg(mail_sent_key(&node, &job.id))
                    .arg("digest")
                    .arg("EX")
                    .arg(SENT_IDS_TTL_S)
                    .ignore()
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(redis_err)?;
                let next_minute_ms = (minute + 1) * window_ms;
                let digest = MailJob {
                    id: format!("digest-{minute}"),
                    node: node.clone(),
                    time_ms: next_minute_ms,
                    kind: MailKind::Digest {
                        count: 0,
                        keys: Vec::new(),
                    },
                    attempt: 0,
                };
                let delay = Duration::from_millis(next_minute_ms.saturating_sub(now_ms()));
                queues
                    .push_mail(digest, Some(delay))
                    .await
                    .map_err(|e| MailError::Transient(e.to_string()))?;
                queues.count("mail_digested", 1).await.ok();
                return Ok(MailOutcome::Digested);
            }
            job.clone()
        }
        MailKind::Digest { .. } => {
            // Take the digest atomically: what arrives later goes to the next one.
            let (keys, count): (Vec<String>, Option<u64>) = redis::pipe()
                .atomic()
                .cmd("LRANGE")
                .arg(mail_digest_key(&node))
                .arg(0)
                .arg(DIGEST_KEYS_SHOWN_MAX as isize - 1)
                .cmd("GETDEL")
                .arg(mail_digest_count_key(&node))
                .cmd("DEL")
                .arg(mail_digest_key(&node))
                .ignore()
                .query_async(&mut conn)
                .await
                .map_err(redis_err)?;
            let count = count.unwrap_or(0);
            if count == 0 {
                return Ok(MailOutcome::Empty);
            }
            MailJob {
                kind: MailKind::Digest { count, keys },
                ..job.clone()
            }
        }
        MailKind::Alert { .. } => job.clone(),
    };
    let (subject, body) = job.render();
    mailer.send(&subject, body).await?;
    let _: Result<(), _> = redis::cmd("SET")
        .arg(mail_sent_key(&node, &job.id))
        .arg("sent")
        .arg("EX")
        .arg(SENT_IDS_TTL_S)
        .query_async(&mut conn)
        .await;
    queues.count("mail_sent", 1).await.ok();
    debug!(id = %job.id, "notification sent");
    Ok(MailOutcome::Sent)
}

/// Runs a mail job and settles a failure: retry with backoff, or (after the
/// last attempt, or at once for a permanent error) a dead letter.
#[tracing::instrument(name = "job", skip_all, fields(node = %queues.node(), queue = "email", id = %job.id, attempt = job.attempt))]
pub async fn mail_and_settle(
    mailer: &Mailer,
    queues: &JobQueues,
    job: MailJob,
) -> Result<(), QueueError> {
    let failure = match run_mail_job(mailer, queues, &job).await {
        Ok(_) => return Ok(()),
        Err(failure) => failure,
    };
    queues.count("mail_failed", 1).await?;
    let permanent = matches!(failure, MailError::Permanent(_));
    if permanent {
        warn!(id = %job.id, error = %failure, "notification failed permanently");
    }
    let runs = job.attempt.saturating_add(1);
    let attempts_left = !permanent;
    retry_or_dead_letter(
        queues,
        EMAIL,
        runs,
        attempts_left,
        failure.to_string(),
        &job,
        async |attempt, delay| {
            let next = MailJob {
                attempt,
                ..job.clone()
            };
            queues.push_mail(next, Some(delay)).await
        },
    )
    .await
}

/// The in-process mail sender (background sync off): runs each job handed
/// over by the node with the same job function and retry policy as a
/// worker, the delays slept here instead of scheduled on a queue. At most
/// [`crate::node::MAIL_INLINE_IN_FLIGHT_MAX`] run at once; the channel is
/// bounded by the same number, so a flood is refused, not buffered.
pub async fn run_inline(
    mailer: std::sync::Arc<Mailer>,
    queues: JobQueues,
    mut jobs: tokio::sync::mpsc::Receiver<MailJob>,
) {
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(
        crate::node::MAIL_INLINE_IN_FLIGHT_MAX,
    ));
    while let Some(job) = jobs.recv().await {
        let Ok(permit) = std::sync::Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let (mailer, queues) = (std::sync::Arc::clone(&mailer), queues.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let mut job = job;
            loop {
                let Err(failure) = run_mail_job(&mailer, &queues, &job).await else {
                    return;
                };
                let permanent = matches!(failure, MailError::Permanent(_));
                let runs = job.attempt.saturating_add(1);
                match queues.decide(runs, !permanent) {
                    crate::core::jobs::RetryDecision::RetryAfter { delay_ms, attempt } => {
                        let _ = queues.count("retried", 1).await;
                        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                        job.attempt = attempt;
                    }
                    crate::core::jobs::RetryDecision::GiveUp => {
                        if let Err(error) = queues
                            .dead_letter_job(EMAIL, runs, failure.to_string(), &job)
                            .await
                        {
                            warn!(%error, "cannot record the dead letter of a notification");
                        }
                        return;
                    }
                }
            }
        });
    }
}
