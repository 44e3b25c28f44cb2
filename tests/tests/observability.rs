//! What operators look at: `/metrics` read by the reference Prometheus
//! text parser, the Grafana dashboard's queries against what a node
//! serves, JSON log lines carrying the request's span, and the request id.
//! Real redis-server and api processes.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use kv_tests::{Cluster, Options, wait_for};
use serde_json::{Value, json};

/// Debian's Python, where `python3-prometheus-client` installs the parser
/// (the `python3` first on PATH may be another installation).
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// Parses Prometheus text with `prometheus_client.parser` (the reference
/// implementation, strict about the format) and returns every sample name.
fn parse_with_reference_parser(text: &str) -> BTreeSet<String> {
    let script = "import sys\n\
        from prometheus_client.parser import text_string_to_metric_families\n\
        for family in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   for sample in family.samples:\n\
        \x20       print(sample.name)\n";
    let mut child = Command::new(SYSTEM_PYTHON)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (apt-get install -y python3-prometheus-client)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the reference parser refused /metrics (is python3-prometheus-client installed?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Metric names a PromQL expression refers to (identifiers followed by `{`,
/// `[` or `)`, that start with `kv_`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if expr[i..].starts_with("kv_") && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric()) {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(expr.len(), |n| i + n);
            out.push(expr[i..end].to_owned());
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_the_dashboard_matches_and_logs_carry_the_request() {
    let c = Cluster::start(
        Options {
            workers: 1,
            ..Options::default()
        }
        .env("KV_LOG_FORMAT", "json")
        .env("RUST_LOG", "info,api=debug"),
    )
    .await;
    for n in 0..20 {
        let (status, body) = c.put(n % 3, &format!("o-{n}"), json!(n)).await;
        assert_eq!(status, 200, "{body}");
        let (status, _) = c.get((n + 1) % 3, &format!("o-{n}")).await;
        assert_eq!(status, 200);
    }
    // A request with the client's id: echoed, and on the span of its log.
    let resp = c
        .http
        .get(format!("{}/kv/?key=o-1", c.url(0)))
        .header("x-request-id", "req-from-test-1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("req-from-test-1")
    );
    let made = c
        .http
        .get(format!("{}/health", c.url(0)))
        .send()
        .await
        .unwrap();
    let made_id = made.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(made_id.starts_with("node1-"), "{made_id}");

    // The reference parser reads every line of /metrics, and the families
    // operators need are there, with data.
    let text = c
        .http
        .get(format!("{}/metrics", c.url(0)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let samples = parse_with_reference_parser(&text);
    for name in [
        "kv_http_requests_total",
        "kv_http_requests_in_flight",
        "kv_http_request_duration_seconds_bucket",
        "kv_peer_request_duration_seconds_bucket",
        "kv_peer_request_duration_seconds_count",
        "kv_writes_total",
        "kv_clock_fenced",
        "kv_restore_ready",
        "kv_queue_depth",
    ] {
        assert!(samples.contains(name), "{name} missing from /metrics");
    }
    assert!(
        text.lines().any(|l| l
            .starts_with("kv_peer_request_duration_seconds_count{peer=\"node2\",route=\"apply\"}")),
        "per-peer latency of applies: {text}"
    );

    // Every metric the Grafana dashboard queries is one a node serves.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/grafana/kvstore.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            for name in metric_names(target["expr"].as_str().unwrap()) {
                queried += 1;
                assert!(
                    samples.contains(&name),
                    "panel {:?} queries {name}, which /metrics does not serve",
                    panel["title"]
                );
            }
        }
    }
    assert!(queried > 20, "{queried} metric references");

    // JSON log lines: the request span's fields ride along.
    let line: Value = wait_for(
        "the request's log line",
        Duration::from_secs(10),
        || async {
            c.api_log(0)
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v["span"]["request_id"] == "req-from-test-1")
        },
    )
    .await;
    assert_eq!(line["span"]["node"], "node1", "{line}");
    assert_eq!(line["span"]["route"], "/kv/", "{line}");
    let hash = line["span"]["key_hash"].as_str().unwrap_or_default();
    assert!(
        hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()),
        "{line}"
    );
}
