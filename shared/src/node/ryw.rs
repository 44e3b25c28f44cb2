//! Read-your-writes with a token: a read with `min_version` returns a record
//! at least that new, or says it could not.
//!
//! A write's answer carries its version. A sloppy-quorum write may live only
//! on a fallback (as a hint) or on the coordinator (as a hint kept for an
//! unreachable owner) until handoff; a strict read that asks R replicas can
//! miss it. With the token, the read first runs as usual; when the newest
//! record it found is older than the token, it asks every node for its own
//! record and the hints it keeps for the key, takes the newest at least as
//! new as the token, and sends it to the key's replicas (read repair: the
//! hint need not wait for its delivery round). It tries again, with a short
//! backoff, until [`MIN_VERSION_WAIT_MS`] has passed, then answers 503.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::debug;

use super::stats::Stats;
use super::{CoordError, Coordinator, ReadReport};
use crate::core::quorum::Consistency;
use crate::core::record::{Record, Version};
use crate::core::ryw::{TokenAge, token_age};

/// How long a read with `min_version` keeps looking before it answers 503.
pub const MIN_VERSION_WAIT_MS: u64 = 3_000;
/// First pause between two looks; it doubles up to [`MIN_VERSION_PAUSE_MAX_MS`].
const MIN_VERSION_PAUSE_MS: u64 = 50;
const MIN_VERSION_PAUSE_MAX_MS: u64 = 400;

impl Coordinator {
    /// [`Coordinator::read`] that returns a record at least as new as `min`
    /// (a version a write answered), looking at every node's record and
    /// hints when the replicas asked do not have it yet.
    pub async fn read_at_least(
        self: &Arc<Self>,
        key: String,
        consistency: Consistency,
        min: Version,
    ) -> Result<ReadReport, CoordError> {
        let grace_ms = u64::try_from(self.cfg.tombstone_grace.as_millis()).unwrap_or(u64::MAX);
        let age = token_age(
            &min,
            self.replicas.io.reference_now_ms(),
            self.cfg.clock_drift_ms_max,
            grace_ms,
        );
        if age == TokenAge::Future {
            return Err(CoordError::FutureMinVersion {
                min: min.to_string(),
            });
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(MIN_VERSION_WAIT_MS);
        let mut pause_ms = MIN_VERSION_PAUSE_MS;
        let mut newest_seen: Option<Version> = None;
        loop {
            let mut report = self.read(key.clone(), consistency).await?;
            if report.record.as_ref().is_some_and(|r| r.version >= min) {
                return Ok(report);
            }
            newest_seen = newest_seen.max(report.record.as_ref().map(|r| r.version.clone()));
            if let Some(found) = self.find_at_least(&key, &min).await {
                Stats::add(&self.stats.min_version_found_beyond_replicas, 1);
                for node in &report.replicas {
                    self.spawn_repair(node.clone(), key.clone(), found.clone());
                }
                report.repaired = report.replicas.clone();
                report.record = Some(found);
                return Ok(report);
            }
            if age == TokenAge::BeyondGrace && report.record.is_none() {
                // The token may name a deletion whose tombstone has been
                // collected: missing is the newest state there is.
                return Ok(report);
            }
            if tokio::time::Instant::now() >= deadline {
                Stats::add(&self.stats.unavailable, 1);
                return Err(CoordError::MinVersion {
                    min: min.to_string(),
                    newest: newest_seen.map(|v| v.to_string()),
                    waited_ms: MIN_VERSION_WAIT_MS,
                });
            }
            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            pause_ms = (pause_ms * 2).min(MIN_VERSION_PAUSE_MAX_MS);
        }
    }

    /// The newest record at least as new as `min` that any node holds for
    /// `key`, as data or as a hint (versions beyond the drift bound left out).
    async fn find_at_least(self: &Arc<Self>, key: &str, min: &Version) -> Option<Record> {
        let mut asks = JoinSet::new();
        let nodes: Vec<String> = self.view().topology.nodes.keys().cloned().collect();
        for node in nodes {
            let this = Arc::clone(self);
            let key = key.to_owned();
            asks.spawn(async move {
                if node == this.cfg.node_id {
                    this.local_view(&key, false)
                        .await
                        .map_err(|e| e.to_string())
                } else {
                    let io = &this.replicas.io;
                    io.tracked(&node, io.peers.explain(&node, &key, false))
                        .await
                        .map_err(|e| e.to_string())
                }
            });
        }
        let reference_ms = self.replicas.io.reference_now_ms();
        let clock = &self.replicas.io.clock;
        let mut best: Option<Record> = None;
        while let Some(joined) = asks.join_next().await {
            let view = match joined {
                Ok(Ok(view)) => view,
                Ok(Err(error)) => {
                    debug!(%key, %error, "min_version: a node did not answer");
                    continue;
                }
                Err(error) => {
                    debug!(%key, %error, "min_version: a look failed");
                    continue;
                }
            };
            let candidates = view
                .record
                .into_iter()
                .chain(view.hints.into_iter().map(|h| h.record));
            for record in candidates {
                if record.version >= *min
                    && clock.check_at(record.version.ts, reference_ms).is_ok()
                    && best.as_ref().is_none_or(|b| record > *b)
                {
                    best = Some(record);
                }
            }
        }
        best
    }
}
