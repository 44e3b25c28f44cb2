//! `make bench`: this store against a 3-member etcd and a raw redis-server,
//! side by side in one run, with one HTTP load generator (wrk) for both HTTP
//! systems; then memory with 100k keys and restore figures.
//!
//! Environment: `BENCH_SECONDS` per point (default 10), `BENCH_REPEATS`
//! (default 3, the median is reported), `BENCH_CONNECTIONS` (default
//! "16 64"), `BENCH_MEMORY_KEYS` (default 100000; 0 skips that part; with
//! those keys loaded it also measures PUT and GET over all of them, so
//! `BENCH_MEMORY_KEYS=1000000` gives the 1M-key figures).
//! For before/after runs of one change: `BENCH_ONLY=store` measures this
//! store alone, `BENCH_APPENDFSYNC=always` then only its `always` PUT point,
//! and `BENCH_GET=0` leaves out its GET points.
//! `BENCH_TLS=1` runs the store with TLS everywhere (compare with a run
//! without it, `BENCH_ONLY=store`, for the cost of TLS).
//! `BENCH_ONLY=etcd` measures etcd's PUT and GET points alone.
//! `BENCH_YCSB=0` skips the YCSB-style mixed workloads (`ycsb.rs`; at the
//! largest of `BENCH_CONNECTIONS`, over `BENCH_YCSB_KEYS` keys, default
//! 100000).
//! Binaries come from `KV_BIN_DIR` (the Makefile points it at target/release).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_tests::{Cluster, Options, free_port, json, wait_for};

mod ycsb;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One measured point.
#[derive(Clone, Debug)]
struct Point {
    system: String,
    op: String,
    conns: usize,
    ops_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

/// The CA of the store's cluster under `BENCH_TLS=1` (set when it starts).
static STORE_CA: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// An HTTP client with connect and request timeouts (trusting the store's
/// CA under `BENCH_TLS=1`).
fn http_client() -> reqwest::Client {
    let builder = kv_tests::client_builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(15))
        .no_proxy();
    match STORE_CA.get() {
        Some(ca) => builder.tls_backend_preconfigured(kv_tests::tls_client_config(ca, None)),
        None => builder,
    }
    .build()
    .expect("http client")
}

fn bench_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench")
}

/// "1.23ms" / "456.00us" / "1.02s" → milliseconds.
fn to_ms(text: &str) -> f64 {
    let (num, unit) = text.split_at(
        text.find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(text.len()),
    );
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => f64::NAN,
    }
}

/// Runs wrk once and parses throughput, p50, p99 and non-2xx answers.
fn wrk(
    url: &str,
    script: &str,
    conns: usize,
    seconds: u64,
    env: &[(&str, &str)],
) -> (f64, f64, f64, u64) {
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{conns}"),
            &format!("-d{seconds}s"),
            "--latency",
            "--timeout",
            "5s",
            "-s",
        ])
        .arg(bench_dir().join(script))
        .arg(url)
        .envs(env.iter().copied())
        .output()
        .expect("wrk must be installed (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut ops = f64::NAN;
    let (mut p50, mut p99, mut errors) = (f64::NAN, f64::NAN, 0u64);
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["Requests/sec:", v] => ops = v.parse().unwrap_or(f64::NAN),
            ["50%", v] => p50 = to_ms(v),
            ["99%", v] => p99 = to_ms(v),
            ["Non-2xx", "or", "3xx", "responses:", n] => errors += n.parse::<u64>().unwrap_or(0),
            _ if line.contains("Socket errors") => {
                errors += line
                    .split(|c: char| !c.is_ascii_digit())
                    .filter_map(|n| n.parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    (ops, p50, p99, errors)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

fn measure(
    system: &str,
    op: &str,
    url: &str,
    script: &str,
    conns: usize,
    env: &[(&str, &str)],
) -> Point {
    let seconds = env_or("BENCH_SECONDS", 10u64);
    let repeats = env_or("BENCH_REPEATS", 3usize).max(1);
    let runs: Vec<(f64, f64, f64, u64)> = (0..repeats)
        .map(|_| wrk(url, script, conns, seconds, env))
        .collect();
    let point = Point {
        system: system.to_owned(),
        op: op.to_owned(),
        conns,
        ops_s: median(runs.iter().map(|r| r.0).collect()),
        p50_ms: median(runs.iter().map(|r| r.1).collect()),
        p99_ms: median(runs.iter().map(|r| r.2).collect()),
        errors: runs.iter().map(|r| r.3).sum(),
    };
    eprintln!(
        "  {system:<28} {op:<6} c={conns:<3} {:>9.0} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {}",
        point.ops_s, point.p50_ms, point.p99_ms, point.errors
    );
    point
}

fn connections() -> Vec<usize> {
    std::env::var("BENCH_CONNECTIONS")
        .unwrap_or_else(|_| "16 64".to_owned())
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect()
}

/// Standard base64 (for etcd's JSON gateway).
fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Writes every key of the 10k-key space once, so reads find them.
async fn preload(url: &str, etcd: bool) {
    let http = http_client();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..32 {
        let (http, url) = (http.clone(), url.to_owned());
        tasks.spawn(async move {
            let value = "x".repeat(98);
            for n in (t..10_000).step_by(32) {
                let key = format!("k{n}");
                let request = if etcd {
                    let body = json!({"key": b64(key.as_bytes()), "value": b64("x".repeat(100).as_bytes())});
                    http.post(format!("{url}/v3/kv/put")).json(&body)
                } else {
                    http.put(format!("{url}/kv/")).json(&json!({"key": key, "value": value}))
                };
                let status = request.send().await.map(|r| r.status().as_u16()).unwrap_or(0);
                assert_eq!(status, 200, "preload {key}");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

/// The store as every part of the bench runs it: 3 nodes, one worker each;
/// with `BENCH_TLS=1`, TLS everywhere (HTTPS, mutual TLS between nodes,
/// `rediss://`; wrk speaks HTTPS too). Each of its processes runs one
/// runtime thread (`TOKIO_WORKER_THREADS`, from `BENCH_STORE_THREADS`,
/// default 1; 0 leaves tokio's default, one per core): with three nodes,
/// their workers, Redis servers and the load generator on the machine's
/// cores, one measured faster (README, Performance). etcd keeps its
/// default (`GOMAXPROCS=1` measured slower for it).
async fn bench_cluster(appendfsync: &'static str) -> Cluster {
    let mut options = Options {
        workers: 1,
        appendfsync,
        tls: env_or("BENCH_TLS", 0u8) == 1,
        ..Options::default()
    }
    .env("RUST_LOG", "warn");
    let threads: u16 = env_or("BENCH_STORE_THREADS", 1);
    if threads > 0 {
        options = options.env("TOKIO_WORKER_THREADS", &threads.to_string());
    }
    let c = Cluster::start(options).await;
    if c.url(0).starts_with("https://") {
        let _ = STORE_CA.set(c.tls_dir().join("ca.pem"));
    }
    c
}

async fn bench_store(points: &mut Vec<Point>, appendfsync: &'static str, gets: bool) {
    let label = format!("kvstore (AOF {appendfsync})");
    let c = bench_cluster(appendfsync).await;
    let url = c.url(0);
    preload(&url, false).await;
    for conns in connections() {
        points.push(measure(&label, "PUT", &url, "store_put.lua", conns, &[]));
        if gets {
            points.push(measure(&label, "GET", &url, "store_get.lua", conns, &[]));
        }
    }
}

struct Etcd {
    children: Vec<Child>,
    dir: PathBuf,
    client_url: String,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start_etcd() -> Etcd {
    let dir = std::env::temp_dir().join(format!("kvbench-etcd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let initial = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut children = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let log = std::fs::File::create(dir.join(format!("e{i}.log"))).unwrap();
        children.push(
            Command::new("etcd")
                .args(["--name", &format!("e{i}")])
                .arg("--data-dir")
                .arg(dir.join(format!("e{i}")))
                .args([
                    "--listen-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                ])
                .args([
                    "--advertise-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                ])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                ])
                .args([
                    "--initial-cluster",
                    &initial,
                    "--initial-cluster-state",
                    "new",
                ])
                .args(["--log-level", "error"])
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .expect("etcd must be installed (apt-get install etcd-server)"),
        );
    }
    let client_url = format!("http://127.0.0.1:{}", ports[0].0);
    let http = http_client();
    let health = format!("{client_url}/health");
    wait_for("etcd to be healthy", Duration::from_secs(30), || {
        let (http, health) = (http.clone(), health.clone());
        async move {
            let body = http.get(&health).send().await.ok()?.text().await.ok()?;
            body.contains("true").then_some(())
        }
    })
    .await;
    Etcd {
        children,
        dir,
        client_url,
    }
}

fn redis_benchmark(points: &mut Vec<Point>) {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("kvbench-redis-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut server = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server");
    // Wait until it accepts connections (deadline 10 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect_timeout(
        &([127, 0, 0, 1], port).into(),
        Duration::from_millis(200),
    )
    .is_err()
    {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20)); // poll interval
    }
    for conns in connections() {
        let out = Command::new("redis-benchmark")
            .args([
                "-p",
                &port.to_string(),
                "-t",
                "set,get",
                "-n",
                "200000",
                "-c",
                &conns.to_string(),
                "-d",
                "100",
                "-r",
                "10000",
                "--csv",
            ])
            .output()
            .expect("redis-benchmark");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        for line in text.lines().skip(1) {
            let cols: Vec<String> = line
                .split(',')
                .map(|c| c.trim_matches('"').to_owned())
                .collect();
            if cols.len() >= 7 {
                let p = Point {
                    system: "redis-server (raw)".to_owned(),
                    op: cols[0].clone(),
                    conns,
                    ops_s: cols[1].parse().unwrap_or(f64::NAN),
                    p50_ms: cols[3].parse().unwrap_or(f64::NAN),
                    p99_ms: cols[5].parse().unwrap_or(f64::NAN),
                    errors: 0,
                };
                eprintln!(
                    "  {:<28} {:<5} c={conns:<3} {:>9.0} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms",
                    p.system, p.op, p.ops_s, p.p50_ms, p.p99_ms
                );
                points.push(p);
            }
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

async fn memory_and_restore(keys: usize) {
    let c = bench_cluster("everysec").await;
    let c = Arc::new(c);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..64 {
        let c = Arc::clone(&c);
        tasks.spawn(async move {
            let value = "x".repeat(98);
            for n in (t..keys).step_by(64) {
                let (status, _) = c.put(n % 3, &format!("m{n}"), json!(value)).await;
                assert_eq!(status, 200);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    println!(
        "\nloaded {keys} keys in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Let the replication queues drain before measuring.
    wait_for(
        "replication backlog to drain",
        Duration::from_secs(300),
        || async {
            let mut total = 0u64;
            for i in 0..3 {
                let view = c.cluster_view(i).await;
                total += view["records"].as_u64().unwrap_or(0);
            }
            (total >= 3 * keys as u64).then_some(())
        },
    )
    .await;
    // Redis' own memory per stored record: the record, its hash-tree leaf
    // share, the key index and the change log, as each node's Redis counts
    // them (`used_memory` less that of an empty server, about 1 MiB).
    for i in 0..3 {
        let mut conn = c
            .redis_client(i)
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection");
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await
            .expect("INFO memory");
        let used: f64 = info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(f64::NAN);
        println!(
            "  node{} redis: used_memory {:.1} MiB, {:.0} bytes per record",
            i + 1,
            used / 1_048_576.0,
            (used - 1_048_576.0) / keys as f64
        );
    }
    println!("resident memory with {keys} keys (MiB):");
    for i in 0..3 {
        let (api, workers) = c.pids(i);
        let workers: Vec<String> = workers
            .iter()
            .map(|w| format!("{:.1}", rss_mib(*w)))
            .collect();
        println!(
            "  node{}: api {:.1}, worker {}",
            i + 1,
            api.map_or(f64::NAN, rss_mib),
            workers.join(", ")
        );
    }
    // Throughput over the whole loaded key space, against the 10k-key
    // points of the table: how PUT and GET cost grows with the data.
    let conns = connections().into_iter().max().unwrap_or(64);
    let keys_text = keys.to_string();
    let env = [("KEYS", keys_text.as_str()), ("PREFIX", "m")];
    let label = format!("kvstore, {keys} keys");
    let url = c.url(0);
    for (op, script) in [("PUT", "store_put.lua"), ("GET", "store_get.lua")] {
        let p = measure(&label, op, &url, script, conns, &env);
        println!(
            "{label}: {op} c={conns} {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms, errors {}",
            p.ops_s, p.p50_ms, p.p99_ms, p.errors
        );
    }
    let mut c = Arc::try_unwrap(c).ok().unwrap();
    c.wipe_node(1).await;
    let restarted = Instant::now();
    c.restart_api(1).await;
    let view = wait_for("node2 to restore", Duration::from_secs(600), || async {
        let view = c.cluster_view(1).await;
        (view["restore"]["state"] == "ready" && view["records"].as_u64() == Some(keys as u64))
            .then_some(view)
    })
    .await;
    let report = &view["restore"]["report"];
    let data_bytes = report["bytes_received"].as_u64().unwrap_or(0);
    println!(
        "restore of a wiped node with {keys} keys: {:.1} s (restore {} ms), {} bytes received",
        restarted.elapsed().as_secs_f64(),
        report["elapsed_ms"],
        data_bytes
    );
    let (_, report) = c.request(reqwest::Method::POST, 1, "/restore/", None).await;
    // What an identical node does move: one hash summary per peer.
    let summary = c
        .http
        .post(format!("{}/internal/merkle", c.url(0)))
        .header("x-kv-cluster-secret", kv_tests::TEST_SECRET)
        .json(&json!({"for_node": "node2"}))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let peers = report["peers"].as_array().map_or(0, Vec::len);
    println!(
        "restore of an identical node: {} records, {} bytes of records received; {peers} hash summaries of {} bytes = {:.2}% of the {data_bytes} bytes a wiped restore moved",
        report["received"],
        report["bytes_received"],
        summary.len(),
        (summary.len() * peers) as f64 * 100.0 / data_bytes.max(1) as f64,
    );
}

fn ratio(
    points: &[Point],
    a: (&str, &str, usize),
    b: (&str, &str, usize),
) -> Option<(f64, f64, f64)> {
    let find = |(sys, op, conns): (&str, &str, usize)| {
        points
            .iter()
            .find(|p| p.system.starts_with(sys) && p.op == op && p.conns == conns)
    };
    let (x, y) = (find(a)?, find(b)?);
    Some((x.ops_s / y.ops_s, x.p99_ms, y.p99_ms))
}

#[tokio::main]
async fn main() {
    for tool in ["wrk", "etcd", "redis-server", "redis-benchmark"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            eprintln!(
                "kvbench: {tool} is missing; `make bench` installs it with apt-get when run as root"
            );
            std::process::exit(2);
        }
    }
    let mut points = Vec::new();
    // BENCH_ONLY=store measures this store alone (for before/after runs).
    let only_store = std::env::var("BENCH_ONLY").is_ok_and(|v| v == "store");
    eprintln!(
        "this store: 3 nodes, N=3, W=R=quorum, background sync on, 1 worker per node, {} runtime thread(s) per process",
        match env_or("BENCH_STORE_THREADS", 1u16) {
            0 => "default".to_owned(),
            n => n.to_string(),
        }
    );
    // BENCH_APPENDFSYNC=always with BENCH_ONLY=store measures only the `always` PUT point.
    let only_always = std::env::var("BENCH_APPENDFSYNC").is_ok_and(|v| v == "always");
    // BENCH_ONLY=etcd measures etcd alone (its PUT and GET points).
    let only_etcd = std::env::var("BENCH_ONLY").is_ok_and(|v| v == "etcd");
    if only_store && only_always {
        bench_store(&mut points, "always", false).await;
    } else if !only_etcd {
        let gets = std::env::var("BENCH_GET").map_or(true, |v| v != "0");
        bench_store(&mut points, "everysec", gets).await;
    }
    if !only_store && !only_etcd {
        bench_store(&mut points, "always", false).await;
    }
    eprintln!("etcd: 3 members on loopback, JSON gateway");
    if !only_store {
        let etcd = start_etcd().await;
        preload(&etcd.client_url, true).await;
        for conns in connections() {
            points.push(measure(
                "etcd 3-member",
                "PUT",
                &etcd.client_url,
                "etcd.lua",
                conns,
                &[("ETCD_OP", "put")],
            ));
            points.push(measure(
                "etcd 3-member",
                "GET",
                &etcd.client_url,
                "etcd.lua",
                conns,
                &[("ETCD_OP", "range")],
            ));
        }
    }
    if std::env::var("BENCH_YCSB").map_or(true, |v| v != "0") {
        let conns = connections().into_iter().max().unwrap_or(64);
        ycsb::run(&mut points, conns, only_store).await;
    }
    eprintln!("raw redis-server: redis-benchmark, no pipelining");
    if !only_store && !only_etcd {
        redis_benchmark(&mut points);
    }

    println!("\n| system | op | conns | ops/s | p50 ms | p99 ms | errors |");
    println!("|---|---|---|---|---|---|---|");
    for p in &points {
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {} |",
            p.system, p.op, p.conns, p.ops_s, p.p50_ms, p.p99_ms, p.errors
        );
    }
    println!("\nratios (same run):");
    for conns in connections() {
        for (label, a, b) in [
            (
                "PUT kvstore/etcd",
                ("kvstore (AOF everysec)", "PUT", conns),
                ("etcd", "PUT", conns),
            ),
            (
                "PUT kvstore(always)/etcd",
                ("kvstore (AOF always)", "PUT", conns),
                ("etcd", "PUT", conns),
            ),
            (
                "GET kvstore/etcd",
                ("kvstore (AOF everysec)", "GET", conns),
                ("etcd", "GET", conns),
            ),
            (
                "YCSB-A kvstore/etcd",
                ("kvstore (AOF everysec)", "YCSB-A", conns),
                ("etcd", "YCSB-A", conns),
            ),
            (
                "YCSB-B kvstore/etcd",
                ("kvstore (AOF everysec)", "YCSB-B", conns),
                ("etcd", "YCSB-B", conns),
            ),
            (
                "PUT kvstore/redis SET",
                ("kvstore (AOF everysec)", "PUT", conns),
                ("redis", "SET", conns),
            ),
            (
                "GET kvstore/redis GET",
                ("kvstore (AOF everysec)", "GET", conns),
                ("redis", "GET", conns),
            ),
        ] {
            if let Some((r, pa, pb)) = ratio(&points, a, b) {
                println!(
                    "  c={conns:<3} {label:<26} throughput x{r:.2}   p99 {pa:.2} ms vs {pb:.2} ms"
                );
            }
        }
    }
    let keys = env_or("BENCH_MEMORY_KEYS", 100_000usize);
    if keys > 0 {
        memory_and_restore(keys).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(super::b64(b"k1"), "azE=");
        assert_eq!(super::b64(b"k12"), "azEy");
        assert_eq!(super::b64(b"k123"), "azEyMw==");
        assert_eq!(super::to_ms("456.00us"), 0.456);
        assert_eq!(super::to_ms("1.50s"), 1500.0);
    }
}
