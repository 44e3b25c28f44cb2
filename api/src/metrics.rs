//! Request metrics and the Prometheus text exposition of `GET /metrics`.
//!
//! Hand-rolled (counters and fixed-bucket histograms behind one mutex) to
//! keep the dependency tree small; label sets are bounded because routes are
//! the router's matched patterns, never raw paths.
//!
//! The same records feed the dashboard's request window (the last ten
//! minutes in 10 s buckets, bounded: see `shared::core::status`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use shared::core::histogram::Histogram;
use shared::core::membership::Health;
use shared::core::status::{RequestClass, RequestSeries, RequestWindow};
use shared::node::COUNTERS;

use crate::state::AppState;

/// Distinct (route, method, status) series kept; more are folded into "other".
const SERIES_MAX: usize = 512;

/// A series' labels: matched route, method, status.
type SeriesKey = (String, String, u16);

/// Request counts and latencies per route, method and status, and the
/// recent request window the dashboard shows.
#[derive(Default, Clone)]
pub struct Metrics {
    series: Arc<Mutex<BTreeMap<SeriesKey, Histogram>>>,
    window: Arc<Mutex<RequestWindow>>,
    in_flight: Arc<AtomicU64>,
}

/// One request in flight, counted until it is dropped (answered or
/// cancelled).
pub struct InFlight(Arc<AtomicU64>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a matched route counts in the request window: the data routes as
/// client requests, `/internal/*` as peer calls, the rest (health, metrics,
/// the dashboard and its polling) not at all.
fn request_class(route: &str) -> Option<RequestClass> {
    if route.starts_with("/internal/") {
        Some(RequestClass::Internal)
    } else if route.starts_with("/kv")
        || route.starts_with("/snapshot")
        || route.starts_with("/restore")
    {
        Some(RequestClass::Client)
    } else {
        None
    }
}

impl Metrics {
    /// The request window as it stands at `now_ms`.
    pub fn request_series(&self, now_ms: u64) -> RequestSeries {
        self.window
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .series(now_ms)
    }

    fn observe_window(&self, route: &str, status: u16, elapsed_s: f64) {
        if let Some(class) = request_class(route) {
            let latency_us = (elapsed_s * 1e6) as u64;
            self.window
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record(shared::clock::now_ms(), class, status >= 500, latency_us);
        }
    }

    fn observe(&self, route: String, method: String, status: u16, elapsed_s: f64) {
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let mut key = (route, method, status);
        if !series.contains_key(&key) && series.len() >= SERIES_MAX {
            key = ("other".to_owned(), "other".to_owned(), 0);
        }
        series.entry(key).or_default().observe(elapsed_s);
    }

    fn render(&self, out: &mut String) {
        gauge(
            out,
            "kv_http_requests_in_flight",
            "HTTP requests received and not answered yet (this one included).",
            "gauge",
            &[(String::new(), self.in_flight.load(Ordering::Relaxed) as f64)],
        );
        let series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        out.push_str(
            "# HELP kv_http_requests_total HTTP requests served, by route, method and status.\n",
        );
        out.push_str("# TYPE kv_http_requests_total counter\n");
        for ((route, method, status), s) in series.iter() {
            let _ = writeln!(
                out,
                "kv_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {}",
                s.count
            );
        }
        out.push_str("# HELP kv_http_request_duration_seconds HTTP request latency, by route, method and status.\n");
        out.push_str("# TYPE kv_http_request_duration_seconds histogram\n");
        for ((route, method, status), s) in series.iter() {
            let labels = format!("route=\"{route}\",method=\"{method}\",status=\"{status}\"");
            s.render(out, "kv_http_request_duration_seconds", &labels);
        }
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn enter(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(&self.in_flight))
    }

    /// Records one answered request under its matched route (see
    /// `middleware::observe_request`, which times every request).
    pub fn record(&self, route: String, method: String, status: u16, elapsed_s: f64) {
        self.observe_window(&route, status, elapsed_s);
        self.observe(route, method, status, elapsed_s);
    }
}

fn gauge(out: &mut String, name: &str, help: &str, kind: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// `GET /metrics`: Prometheus text format. Its state is the node's (for
/// the coordinator's counters) and the request series kept by [`track`].
pub async fn render(State((state, metrics)): State<(AppState, Metrics)>) -> Response {
    let coord = &state.coord;
    let mut out = String::with_capacity(8 * 1024);
    metrics.render(&mut out);

    // One table of counters (`shared::node::COUNTERS`), summed over every
    // process of this node: work done by its workers shows here too.
    let values = coord.counters().await;
    for ((name, help), (_, value)) in COUNTERS.iter().zip(values) {
        gauge(
            &mut out,
            &format!("kv_{name}_total"),
            help,
            "counter",
            &[(String::new(), value as f64)],
        );
    }
    out.push_str("# HELP kv_peer_request_duration_seconds Latency of this process's calls to its peers, by peer and route.\n");
    out.push_str("# TYPE kv_peer_request_duration_seconds histogram\n");
    for ((peer, route), h) in coord.peer_latency() {
        let labels = format!("peer=\"{peer}\",route=\"{route}\"");
        h.render(&mut out, "kv_peer_request_duration_seconds", &labels);
    }
    gauge(
        &mut out,
        "kv_restore_ready",
        "1 once this node's start-up restore synced every peer (0 while restoring, partial or failed).",
        "gauge",
        &[(
            String::new(),
            if matches!(
                coord.restore_state(),
                shared::node::RestoreState::Ready { .. }
            ) {
                1.0
            } else {
                0.0
            },
        )],
    );
    let clock = coord.clock_view();
    gauge(
        &mut out,
        "kv_clock_fenced",
        "1 when this node's clock is beyond the drift bound from its peers' (writes refused).",
        "gauge",
        &[(String::new(), if clock.fenced { 1.0 } else { 0.0 })],
    );
    gauge(
        &mut out,
        "kv_clock_offset_ms",
        "Median of the peers' clocks minus this node's, from probes.",
        "gauge",
        &[(String::new(), clock.median_offset_ms as f64)],
    );

    let peers: Vec<(String, f64)> = coord
        .config()
        .nodes
        .keys()
        .map(|n| {
            (
                format!("node=\"{n}\""),
                if coord.peer_health(n) == Health::Up {
                    1.0
                } else {
                    0.0
                },
            )
        })
        .collect();
    gauge(
        &mut out,
        "kv_peer_up",
        "1 when this node last saw the peer answer.",
        "gauge",
        &peers,
    );
    if let Ok(records) = coord.store().record_count().await {
        gauge(
            &mut out,
            "kv_records",
            "Records held by this node, tombstones included.",
            "gauge",
            &[(String::new(), records as f64)],
        );
    }

    if let Some(queues) = coord.queues().filter(|_| coord.config().background_sync) {
        if let Ok(stats) = queues.stats().await {
            let by = |f: fn(&shared::queue::QueueStats) -> u64| -> Vec<(String, f64)> {
                stats
                    .iter()
                    .map(|s| (format!("queue=\"{}\"", s.queue), f(s) as f64))
                    .collect()
            };
            gauge(
                &mut out,
                "kv_queue_depth",
                "Jobs ready to run.",
                "gauge",
                &by(|s| s.depth),
            );
            gauge(
                &mut out,
                "kv_queue_in_flight",
                "Jobs held by a worker.",
                "gauge",
                &by(|s| s.in_flight),
            );
            gauge(
                &mut out,
                "kv_queue_retrying",
                "Jobs waiting for a retry.",
                "gauge",
                &by(|s| s.retrying),
            );
            gauge(
                &mut out,
                "kv_queue_workers",
                "Live workers on the queue.",
                "gauge",
                &by(|s| s.workers),
            );
        }
        if let Ok(c) = queues.counters().await {
            gauge(
                &mut out,
                "kv_jobs_delivered_total",
                "Replication jobs delivered by workers.",
                "counter",
                &[(String::new(), c.delivered as f64)],
            );
            gauge(
                &mut out,
                "kv_jobs_retried_total",
                "Replication job runs that failed and were retried.",
                "counter",
                &[(String::new(), c.retried as f64)],
            );
            gauge(
                &mut out,
                "kv_jobs_dead_total",
                "Jobs dead-lettered after their last attempt.",
                "counter",
                &[(String::new(), c.dead as f64)],
            );
            gauge(
                &mut out,
                "kv_replication_lag_ms_last",
                "Time from a write to its background delivery, last job.",
                "gauge",
                &[(String::new(), c.lag_ms_last as f64)],
            );
            gauge(
                &mut out,
                "kv_mail_sent_total",
                "Notification e-mails sent.",
                "counter",
                &[(String::new(), c.mail_sent as f64)],
            );
            gauge(
                &mut out,
                "kv_mail_failed_total",
                "Notification sends that failed (then retried or dead-lettered).",
                "counter",
                &[(String::new(), c.mail_failed as f64)],
            );
            gauge(
                &mut out,
                "kv_mail_digested_total",
                "Notifications over the rate bound, summed up in a digest.",
                "counter",
                &[(String::new(), c.mail_digested as f64)],
            );
            let avg = if c.delivered > 0 {
                c.lag_ms_sum as f64 / c.delivered as f64
            } else {
                0.0
            };
            gauge(
                &mut out,
                "kv_replication_lag_ms_avg",
                "Time from a write to its background delivery, average.",
                "gauge",
                &[(String::new(), avg)],
            );
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
