//! The SMTP sender (lettre). The mail job function is in [`crate::work::mail`].
//!
//! E-mail notifications over SMTP, sent as jobs.
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

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use thiserror::Error;

use crate::config::{EmailConfig, TlsMode};

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
