//! `make scale`: how repair costs grow with the data. Real processes: three
//! nodes (N = 3, so every node holds every key), each with its own Redis.
//!
//! For each size in `SCALE_RECORDS` (default `100000,1000000`), the same
//! records are loaded straight into every node's Redis (through the store's
//! own apply script, so the hash trees are kept as a write keeps them), then:
//!
//! - one anti-entropy round between identical nodes (`POST /restore/?from=`):
//!   time, bytes of every answer, leaves compared;
//! - the same after one record changed on one node only: exactly that
//!   record moves;
//! - Redis memory per record, and the resident memory of each process.
//!
//! Then, at `RESTORE_RECORDS` (default 2000000; 0 skips it), a node whose
//! Redis is wiped restarts and restores itself from its peers: the time to
//! `ready`, records per second, and a check that it reports `ready` only
//! once it holds every record.
//!
//! Binaries from `KV_BIN_DIR` (the Makefile points it at target/release).
//! Exits non-zero when a check fails.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic
)]

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_tests::{Cluster, Options, wait_for};
use serde_json::Value;
use serde_json::value::RawValue;
use shared::clock::now_ms;
use shared::config::Config;
use shared::core::hlc::Timestamp;
use shared::core::record::{Record, Version};
use shared::storage::{RedisStore, Store, connect_redis};

/// Records per apply call while loading.
const LOAD_BATCH: usize = 2_000;
/// Apply calls in flight per node while loading.
const LOAD_IN_FLIGHT: usize = 4;

fn sizes(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|n| *n > 0)
        .collect()
}

fn options() -> Options {
    Options {
        nodes: 3,
        appendfsync: "everysec",
        ..Options::default()
    }
    .env("KV_ANTI_ENTROPY_INTERVAL_S", "0")
    .env("KV_GC_INTERVAL_S", "0")
    .env("RUST_LOG", "warn")
}

async fn store_of(c: &Cluster, i: usize) -> Store {
    let url = c.redis_url(i);
    let cfg = Config::from_lookup(|name| (name == "REDIS_URL").then(|| url.clone()))
        .expect("redis config");
    let conn = connect_redis(&cfg).await.expect("redis");
    Store::Redis(RedisStore::new(conn, &c.nodes[i].id))
}

/// The record every node gets for key number `i` (100-byte values).
fn record(i: usize, wall_ms: u64) -> (String, Record) {
    let value = format!("\"{:0>98}\"", i);
    let version = Version::new(Timestamp::new(wall_ms, 0), "node1");
    (
        format!("scale-{i:09}"),
        Record::value(version, RawValue::from_string(value).expect("json")),
    )
}

/// Loads records `0..n` into the given nodes' stores, in parallel.
async fn load(c: &Cluster, nodes: &[usize], n: usize) -> Duration {
    let started = Instant::now();
    let wall_ms = now_ms().saturating_sub(60_000);
    let mut tasks = tokio::task::JoinSet::new();
    for &i in nodes {
        let store = Arc::new(store_of(c, i).await);
        for lane in 0..LOAD_IN_FLIGHT {
            let store = Arc::clone(&store);
            tasks.spawn(async move {
                let mut start = lane * LOAD_BATCH;
                while start < n {
                    let batch: Vec<(String, Record)> = (start..(start + LOAD_BATCH).min(n))
                        .map(|k| record(k, wall_ms))
                        .collect();
                    store.apply(&batch).await.expect("load batch");
                    start += LOAD_IN_FLIGHT * LOAD_BATCH;
                }
            });
        }
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("load task");
    }
    started.elapsed()
}

async fn redis_memory(c: &Cluster, i: usize) -> u64 {
    let mut conn = c.redis(i).await;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// One anti-entropy round on node 1 from node 2; the report and the time.
async fn round(c: &Cluster) -> (Value, Duration) {
    let started = Instant::now();
    let (status, report) = c
        .request(reqwest::Method::POST, 0, "/restore/?from=node2", None)
        .await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{report}");
    (report, took)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

async fn growth(n: usize, failures: &mut Vec<String>) {
    let c = Cluster::start(options()).await;
    let before = redis_memory(&c, 0).await;
    let loaded = load(&c, &[0, 1, 2], n).await;
    let per_record = (redis_memory(&c, 0).await.saturating_sub(before)) / n as u64;
    println!(
        "{n} records per node: loaded in {:.1} s; Redis memory {per_record} bytes per record",
        loaded.as_secs_f64()
    );
    let (report, took) = round(&c).await;
    let peer = &report["peers"][0];
    println!(
        "  identical nodes: anti-entropy round {:.3} s (node's own {} ms), answers {} bytes, {} records compared, {} leaves differing, {} received",
        took.as_secs_f64(),
        report["elapsed_ms"],
        report["answer_bytes"],
        peer["local_records"],
        report["leaves_differing"],
        report["received"]
    );
    if report["received"] != 0 || peer["error"] != Value::Null || peer["local_records"] != n {
        failures.push(format!("identical round at {n}: {report}"));
    }
    // One record newer on node 2 only: it, and only its leaf, moves.
    let (key, mut newer) = record(n / 2, now_ms());
    newer.version.node = "node2".to_owned();
    store_of(&c, 1)
        .await
        .apply(&[(key.clone(), newer)])
        .await
        .expect("apply");
    let (report, took) = round(&c).await;
    println!(
        "  one record changed: round {:.3} s, answers {} bytes, {} leaves differing, {} received, {} stored",
        took.as_secs_f64(),
        report["answer_bytes"],
        report["leaves_differing"],
        report["received"],
        report["stored"]
    );
    if report["stored"] != 1 || report["leaves_differing"] != 1 {
        failures.push(format!("one-record round at {n}: {report}"));
    }
    for i in 0..3 {
        let (api, workers) = c.pids(i);
        let api = api.map_or(0, rss_kib);
        let workers: Vec<u64> = workers.into_iter().map(rss_kib).collect();
        println!(
            "  node{} RSS: api {} KiB, workers {workers:?} KiB",
            i + 1,
            api
        );
    }
}

async fn wiped_restore(n: usize, failures: &mut Vec<String>) {
    let mut c = Cluster::start(options()).await;
    let loaded = load(&c, &[0, 1, 2], n).await;
    println!(
        "wiped-node restore at {n} records per node (loaded in {:.1} s)",
        loaded.as_secs_f64()
    );
    c.wipe_node(2).await;
    let started = Instant::now();
    c.restart_api(2).await;
    let early_ready = std::sync::Mutex::new(None);
    let state = wait_for(
        "the wiped node to restore",
        Duration::from_secs(1_800),
        || async {
            let view = c.cluster_view(2).await;
            let records = view["records"].as_u64().unwrap_or(0);
            let state = view["restore"]["state"].as_str().unwrap_or("").to_owned();
            if state == "ready" && records < n as u64 {
                early_ready.lock().unwrap().get_or_insert(records);
            }
            (state == "ready").then_some((view["restore"].clone(), records))
        },
    )
    .await;
    let took = started.elapsed();
    let (restore, records) = state;
    println!(
        "  ready after {:.1} s with {records} records ({:.0} records/s); {} received, {:.1} MiB of records, {:.1} MiB of answers",
        took.as_secs_f64(),
        records as f64 / took.as_secs_f64(),
        restore["report"]["received"],
        mib(restore["report"]["bytes_received"].as_u64().unwrap_or(0)),
        mib(restore["report"]["answer_bytes"].as_u64().unwrap_or(0))
    );
    if records != n as u64 {
        failures.push(format!("restored {records} of {n}"));
    }
    if let Some(seen) = *early_ready.lock().unwrap() {
        failures.push(format!(
            "reported ready while holding {seen} of {n} records"
        ));
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let mut failures = Vec::new();
    for n in sizes("SCALE_RECORDS", "100000,1000000") {
        growth(n, &mut failures).await;
    }
    for n in sizes("RESTORE_RECORDS", "2000000") {
        wiped_restore(n, &mut failures).await;
    }
    if failures.is_empty() {
        println!("scale: all checks passed");
        ExitCode::SUCCESS
    } else {
        for f in &failures {
            eprintln!("scale check failed: {f}");
        }
        ExitCode::FAILURE
    }
}
