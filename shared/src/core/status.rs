//! What one node tells the dashboard about itself: [`NodeStatus`], the
//! answer of `/internal/status`, and the [`RequestWindow`] behind its
//! request rate and latency.
//!
//! The window is a fixed ring of [`REQUEST_BUCKETS_KEPT`] buckets of
//! [`REQUEST_BUCKET_MS`] each; a bucket is reused once its time has passed
//! out of the window, so memory is bounded whatever the traffic. Time is
//! passed in (`now_ms`), as everywhere in the core.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::limits::{REQUEST_BUCKET_MS, REQUEST_BUCKETS_KEPT};
use super::membership::Health;

/// Upper bounds of the latency histogram of a bucket, in milliseconds; a
/// last, open bucket holds what is slower.
pub const LATENCY_BOUNDS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000];

/// What a request was, for the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestClass {
    /// A client's data request (`/kv/...`, `/snapshot/`, `/restore/`):
    /// counted, timed, and an error when answered 5xx.
    Client,
    /// A peer's call on `/internal/*`: counted only.
    Internal,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Which bucket of time this slot holds (`time_ms / REQUEST_BUCKET_MS`).
    index: u64,
    requests: u64,
    errors: u64,
    internal: u64,
    latency_us_sum: u64,
    latency_us_max: u64,
    latency_counts: [u64; LATENCY_BOUNDS_MS.len() + 1],
}

/// Requests, errors and latency over the last
/// `REQUEST_BUCKETS_KEPT * REQUEST_BUCKET_MS`, bounded in memory.
#[derive(Debug, Clone)]
pub struct RequestWindow {
    slots: [Slot; REQUEST_BUCKETS_KEPT],
}

impl Default for RequestWindow {
    fn default() -> Self {
        RequestWindow {
            slots: [Slot::default(); REQUEST_BUCKETS_KEPT],
        }
    }
}

/// One bucket of the window, as sent to the dashboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestBucket {
    pub start_ms: u64,
    /// Client requests.
    pub requests: u64,
    /// Client requests answered 5xx.
    pub errors: u64,
    /// Internal calls from peers.
    pub internal: u64,
    pub latency_ms_avg: f64,
    /// Upper bound of the histogram bucket holding the median (at most the max).
    pub latency_ms_p50: f64,
    /// The same for the 99th percentile.
    pub latency_ms_p99: f64,
    pub latency_ms_max: f64,
}

/// The window as sent: the buckets that saw traffic, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestSeries {
    pub bucket_ms: u64,
    pub buckets_kept: usize,
    pub buckets: Vec<RequestBucket>,
}

impl RequestWindow {
    /// Counts one request answered at `now_ms` after `latency_us`.
    pub fn record(&mut self, now_ms: u64, class: RequestClass, error: bool, latency_us: u64) {
        let index = now_ms / REQUEST_BUCKET_MS;
        // `index % len` is below `len`: the slot exists.
        let slot = &mut self.slots[(index % REQUEST_BUCKETS_KEPT as u64) as usize];
        if slot.index != index {
            // The slot held a bucket that has left the window (or, after the
            // wall clock stepped back, one from the future): start afresh.
            *slot = Slot {
                index,
                ..Slot::default()
            };
        }
        match class {
            RequestClass::Internal => slot.internal += 1,
            RequestClass::Client => {
                slot.requests += 1;
                slot.errors += u64::from(error);
                slot.latency_us_sum = slot.latency_us_sum.saturating_add(latency_us);
                slot.latency_us_max = slot.latency_us_max.max(latency_us);
                let at = LATENCY_BOUNDS_MS
                    .iter()
                    .position(|bound| latency_us <= bound * 1000)
                    .unwrap_or(LATENCY_BOUNDS_MS.len());
                slot.latency_counts[at] += 1;
            }
        }
    }

    /// The buckets within the window that ends at `now_ms`, oldest first.
    pub fn series(&self, now_ms: u64) -> RequestSeries {
        let newest = now_ms / REQUEST_BUCKET_MS;
        let oldest = newest.saturating_sub(REQUEST_BUCKETS_KEPT as u64 - 1);
        let mut slots: Vec<&Slot> = self
            .slots
            .iter()
            .filter(|s| (oldest..=newest).contains(&s.index))
            .filter(|s| s.requests > 0 || s.internal > 0)
            .collect();
        slots.sort_by_key(|s| s.index);
        RequestSeries {
            bucket_ms: REQUEST_BUCKET_MS,
            buckets_kept: REQUEST_BUCKETS_KEPT,
            buckets: slots.into_iter().map(bucket).collect(),
        }
    }
}

fn bucket(slot: &Slot) -> RequestBucket {
    let max_ms = slot.latency_us_max as f64 / 1000.0;
    RequestBucket {
        start_ms: slot.index * REQUEST_BUCKET_MS,
        requests: slot.requests,
        errors: slot.errors,
        internal: slot.internal,
        latency_ms_avg: if slot.requests == 0 {
            0.0
        } else {
            slot.latency_us_sum as f64 / 1000.0 / slot.requests as f64
        },
        latency_ms_p50: quantile_ms(slot, 0.50).min(max_ms),
        latency_ms_p99: quantile_ms(slot, 0.99).min(max_ms),
        latency_ms_max: max_ms,
    }
}

/// Upper bound of the histogram bucket that holds quantile `q` (the open
/// last bucket answers `f64::INFINITY`, which the caller caps at the max).
fn quantile_ms(slot: &Slot, q: f64) -> f64 {
    if slot.requests == 0 {
        return 0.0;
    }
    let rank = ((slot.requests as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, count) in slot.latency_counts.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return LATENCY_BOUNDS_MS
                .get(i)
                .map_or(f64::INFINITY, |bound| *bound as f64);
        }
    }
    f64::INFINITY
}

/// How one node sees another (or itself).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerSeen {
    /// The failure detector's view (`up` for the node itself).
    pub health: Health,
    pub last_seen_ms: Option<u64>,
    /// What the heartbeat job last wrote (`node_status:<node>`), if any.
    pub heartbeat: Option<String>,
    pub heartbeat_last_seen_ms: Option<u64>,
}

/// One job queue's counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueDepth {
    pub queue: String,
    pub depth: u64,
    pub in_flight: u64,
    pub retrying: u64,
    pub workers: u64,
}

/// The node's background work: where it runs and how much waits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobsSummary {
    /// `queue` (workers run jobs from Redis), `in-process` or `none`.
    pub mode: String,
    #[serde(default)]
    pub queues: Vec<QueueDepth>,
    pub dead_letters: Option<u64>,
    /// A code when the queues did not answer (details in the node's log).
    pub error: Option<String>,
}

/// The start-up restore, without error text.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RestoreSummary {
    /// `idle`, `restoring`, `ready`, `partial` or `failed`.
    pub state: String,
    pub attempt: Option<u32>,
    /// Peers not synced yet.
    #[serde(default)]
    pub missing: Vec<String>,
    /// Records stored by the restore so far.
    pub stored: Option<u64>,
    pub retry_in_ms: Option<u64>,
}

/// The clock fence: whether this node refuses to coordinate writes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClockSummary {
    pub fenced: bool,
    pub peers_measured: usize,
    pub median_offset_ms: i64,
    pub drift_max_ms: u64,
}

/// One node's answer to `/internal/status`: what the dashboard shows of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: String,
    pub now_ms: u64,
    /// Every node of the cluster, as this one sees it.
    pub peers: BTreeMap<String, PeerSeen>,
    /// Records held, tombstones included (`None`: the store did not answer).
    pub records: Option<u64>,
    /// Hints this node keeps, per owner.
    pub hints_held: BTreeMap<String, u64>,
    pub jobs: JobsSummary,
    pub restore: RestoreSummary,
    pub clock: ClockSummary,
    pub requests: RequestSeries,
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: u64 = REQUEST_BUCKET_MS;

    #[test]
    fn buckets_sum_what_they_saw_and_estimate_quantiles() {
        let mut w = RequestWindow::default();
        for latency_us in [500, 800, 3_000, 40_000] {
            w.record(5 * B + 1, RequestClass::Client, false, latency_us);
        }
        w.record(5 * B + 2, RequestClass::Client, true, 7_000_000);
        w.record(5 * B + 3, RequestClass::Internal, false, 1);
        let s = w.series(5 * B + 9);
        assert_eq!(s.buckets.len(), 1);
        let b = &s.buckets[0];
        assert_eq!(
            (b.start_ms, b.requests, b.errors, b.internal),
            (5 * B, 5, 1, 1)
        );
        assert_eq!(b.latency_ms_p50, 5.0, "3 ms falls in the 5 ms bucket");
        assert_eq!(
            b.latency_ms_p99, 7000.0,
            "the open bucket is capped at the max"
        );
        assert_eq!(b.latency_ms_max, 7000.0);
        assert!((b.latency_ms_avg - 7_044_300.0 / 5_000.0).abs() < 1e-9);
    }

    #[test]
    fn old_buckets_leave_the_window_and_their_slots_are_reused() {
        let mut w = RequestWindow::default();
        let kept = REQUEST_BUCKETS_KEPT as u64;
        w.record(B, RequestClass::Client, false, 10);
        w.record(2 * B, RequestClass::Client, false, 10);
        let now = (kept + 1) * B;
        let s = w.series(now);
        assert_eq!(
            s.buckets.iter().map(|b| b.start_ms).collect::<Vec<_>>(),
            vec![2 * B],
            "the bucket at B is older than the window"
        );
        // Same slot as the bucket at B: it starts afresh.
        w.record((kept + 1) * B, RequestClass::Client, false, 10);
        let s = w.series(now);
        assert_eq!(s.buckets.len(), 2);
        assert_eq!(s.buckets[1].requests, 1);
        assert!(s.buckets.len() <= REQUEST_BUCKETS_KEPT);
    }

    #[test]
    fn a_status_round_trips_through_json() {
        let mut w = RequestWindow::default();
        w.record(B, RequestClass::Client, false, 1200);
        let status = NodeStatus {
            node: "node1".into(),
            now_ms: B,
            peers: BTreeMap::from([(
                "node2".into(),
                PeerSeen {
                    health: Health::Down,
                    last_seen_ms: Some(3),
                    heartbeat: Some("down".into()),
                    heartbeat_last_seen_ms: None,
                },
            )]),
            records: Some(4),
            hints_held: BTreeMap::from([("node2".into(), 2)]),
            jobs: JobsSummary {
                mode: "queue".into(),
                ..JobsSummary::default()
            },
            restore: RestoreSummary {
                state: "ready".into(),
                ..RestoreSummary::default()
            },
            clock: ClockSummary::default(),
            requests: w.series(B),
        };
        let text = serde_json::to_string(&status).unwrap();
        assert!(text.contains(r#""health":"down""#), "{text}");
        assert_eq!(serde_json::from_str::<NodeStatus>(&text).unwrap(), status);
    }
}
