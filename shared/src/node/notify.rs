//! Notification e-mails: one per acknowledged client write (and alerts),
//! pushed on the node's mail queue, or (background sync off) handed to the
//! in-process sender (`work::mail::run_inline`). Never waits for SMTP.

use tracing::warn;

use super::Node;
use super::stats::Stats;
use crate::core::mail::{MailJob, MailKind, PREVIEW_CHARS_MAX, key_notifies, preview};
use crate::core::record::Record;

impl Node {
    /// Queues (or, background sync off, sends in-process) one notification.
    /// Never waits for SMTP; a failure to queue is logged and counted.
    pub async fn notify(&self, job: MailJob) {
        if self.cfg.background_sync {
            let Some(queues) = &self.queues else {
                return;
            };
            match queues.push_mail(job, None).await {
                Ok(()) => Stats::add(&self.stats.mail_enqueued, 1),
                Err(error) => {
                    Stats::add(&self.stats.mail_not_queued, 1);
                    warn!(%error, "cannot queue a notification");
                }
            }
            return;
        }
        let Some(sender) = &self.inline_mail else {
            return;
        };
        match sender.try_send(job) {
            Ok(()) => Stats::add(&self.stats.mail_enqueued, 1),
            Err(error) => {
                Stats::add(&self.stats.mail_not_queued, 1);
                warn!(%error, "notification not sent: too many in flight");
            }
        }
    }

    /// The notification of an acknowledged client write, if one is due.
    pub(crate) fn write_mail(&self, key: &str, record: &Record) -> Option<MailJob> {
        let email = self.cfg.email.as_ref()?;
        if (record.is_tombstone() && !email.on_delete) || !key_notifies(&email.key_patterns, key) {
            return None;
        }
        Some(MailJob {
            id: format!("w-{}", record.version),
            node: self.cfg.node_id.clone(),
            time_ms: record.version.ts.wall_ms,
            kind: MailKind::Write {
                key: key.to_owned(),
                preview: record
                    .value
                    .as_ref()
                    .map(|v| preview(v.get(), PREVIEW_CHARS_MAX)),
                version: record.version.to_string(),
            },
            attempt: 0,
        })
    }
}
