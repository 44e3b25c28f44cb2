//! Periodic work as scheduled jobs (Celery beat's counterpart): the API's
//! one scheduler queues each due run of the heartbeat, hint delivery,
//! anti-entropy and GC on its node's `periodic` queue; the node's workers,
//! however many, run each run once, and never two runs of one task at once.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use kv_tests::{Cluster, Options, json, key_where, wait_for};
use reqwest::Method;
use serde_json::Value;

fn stat(view: &Value, name: &str) -> u64 {
    view["stats"][name].as_u64().unwrap_or(0)
}

async fn stat_of(c: &Cluster, i: usize, name: &str) -> u64 {
    stat(&c.cluster_view(i).await, name)
}

/// Waits until `node_status:{of}` in node `at`'s Redis reads `want`.
async fn wait_status(c: &Cluster, at: usize, of: &str, want: &str) {
    wait_for(
        &format!("node_status:{of} = {want} in node{}'s Redis", at + 1),
        Duration::from_secs(10),
        || async {
            let mut redis = c.redis(at).await;
            let got: Option<String> = redis::cmd("GET")
                .arg(format!("node_status:{of}"))
                .query_async(&mut redis)
                .await
                .ok()
                .flatten();
            (got.as_deref() == Some(want)).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_run_one_nodes_scheduled_jobs() {
    // Four nodes, N = 3: node4 is the fallback of the keys nodes 1-3 own,
    // and keeps their hints. Only node4 has workers: two.
    let mut c = Cluster::start(
        Options {
            nodes: 4,
            ..Options::default()
        }
        .env("KV_RESTORE_ON_START", "off")
        .env("KV_ANTI_ENTROPY_INTERVAL_S", "0")
        .env("KV_HEARTBEAT_INTERVAL_S", "0.5")
        .env("KV_HINT_DELIVERY_INTERVAL_MS", "300")
        // A cron expression (with a seconds field) replaces GC's interval.
        .env("KV_GC_SCHEDULE", "* * * * * *")
        .env("KV_TOMBSTONE_GRACE_S", "5")
        .env("KV_HINT_WINDOW_S", "4"),
    )
    .await;
    c.spawn_worker(3);
    c.spawn_worker(3);
    wait_for(
        "two workers on node4's periodic queue",
        Duration::from_secs(20),
        || async {
            let view = c.cluster_view(3).await;
            let queue = view["jobs"]["queues"]
                .as_array()?
                .iter()
                .find(|q| q["queue"] == "kv:node4:q:periodic")?
                .clone();
            (queue["workers"] == 2).then_some(())
        },
    )
    .await;

    // Heartbeat jobs: node4's workers record node_status:* in node4's Redis.
    wait_status(&c, 3, "node4", "up").await;
    wait_status(&c, 3, "node2", "up").await;

    // Hint delivery jobs: with node2 down, a write at `all` leaves a hint
    // on node4, which node4's workers deliver once node2 is back.
    let (key, _) = key_where(&c, "periodic-", 0, |r| !r.contains(&"node4".to_owned())).await;
    c.kill_api(1);
    let (status, body) = c.put_with(0, &key, json!("handed off"), "all").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["hints"],
        json!([{"owner": "node2", "holder": "node4"}]),
        "{body}"
    );
    wait_status(&c, 3, "node2", "down").await;
    c.restart_api(1).await;
    wait_for(
        "the hint to reach node2",
        Duration::from_secs(10),
        || async { c.snapshot(1).await.contains_key(&key).then_some(()) },
    )
    .await;
    wait_for(
        "node4 to count the delivered hint",
        Duration::from_secs(10),
        || async { (stat_of(&c, 3, "hints_delivered").await >= 1).then_some(()) },
    )
    .await;
    wait_status(&c, 3, "node2", "up").await;

    // GC jobs: a key node4 holds, deleted at `all`, is collected on node4
    // once the tombstone is older than the grace.
    let (gone, _) = key_where(&c, "periodic-gc-", 0, |r| r.contains(&"node4".to_owned())).await;
    assert_eq!(c.put_with(3, &gone, json!(1), "all").await.0, 200);
    let path = format!("/kv/?key={}&consistency=all", kv_tests::encode(&gone));
    let (status, body) = c.request(Method::DELETE, 3, &path, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(c.snapshot(3).await[&gone]["deleted"], true);
    wait_for(
        "node4 to collect the tombstone",
        Duration::from_secs(30),
        || async { (!c.snapshot(3).await.contains_key(&gone)).then_some(()) },
    )
    .await;
    wait_for(
        "node4 to count the collection",
        Duration::from_secs(10),
        || async { (stat_of(&c, 3, "tombstones_collected").await >= 1).then_some(()) },
    )
    .await;

    // Never two runs of one task at once: while another holder has GC's
    // lease (a run in progress elsewhere), GC jobs are skipped, not run.
    let mut redis = c.redis(3).await;
    let _: () = redis::cmd("SET")
        .arg("kv:node4:lease:gc")
        .arg("another-worker")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut redis)
        .await
        .unwrap();
    let skipped = stat_of(&c, 3, "periodic_skipped").await;
    wait_for("GC jobs to be skipped", Duration::from_secs(10), || async {
        (stat_of(&c, 3, "periodic_skipped").await >= skipped + 2).then_some(())
    })
    .await;
    // Runs that began before the lease was taken are counted by now.
    let gc_runs = stat_of(&c, 3, "gc_runs").await;
    let skipped = stat_of(&c, 3, "periodic_skipped").await;
    let started = Instant::now();
    wait_for(
        "two more GC jobs (one a second) to come and be skipped",
        Duration::from_secs(10),
        || async {
            let now = stat_of(&c, 3, "periodic_skipped").await;
            (now >= skipped + 2 && started.elapsed() >= Duration::from_millis(2_500)).then_some(())
        },
    )
    .await;
    assert_eq!(
        stat_of(&c, 3, "gc_runs").await,
        gc_runs,
        "a GC ran while another holder had the lease"
    );
    let _: () = redis::cmd("DEL")
        .arg("kv:node4:lease:gc")
        .query_async(&mut redis)
        .await
        .unwrap();
    wait_for(
        "GC to run again once the lease is free",
        Duration::from_secs(10),
        || async { (stat_of(&c, 3, "gc_runs").await > gc_runs).then_some(()) },
    )
    .await;
}
