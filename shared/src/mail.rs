//! E-mail notifications over SMTP (lettre), sent as jobs.
//!
//! One job per acknowledged client write, pushed by the coordinating node
//! with a task id derived from the write's version, so a retried push does
//! not enqueue twice. The job function:
//! 1. skips a job whose id was already sent (a re-delivery after a worker
//!    died between sending and acknowledging the job);
//! 2. counts the minute's sends and, over `EMAIL_RATE_PER_MINUTE`, adds the
//!    key to a digest sent once at the end of the minute instead;
//! 3. sends with timeouts, then records the id as sent for a day.
//!
//! A failure is retried with the job retry policy; a permanent SMTP error
//! (5xx, e.g. authentication refused) is dead-lettered at once.

use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use thiserror::Error;
use tracing::{debug, warn};

use crate::config::{EmailConfig, TlsMode};
use crate::coordinator::now_ms;
use crate::core::mail::{DIGEST_KEYS_SHOWN_MAX, MailJob, MailKind};
use crate::jobs::JobQueues;

/// How long the id of a sent message is remembered, to skip re-deliveries.
pub const SENT_IDS_TTL_S: u64 = 86_400;
/// Keys remembered for the next digest (the count is exact beyond it).
pub const DIGEST_KEYS_MAX: isize = 1000;

/// Why a send failed.
#[derive(Debug, Error)]
pub enum MailError {
    /// Worth retrying (connection refused, timeout, 4xx).
    #[error("transient: {0}")]
    Transient(String),
    /// Retrying cannot help (5xx, bad address).
    #[error("permanent: {0}")]
    Permanent(String),
}

/// An SMTP sender with the node's settings.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    pub settings: EmailConfig,
}

impl Mailer {
    pub fn new(cfg: &EmailConfig) -> Result<Mailer, MailError> {
        let bad = |what: &str, e: String| MailError::Permanent(format!("{what}: {e}"));
        let builder = match cfg.tls {
            TlsMode::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&cfg.host)
                .map_err(|e| bad("EMAIL_HOST", e.to_string()))?,
            TlsMode::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&cfg.host)
                .map_err(|e| bad("EMAIL_HOST", e.to_string()))?,
            TlsMode::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.host),
        };
        let mut builder = builder.port(cfg.port).timeout(Some(cfg.timeout));
        if let (Some(user), Some(password)) = (&cfg.user, &cfg.password) {
            builder = builder.credentials(Credentials::new(user.clone(), password.0.clone()));
        }
        let from: Mailbox = cfg
            .from
            .parse()
            .map_err(|e: lettre::address::AddressError| bad("EMAIL_FROM", e.to_string()))?;
        let to = cfg
            .to
            .iter()
            .map(|a| {
                a.parse::<Mailbox>()
                    .map_err(|e| bad("EMAIL_TO", e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Mailer {
            transport: builder.build(),
            from,
            to,
            settings: cfg.clone(),
        })
    }

    /// Sends one message.
    pub async fn send(&self, subject: &str, body: String) -> Result<(), MailError> {
        let mut message = Message::builder().from(self.from.clone()).subject(subject);
        for to in &self.to {
            message = message.to(to.clone());
        }
        let message = message
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| MailError::Permanent(format!("cannot build the message: {e}")))?;
        // lettre's own timeout covers each SMTP step; this bounds the whole send.
        let whole = self.settings.timeout * 3;
        match tokio::time::timeout(whole, self.transport.send(message)).await {
            Err(_) => Err(MailError::Transient(format!(
                "SMTP send timed out after {whole:?}"
            ))),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.is_permanent() => Err(MailError::Permanent(e.to_string())),
            Ok(Err(e)) => Err(MailError::Transient(e.to_string())),
        }
    }
}

fn sent_key(node: &str, id: &str) -> String {
    format!("kv:{node}:mail:sent:{id}")
}

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
        .arg(sent_key(&node, &job.id))
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
            let minute_key = format!("kv:{node}:mail:window:{minute}");
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
                    .arg(format!("kv:{node}:mail:digest"))
                    .arg(key)
                    .ignore()
                    .cmd("LTRIM")
                    .arg(format!("kv:{node}:mail:digest"))
                    .arg(-DIGEST_KEYS_MAX)
                    .arg(-1)
                    .ignore()
                    .cmd("INCR")
                    .arg(format!("kv:{node}:mail:digest_count"))
                    .ignore()
                    .cmd("SET")
                    .arg(sent_key(&node, &job.id))
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
                .arg(format!("kv:{node}:mail:digest"))
                .arg(0)
                .arg(DIGEST_KEYS_SHOWN_MAX as isize - 1)
                .cmd("GETDEL")
                .arg(format!("kv:{node}:mail:digest_count"))
                .cmd("DEL")
                .arg(format!("kv:{node}:mail:digest"))
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
        .arg(sent_key(&node, &job.id))
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
pub async fn mail_and_settle(
    mailer: &Mailer,
    queues: &JobQueues,
    job: MailJob,
) -> Result<(), crate::jobs::QueueError> {
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
    crate::jobs::retry_or_dead_letter(
        queues,
        crate::jobs::EMAIL,
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
