//! Failures and recovery: heartbeat status in Redis (seed IV), sloppy quorum
//! and hinted handoff, restore of a wiped node by anti-entropy, deletes that
//! stay deleted through tombstone collection, and a bounded random fault run.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_tests::{Cluster, Options, json, wait_for};
use reqwest::Method;

async fn node_status(c: &Cluster, at: usize, of: &str) -> Option<String> {
    let mut redis = c.redis(at).await;
    redis::cmd("GET")
        .arg(format!("node_status:{of}"))
        .query_async(&mut redis)
        .await
        .ok()
        .flatten()
}

async fn wait_status(c: &Cluster, at: usize, of: &str, want: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    wait_for(
        &format!("node_status:{of} = {want} in node{}'s Redis", at + 1),
        timeout,
        || async { (node_status(c, at, of).await.as_deref() == Some(want)).then_some(()) },
    )
    .await;
    started.elapsed()
}

/// Seed scenario IV, with a short interval: `GET node_status:node1` → "up";
/// node3 killed → "down" within the window; restarted → "up" again.
async fn heartbeat_scenario(sync: &str) {
    let workers = if sync == "on" { 1 } else { 0 };
    let mut c = Cluster::start(
        Options {
            workers,
            ..Options::default()
        }
        .env("KV_BACKGROUND_SYNC", sync)
        .env("KV_HEARTBEAT_INTERVAL_S", "0.3"),
    )
    .await;
    wait_status(&c, 0, "node1", "up", Duration::from_secs(10)).await;
    wait_status(&c, 0, "node3", "up", Duration::from_secs(10)).await;
    let mut redis = c.redis(0).await;
    let seen: Option<u64> = redis::cmd("GET")
        .arg("node_status:node3:last_seen_ms")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(seen.is_some(), "last seen time is recorded");

    c.kill_api(2);
    let detected = wait_status(&c, 0, "node3", "down", Duration::from_secs(5)).await;
    eprintln!(
        "[{sync}] node3 marked down in node1's Redis {detected:?} after the kill (heartbeat 0.3 s)"
    );
    // The other nodes' views agree.
    wait_status(&c, 1, "node3", "down", Duration::from_secs(5)).await;
    // /cluster/ shows both: the heartbeat's status, and routing's own view
    // (the API's light probe) catching up within its interval.
    wait_for(
        "node1's routing view to leave node3",
        Duration::from_secs(5),
        || async {
            let view = c.cluster_view(0).await;
            let node3 = view["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["id"] == "node3")
                .unwrap()
                .clone();
            (node3["heartbeat_status"] == "down" && node3["status"] != "up").then_some(())
        },
    )
    .await;

    c.restart_api(2).await;
    wait_status(&c, 0, "node3", "up", Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_records_node_status_with_workers() {
    heartbeat_scenario("on").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_records_node_status_without_workers() {
    heartbeat_scenario("off").await;
}

/// Sloppy quorum: with 4 nodes and N=3, a write at `all` while an owner is
/// down goes to the next node on the ring, which keeps a hint and delivers
/// it when the owner is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sloppy_quorum_hands_off_through_a_fallback() {
    let mut c = Cluster::start(
        Options {
            nodes: 4,
            workers: 1,
            ..Options::default()
        }
        .env("KV_RESTORE_ON_START", "off")
        .env("KV_ANTI_ENTROPY_INTERVAL_S", "0"),
    )
    .await;
    // A key owned by node1, node2 and node3, so node4 is the fallback.
    let (key, _) =
        kv_tests::key_where(&c, "sloppy-", 0, |r| !r.contains(&"node4".to_owned())).await;
    c.kill_api(1); // node2
    let (status, body) = c.put_with(0, &key, json!("handed off"), "all").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sloppy"], true, "{body}");
    assert_eq!(
        body["hints"],
        json!([{"owner": "node2", "holder": "node4"}]),
        "{body}"
    );
    assert!(
        body["acks"].as_array().unwrap().contains(&json!("node4")),
        "{body}"
    );
    // node4 holds it as a hint, not as its own data.
    assert!(!c.snapshot(3).await.contains_key(&key));
    let view = c.cluster_view(3).await;
    let node2 = view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "node2")
        .unwrap()
        .clone();
    assert_eq!(node2["hints_held_here"], 1, "{node2}");

    c.restart_api(1).await;
    let started = Instant::now();
    wait_for(
        "the hint to reach node2",
        Duration::from_secs(10),
        || async { c.snapshot(1).await.contains_key(&key).then_some(()) },
    )
    .await;
    eprintln!(
        "hint delivered {:?} after node2 answered again",
        started.elapsed()
    );
    wait_for(
        "node4's hint store to drain",
        Duration::from_secs(10),
        || async {
            let view = c.cluster_view(3).await;
            let held = view["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["id"] == "node2")
                .unwrap()["hints_held_here"]
                .clone();
            (held == 0).then_some(())
        },
    )
    .await;
}

/// Writes `count` keys through the three nodes, 32 at a time.
async fn load(c: &Arc<Cluster>, prefix: &str, count: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..32 {
        let c = Arc::clone(c);
        let prefix = prefix.to_owned();
        tasks.spawn(async move {
            for n in (t..count).step_by(32) {
                let key = format!("{prefix}{n}");
                let (status, body) = c
                    .put(n % 3, &key, json!({"n": n, "pad": "x".repeat(64)}))
                    .await;
                assert_eq!(status, 200, "{body}");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

/// A node whose Redis is wiped (10,000 keys) restores everything from its
/// peers by anti-entropy; restoring an identical node moves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_restores_ten_thousand_keys() {
    let c = Cluster::start(Options::default().env("KV_BACKGROUND_SYNC", "off")).await;
    let c = Arc::new(c);
    let started = Instant::now();
    load(&c, "wipe-", 10_000).await;
    eprintln!("wrote 10,000 keys in {:?}", started.elapsed());
    let mut c = Arc::try_unwrap(c).ok().unwrap();
    assert_eq!(c.cluster_view(1).await["records"], 10_000);

    // Wipe node2: kill its API and Redis, delete the data, start both again.
    c.wipe_node(1).await;
    let restarted = Instant::now();
    c.restart_api(1).await;
    let view = wait_for(
        "node2 to restore 10,000 keys",
        Duration::from_secs(120),
        || async {
            let view = c.cluster_view(1).await;
            (view["restore"]["state"] == "ready" && view["records"] == 10_000).then_some(view)
        },
    )
    .await;
    let report = &view["restore"]["report"];
    eprintln!(
        "restored 10,000 keys in {:?} (restore itself {} ms, {} bytes received, {} leaves differing)",
        restarted.elapsed(),
        report["elapsed_ms"],
        report["bytes_received"],
        report["leaves_differing"]
    );
    assert_eq!(report["stored"], 10_000, "{report}");

    // Restoring a node that is already identical moves 0 keys.
    let (status, report) = c.request(Method::POST, 1, "/restore/", None).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        (report["received"].clone(), report["stored"].clone()),
        (json!(0), json!(0)),
        "{report}"
    );
    assert_eq!(report["leaves_differing"], 0, "{report}");
    assert_eq!(report["peers"][0]["local_records"], 10_000, "{report}");
}

/// Keys deleted while a replica is down stay deleted on every node, through
/// hint delivery, anti-entropy and tombstone collection (Riak's kv679 case:
/// tombstones must not be collected while a replica still holds old values).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_stay_deleted_through_anti_entropy_and_gc() {
    let mut c = Cluster::start(
        Options::default()
            .env("KV_BACKGROUND_SYNC", "off")
            .env("KV_RESTORE_ON_START", "off")
            .env("KV_TOMBSTONE_GRACE_S", "0.2")
            .env("KV_GC_INTERVAL_S", "0.2")
            .env("KV_ANTI_ENTROPY_INTERVAL_S", "0.5")
            // Hints would fix node3 at once; make anti-entropy and GC do the work.
            .env("KV_HINT_WINDOW_S", "0"),
    )
    .await;
    let keys: Vec<String> = (0..20).map(|n| format!("gone-{n}")).collect();
    for key in &keys {
        assert_eq!(c.put_with(0, key, json!("old"), "all").await.0, 200);
    }
    c.kill_api(2); // node3 keeps its old values
    for key in &keys {
        let (status, body) = c.delete(0, key).await;
        assert_eq!(status, 200, "{body}");
    }
    // GC runs several rounds but collects nothing: node3 does not answer.
    let runs_before = c.cluster_view(0).await["stats"]["gc_runs"]
        .as_u64()
        .unwrap();
    wait_for("three GC rounds", Duration::from_secs(10), || async {
        let runs = c.cluster_view(0).await["stats"]["gc_runs"]
            .as_u64()
            .unwrap();
        (runs >= runs_before + 3).then_some(())
    })
    .await;
    let snap = c.snapshot(0).await;
    assert!(
        keys.iter().all(|k| snap[k]["deleted"] == true),
        "tombstones kept while node3 is away"
    );

    // node3 returns with the old values; anti-entropy brings the tombstones,
    // then GC collects them everywhere.
    c.restart_api(2).await;
    wait_for(
        "tombstones collected on every node",
        Duration::from_secs(30),
        || async {
            for i in 0..3 {
                let snap = c.snapshot(i).await;
                if keys.iter().any(|k| snap.contains_key(k)) {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    // And nothing comes back: another full anti-entropy round, then reads.
    for i in 0..3 {
        let (status, _) = c.request(Method::POST, i, "/restore/", None).await;
        assert_eq!(status, 200);
    }
    for key in &keys {
        for i in 0..3 {
            let (status, body) = c.get(i, key).await;
            assert_eq!(status, 404, "{key} came back on node{}: {body}", i + 1);
        }
    }
    let collected = c.cluster_view(0).await["stats"]["tombstones_collected"]
        .as_u64()
        .unwrap();
    assert!(collected >= 20, "node1 collected {collected}");
}

/// A tiny deterministic PRNG (xorshift64*), so a seed replays the same run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Bounded random run: writes through random nodes while a random node is
/// SIGKILLed and restarted every few seconds. Every acknowledged quorum write
/// must end on all replicas with at least its version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_node_kills_lose_no_acknowledged_write() {
    let run_s: u64 = std::env::var("KV_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let seed: u64 = std::env::var("KV_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let c = Cluster::start(
        Options {
            workers: 1,
            ..Options::default()
        }
        .env("KV_HEARTBEAT_INTERVAL_S", "1"),
    )
    .await;
    let c = Arc::new(tokio::sync::RwLock::new(c));
    let deadline = Instant::now() + Duration::from_secs(run_s);
    let acked: Arc<tokio::sync::Mutex<BTreeMap<String, String>>> = Arc::default();
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..4u64 {
        let (c, acked) = (Arc::clone(&c), Arc::clone(&acked));
        writers.spawn(async move {
            let mut rng = Rng(seed ^ (w + 1).wrapping_mul(0x9e37_79b9));
            let (mut ok, mut failed) = (0u64, 0u64);
            let mut n = 0u64;
            while Instant::now() < deadline {
                let key = format!("chaos-{}", rng.below(200));
                let node = rng.below(3) as usize;
                n += 1;
                let value = format!("w{w}-{n}");
                let cluster = c.read().await;
                let url = format!("{}/kv/", cluster.url(node));
                let sent = cluster
                    .http
                    .post(url)
                    .json(&json!({"key": key, "value": value}))
                    .send()
                    .await;
                drop(cluster);
                match sent {
                    Ok(resp) if resp.status() == 200 => {
                        let body: serde_json::Value = resp.json().await.unwrap();
                        let version = body["version"].as_str().unwrap().to_owned();
                        let mut acked = acked.lock().await;
                        // Keep the highest acknowledged version per key.
                        let newer = acked.get(&key).is_none_or(|v| version_gt(&version, v));
                        if newer {
                            acked.insert(key, version);
                        }
                        ok += 1;
                    }
                    _ => failed += 1,
                }
            }
            (ok, failed)
        });
    }
    // The fault schedule: kill a random node, restart it a little later.
    // These sleeps are the schedule itself (how long a node stays down or up),
    // not waits for a condition.
    let mut rng = Rng(seed);
    let mut kills = 0;
    while Instant::now() + Duration::from_secs(3) < deadline {
        let victim = rng.below(3) as usize;
        c.write().await.kill_api(victim);
        kills += 1;
        tokio::time::sleep(Duration::from_millis(1000 + rng.below(1500))).await;
        c.write().await.restart_api(victim).await;
        tokio::time::sleep(Duration::from_millis(500 + rng.below(1000))).await;
    }
    let (mut ok, mut failed) = (0, 0);
    while let Some(r) = writers.join_next().await {
        let (o, f) = r.unwrap();
        ok += o;
        failed += f;
    }
    let acked = acked.lock().await.clone();
    let c = c.read().await;
    // Converge: every replica holds every acknowledged write (or newer).
    let started = Instant::now();
    wait_for(
        "all replicas to converge",
        Duration::from_secs(60),
        || async {
            for i in 0..3 {
                let snap = c.snapshot(i).await;
                for (key, version) in &acked {
                    let held = snap.get(key).and_then(|r| r["version"].as_str());
                    if !held.is_some_and(|h| h == version || version_gt(h, version)) {
                        return None;
                    }
                }
            }
            Some(())
        },
    )
    .await;
    eprintln!(
        "chaos (seed {seed:#x}, {run_s} s): {kills} node kills, {ok} writes acknowledged, {failed} failed, {} keys checked on 3 replicas, converged {:?} after the run, 0 lost",
        acked.len(),
        started.elapsed()
    );
    assert!(ok > 0 && kills > 0);
}

/// Compares two version strings `wall:logical:node` in version order.
fn version_gt(a: &str, b: &str) -> bool {
    let parse = |s: &str| {
        let mut p = s.splitn(3, ':');
        let w: u64 = p.next().unwrap().parse().unwrap();
        let l: u32 = p.next().unwrap().parse().unwrap();
        (w, l, p.next().unwrap().to_owned())
    };
    parse(a) > parse(b)
}

/// A node whose Redis is still loading its data (a large append-only file
/// after a restart; slowed here with `--key-load-delay`) when its API and
/// worker start: they wait, saying so in the log, and then serve — before,
/// the API exited at once on Redis' `LOADING` answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starts_while_its_redis_is_still_loading() {
    let mut c = Cluster::start(Options {
        nodes: 1,
        workers: 1,
        ..Options::default()
    })
    .await;
    let (status, body) = c.put(0, "before", json!("kept")).await;
    assert_eq!(status, 200, "{body}");
    // 20,000 keys at 150 µs each: about three seconds of loading.
    let mut conn = c.redis(0).await;
    let mut pipe = redis::pipe();
    for i in 0..20_000 {
        pipe.cmd("SET").arg(format!("filler:{i}")).arg("x").ignore();
    }
    pipe.query_async::<()>(&mut conn).await.expect("fill");
    c.kill_workers(0);
    c.kill_api(0);
    c.kill_redis(0);
    c.nodes[0].redis_args = vec!["--key-load-delay".to_owned(), "150".to_owned()];
    c.spawn_redis(0);
    c.restart_api(0).await;
    c.restart_workers(0);
    assert!(
        c.api_log(0).contains("redis not ready yet"),
        "the API started after Redis had loaded: the test did not exercise the wait"
    );
    let (status, body) = c.get(0, "before").await;
    assert_eq!((status, &body["value"]), (200, &json!("kept")), "{body}");
    let (status, body) = c.put(0, "after", json!(1)).await;
    assert_eq!(status, 200, "{body}");
}
