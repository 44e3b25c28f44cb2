//! The clock's safety around a node: the fence (probes measure the peers'
//! clocks; a change of the fence is logged and alerted) and the high-water
//! mark persisted so a restarted clock resumes above its own stamps.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{CLOCK_PERSIST_INTERVAL_MS, CLOCK_RESUME_MARGIN_MS, Coordinator, Node};
use crate::core::mail::{MailJob, MailKind};
use crate::keyspace::clock_key;
use crate::storage::StoreError;

impl Coordinator {
    /// Marks the start-up probe round done: from now on client requests
    /// are served (see [`Coordinator::wait_clock_measured`]).
    pub fn mark_clock_measured(&self) {
        self.clock_measured.send_replace(true);
    }

    /// Whether the start-up probe round has measured the peers' clocks.
    pub fn clock_measured(&self) -> bool {
        *self.clock_measured.borrow()
    }

    /// Waits until the start-up probe round has measured the peers' clocks;
    /// whether it has. A node restarted with a clock far from its peers'
    /// must be fenced before it stamps or judges a client's version, so
    /// client requests wait for that round; internal routes do not (the
    /// peers' probes must be answered meanwhile: two nodes starting together
    /// would otherwise each wait for the other's answer until their peer
    /// timeout). The round is bounded by the peer timeouts (a probe, then
    /// perhaps a topology fetch), and so is this wait: past twice the
    /// request timeout plus the connect timeout, `false`.
    pub async fn wait_clock_measured(&self) -> bool {
        if self.clock_measured() {
            return true;
        }
        let within = self.cfg.peer_request_timeout * 2 + self.cfg.peer_connect_timeout;
        let mut measured = self.clock_measured.subscribe();
        matches!(
            tokio::time::timeout(within, measured.wait_for(|m| *m)).await,
            Ok(Ok(_))
        )
    }

    /// Probes the peers (measuring their clocks too), then reports a
    /// change of this node's clock fence: logged, and an alert e-mail.
    pub async fn probe_peers(&self, only_unhealthy: bool) {
        self.replicas.probe_peers(only_unhealthy).await;
        let view = self.clock_view();
        if self.was_fenced.swap(view.fenced, Ordering::Relaxed) == view.fenced {
            return;
        }
        let status = if view.fenced {
            tracing::error!(
                offset_ms = -view.median_offset_ms,
                drift_max_ms = view.drift_max_ms,
                "this node's clock is beyond the drift bound from its peers': it refuses to coordinate writes"
            );
            "clock_skew"
        } else {
            tracing::info!(
                "this node's clock is back within the drift bound: coordinating writes again"
            );
            "clock_ok"
        };
        if let Some(email) = &self.cfg.email
            && email.alerts
        {
            let now = crate::clock::now_ms();
            self.notify(MailJob {
                id: format!("alert-{}-{status}-{}", self.cfg.node_id, now / 1000),
                node: self.cfg.node_id.clone(),
                time_ms: now,
                kind: MailKind::Alert {
                    about: self.cfg.node_id.clone(),
                    status: status.to_owned(),
                },
                attempt: 0,
            })
            .await;
        }
    }
}

impl Node {
    /// Resumes the clock above its persisted high-water mark plus
    /// [`CLOCK_RESUME_MARGIN_MS`] (a restart with a wall clock behind it must
    /// not stamp below what this node issued before). Returns the mark.
    pub async fn resume_clock(&self) -> Result<u64, StoreError> {
        let mark = self
            .store()
            .get_plain(&clock_key(&self.cfg.node_id))
            .await?
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        let now = crate::clock::now_ms();
        let bound = now.saturating_add(self.cfg.clock_drift_ms_max);
        if mark.saturating_add(CLOCK_RESUME_MARGIN_MS) > bound {
            // A mark from the future: this node ran with a clock ahead of its
            // peers' before (it was fenced, or its stamps were refused).
            // Resuming above it would make every later stamp one the peers
            // refuse, for as long as the clock was ahead: start from the wall
            // clock instead, and say so.
            tracing::warn!(
                mark_ms = mark,
                ahead_ms = mark.saturating_sub(now),
                "the persisted clock mark is beyond the drift bound of the wall clock: not resumed above it"
            );
        } else if mark > 0 {
            self.replicas
                .io
                .clock
                .resume_above(mark.saturating_add(CLOCK_RESUME_MARGIN_MS));
        }
        Ok(mark)
    }

    /// Persists the clock's high-water mark every
    /// [`CLOCK_PERSIST_INTERVAL_MS`] (set-if-greater, so several processes
    /// of a node can share the key). Runs until the process ends.
    pub fn spawn_clock_persist(self: &Arc<Self>) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let key = clock_key(&this.cfg.node_id);
            let mut ticker =
                tokio::time::interval(std::time::Duration::from_millis(CLOCK_PERSIST_INTERVAL_MS));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut persisted = 0;
            loop {
                ticker.tick().await;
                let mark = this.replicas.io.clock.high_water_ms();
                if mark > persisted {
                    match this.store().raise(&key, mark).await {
                        Ok(()) => persisted = mark,
                        Err(error) => tracing::debug!(%error, "cannot persist the clock mark"),
                    }
                }
            }
        });
    }
}
