//! Background sync: replication jobs on each node's Redis queue, run by
//! worker processes (apalis), with at-least-once delivery, bounded retries,
//! dead letters and bounded finished records.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use kv_tests::{Cluster, Options, TEST_SECRET, json, wait_for};
use serde_json::Value;

fn pending(body: &Value) -> Vec<String> {
    body["pending"]
        .as_array()
        .unwrap_or_else(|| panic!("no pending in {body}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

fn queue(view: &Value) -> Value {
    view["jobs"]["queues"][0].clone()
}

/// Waits until every key of `keys` is in node `i`'s own snapshot with `value`.
async fn wait_snapshot_has(c: &Cluster, i: usize, keys: &[String], timeout: Duration) {
    wait_for(
        &format!("{} keys on node{}", keys.len(), i + 1),
        timeout,
        || async move {
            let snap = c.snapshot(i).await;
            keys.iter().all(|k| snap.contains_key(k)).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_replica_gets_the_write_through_a_worker() {
    let c = Cluster::start(Options {
        workers: 1,
        ..Options::default()
    })
    .await;
    let (status, body) = c.put(0, "via-worker", json!("v")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["acks"].as_array().unwrap().len(),
        2,
        "W=quorum stores on exactly 2: {body}"
    );
    let pend = pending(&body);
    assert_eq!(pend.len(), 1, "{body}");
    let target = c.index_of(&pend[0]);
    let started = Instant::now();
    wait_snapshot_has(
        &c,
        target,
        &["via-worker".to_owned()],
        Duration::from_secs(10),
    )
    .await;
    eprintln!(
        "third replica received the write {:?} after the response",
        started.elapsed()
    );
    // The worker counts the job once it is acknowledged, just after the
    // apply the snapshot saw (or anti-entropy may have carried the record
    // first): wait for the count and the drained queue.
    let view = wait_for(
        "the job counted and its queue drained",
        Duration::from_secs(10),
        || {
            let c = &c;
            async move {
                let view = c.cluster_view(0).await;
                let delivered = view["jobs"]["counters"]["delivered"].as_u64().unwrap_or(0);
                (delivered >= 1 && queue(&view)["depth"] == 0).then_some(view)
            }
        },
    )
    .await;
    assert!(
        view["jobs"]["counters"]["delivered"].as_u64().unwrap() >= 1,
        "{view}"
    );

    // The same figures in Prometheus text format.
    let metrics = c
        .http
        .get(format!("{}/metrics", c.url(0)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "kv_queue_depth{queue=\"kv:node1:q:replicate\"} 0",
        "kv_jobs_delivered_total 1",
        "kv_http_requests_total{route=\"/kv/\",method=\"POST\",status=\"200\"} 1",
        "kv_http_request_duration_seconds_bucket{route=\"/kv/\",method=\"POST\",status=\"200\",le=\"+Inf\"} 1",
        "kv_replication_lag_ms_last",
        "kv_peer_up{node=\"node2\"}",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_workers_writes_succeed_and_the_backlog_drains_later() {
    let mut c = Cluster::start(Options::default().env("KV_RESTORE_ON_START", "off")).await;
    let mut by_target: Vec<Vec<String>> = vec![Vec::new(); 3];
    for n in 0..40 {
        let key = format!("backlog-{n}");
        let (status, body) = c.put(0, &key, json!(n)).await;
        assert_eq!(status, 200, "{body}");
        for p in pending(&body) {
            by_target[c.index_of(&p)].push(key.clone());
        }
    }
    // No worker: the pending replicas do not have the keys, and node1's queue holds them.
    for (i, keys) in by_target.iter().enumerate() {
        let snap = c.snapshot(i).await;
        assert!(
            keys.iter().all(|k| !snap.contains_key(k)),
            "node{} got keys without a worker",
            i + 1
        );
    }
    let view = c.cluster_view(0).await;
    assert_eq!(queue(&view)["depth"], 40, "{view}");
    assert_eq!(queue(&view)["workers"], 0);

    // A worker starts: the backlog drains to every pending replica.
    c.spawn_worker(0);
    for (i, keys) in by_target.iter().enumerate() {
        wait_snapshot_has(&c, i, keys, Duration::from_secs(20)).await;
    }
    wait_for("queue to be empty", Duration::from_secs(10), || async {
        let q = queue(&c.cluster_view(0).await);
        (q["depth"] == 0 && q["in_flight"] == 0).then_some(())
    })
    .await;
    // Finished job records are trimmed by the janitor: bounded, not kept forever.
    let mut redis = c.redis(0).await;
    wait_for(
        "finished job records trimmed",
        Duration::from_secs(15),
        || {
            let mut redis = redis.clone();
            async move {
                let data: u64 = redis::cmd("HLEN")
                    .arg("kv:node1:q:replicate:data")
                    .query_async(&mut redis)
                    .await
                    .ok()?;
                let done: u64 = redis::cmd("SCARD")
                    .arg("kv:node1:q:replicate:done")
                    .query_async(&mut redis)
                    .await
                    .ok()?;
                (data == 0 && done == 0).then_some(())
            }
        },
    )
    .await;
    let metas: Vec<String> = redis::cmd("KEYS")
        .arg("kv:node1:q:replicate:meta:*")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(metas.is_empty(), "{} job meta records left", metas.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_batch_loses_nothing() {
    // A backlog first, then a worker that is killed while it holds a fetched
    // batch (concurrency 2, batches of 16).
    let mut c = Cluster::start(
        Options::default()
            .env("KV_RESTORE_ON_START", "off")
            .env("KV_WORKER_CONCURRENCY", "2"),
    )
    .await;
    let mut by_target: Vec<Vec<String>> = vec![Vec::new(); 3];
    for n in 0..150 {
        let key = format!("batch-{n}");
        let (status, body) = c.put(0, &key, json!(n)).await;
        assert_eq!(status, 200, "{body}");
        for p in pending(&body) {
            by_target[c.index_of(&p)].push(key.clone());
        }
    }
    c.spawn_worker(0);
    // Kill it as soon as it has delivered something but not everything.
    wait_for(
        "the worker to start delivering",
        Duration::from_secs(20),
        || async {
            let d = c.cluster_view(0).await["jobs"]["counters"]["delivered"]
                .as_u64()
                .unwrap_or(0);
            (d > 0).then_some(())
        },
    )
    .await;
    c.kill_worker(0, 0);
    let killed_at = Instant::now();
    let view = c.cluster_view(0).await;
    let delivered = view["jobs"]["counters"]["delivered"].as_u64().unwrap();
    assert!(
        delivered < 150,
        "worker finished before the kill; test proves nothing: {view}"
    );
    // Another worker recovers the orphaned batch (apalis heartbeat 2 s × 3).
    c.spawn_worker(0);
    for (i, keys) in by_target.iter().enumerate() {
        wait_snapshot_has(&c, i, keys, Duration::from_secs(30)).await;
    }
    eprintln!(
        "all writes reached every replica {:?} after the worker SIGKILL",
        killed_at.elapsed()
    );
}

/// No workers yet (the test starts node1's once its jobs are queued),
/// replication only through jobs (no restore, no anti-entropy), and the
/// given retry policy.
async fn retry_cluster(backoff_base_ms: u64, backoff_max_ms: u64, attempts_max: u32) -> Cluster {
    let opts = Options::default()
        .env("KV_RESTORE_ON_START", "off")
        .env("KV_ANTI_ENTROPY_INTERVAL_S", "0")
        .env("KV_JOB_BACKOFF_BASE_MS", &backoff_base_ms.to_string())
        .env("KV_JOB_BACKOFF_MAX_MS", &backoff_max_ms.to_string())
        .env("KV_JOB_ATTEMPTS_MAX", &attempts_max.to_string());
    Cluster::start(opts).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_replica_gets_its_jobs_after_retries() {
    let mut c = retry_cluster(200, 1000, 30).await;
    // Keys whose write through node1 contacts node2 before node3: node3 is
    // not contacted and gets a replication job, which fails while it is down.
    // The jobs are queued while node3 is up (so the API cannot have marked
    // it down and kept hints instead); node3 then dies before a worker runs them.
    let keys = kv_tests::keys_node2_before_node3(&c, "retry-", 10).await;
    for key in &keys {
        let (status, body) = c.put(0, key, json!(key)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(pending(&body), vec!["node3".to_owned()], "{body}");
    }
    c.kill_api(2); // node3 down
    c.spawn_worker(0);
    wait_for("jobs to be retried", Duration::from_secs(15), || async {
        let r = c.cluster_view(0).await["jobs"]["counters"]["retried"]
            .as_u64()
            .unwrap_or(0);
        (r >= 10).then_some(())
    })
    .await;
    // node3 comes back (restore and anti-entropy are off): the retried jobs deliver.
    c.restart_api(2).await;
    wait_snapshot_has(&c, 2, &keys, Duration::from_secs(20)).await;
    let view = c.cluster_view(0).await;
    assert_eq!(view["jobs"]["dead_letters"], 0, "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanently_failing_job_ends_in_the_dead_letter_list() {
    let mut c = retry_cluster(100, 200, 2).await;
    let key = kv_tests::keys_node2_before_node3(&c, "doomed-", 1)
        .await
        .remove(0);
    let (status, body) = c.put(0, &key, json!(1)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(pending(&body), vec!["node3".to_owned()], "{body}");
    c.kill_api(2);
    c.spawn_worker(0);
    let view = wait_for("a dead letter", Duration::from_secs(20), || async {
        let view = c.cluster_view(0).await;
        (view["jobs"]["dead_letters"].as_u64().unwrap_or(0) >= 1).then_some(view)
    })
    .await;
    let letter = &view["jobs"]["dead_newest"][0];
    assert_eq!(letter["attempts"], 2, "{letter}");
    assert_eq!(letter["job"]["target"], "node3", "{letter}");
    let reason = letter["reason"].as_str().unwrap();
    assert!(
        reason.contains("node3") && reason.contains("kept as a hint"),
        "{letter}"
    );
    assert_eq!(letter["job"]["records"][0]["key"], key.as_str());
    // The dead-letter list is also visible in Redis.
    let mut redis = c.redis(0).await;
    let len: u64 = redis::cmd("LLEN")
        .arg("kv:node1:dead")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(len, 1);
    // The job is dead, the data is not: the hint reaches node3 once it is back.
    c.restart_api(2).await;
    wait_snapshot_has(&c, 2, std::slice::from_ref(&key), Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_stall_does_not_stop_workers_and_replays_are_harmless() {
    // A short Redis timeout, so the stall surely breaks the worker's polling.
    let c = Cluster::start(
        Options {
            workers: 1,
            ..Options::default()
        }
        .env("KV_REDIS_TIMEOUT_MS", "500"),
    )
    .await;
    // Stall node1's Redis for 2 s.
    let mut redis = c.redis(0).await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(2000)
        .arg("ALL")
        .query_async(&mut redis)
        .await
        .unwrap();
    // Wait for the stall to end (each PING blocks or times out until then).
    wait_for(
        "the Redis stall to end",
        Duration::from_secs(10),
        || async {
            let mut fresh = c.try_redis(0).await?;
            redis::cmd("PING")
                .query_async::<String>(&mut fresh)
                .await
                .ok()
        },
    )
    .await;
    // The worker is still (or again) delivering jobs.
    let (status, body) = c.put(0, "after-stall", json!(1)).await;
    assert_eq!(status, 200, "{body}");
    let target = c.index_of(&pending(&body)[0]);
    wait_snapshot_has(
        &c,
        target,
        &["after-stall".to_owned()],
        Duration::from_secs(20),
    )
    .await;
    let log = std::fs::read_to_string(c.dir.join("node1/worker-0.log")).unwrap();
    let restarts = log.matches("restarting").count();
    eprintln!("worker restarts during the stall: {restarts}");
    assert!(
        restarts >= 1,
        "the stall should have broken the worker's polling once"
    );

    // Replaying a delivery is harmless: the same record again is "unchanged",
    // and an older one never overwrites a newer one.
    let snap = c.snapshot(target).await;
    let version = snap["after-stall"]["version"].as_str().unwrap().to_owned();
    let apply = |record: Value| {
        let url = format!("{}/internal/apply", c.url(target));
        let http = c.http.clone();
        async move {
            let body =
                json!({"from": "test", "records": [{"key": "after-stall", "record": record}]});
            let resp = http
                .post(url)
                .header("x-kv-cluster-secret", TEST_SECRET)
                .json(&body)
                .send()
                .await
                .unwrap();
            kv_tests::read_json(resp).await.1
        }
    };
    for _ in 0..3 {
        assert_eq!(
            apply(json!({"version": version, "value": 1})).await["results"],
            json!(["unchanged"])
        );
    }
    assert_eq!(
        apply(json!({"version": "1:0:node1", "value": "stale"})).await["results"],
        json!(["unchanged"])
    );
    assert_eq!(c.snapshot(target).await["after-stall"]["value"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_workers_share_one_queue() {
    let mut c = Cluster::start(Options::default().env("KV_RESTORE_ON_START", "off")).await;
    c.spawn_worker(0);
    c.spawn_worker(0);
    wait_for(
        "two workers registered",
        Duration::from_secs(10),
        || async { (queue(&c.cluster_view(0).await)["workers"] == 2).then_some(()) },
    )
    .await;
    let mut by_target: Vec<Vec<String>> = vec![Vec::new(); 3];
    for n in 0..30 {
        let key = format!("shared-{n}");
        let (_, body) = c.put(0, &key, json!(n)).await;
        for p in pending(&body) {
            by_target[c.index_of(&p)].push(key.clone());
        }
    }
    for (i, keys) in by_target.iter().enumerate() {
        wait_snapshot_has(&c, i, keys, Duration::from_secs(20)).await;
    }
}

/// The replication queue is bounded: past `KV_QUEUE_JOBS_MAX` a write's
/// replication is kept as a hint instead, and nothing is lost once a worker runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_turns_replication_into_hints_and_loses_nothing() {
    let mut c = Cluster::start(
        Options::default()
            .env("KV_RESTORE_ON_START", "off")
            .env("KV_QUEUE_JOBS_MAX", "15"),
    )
    .await;
    let mut by_target: Vec<Vec<String>> = vec![Vec::new(); 3];
    for n in 0..40 {
        let key = format!("full-{n}");
        let (status, body) = c.put(0, &key, json!(n)).await;
        assert_eq!(status, 200, "a full queue must not fail the write: {body}");
        for p in pending(&body) {
            by_target[c.index_of(&p)].push(key.clone());
        }
    }
    let view = c.cluster_view(0).await;
    // One job per write (sequential writes): 15 queued, 25 refused and kept as hints.
    assert_eq!(queue(&view)["depth"], 15, "{view}");
    assert_eq!(view["stats"]["jobs_enqueue_failed"], 25, "{view}");
    let hints: u64 = view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["hints_held_here"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(hints, 25, "{view}");

    // A worker runs the queue and delivers the hints: every replica has every key.
    c.spawn_worker(0);
    for (i, keys) in by_target.iter().enumerate() {
        wait_snapshot_has(&c, i, keys, Duration::from_secs(30)).await;
    }
}

/// Fetch scripts a node's Redis has run (the `LRANGE` of apalis-redis's
/// fetch script: nothing else of the node's own runs one unasked).
async fn fetches(c: &Cluster, i: usize) -> u64 {
    let mut conn = c
        .redis_client(i)
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_lrange:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// An idle worker polls each of its three queues about once per
/// `POLL_INTERVAL_MS` (50 ms), not in a loop: apalis fetches again as soon
/// as an empty fetch returns, which kept idle workers and their Redis busy
/// (about 550 fetches a second per queue) until empty fetches were held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_polls_at_the_interval_not_in_a_loop() {
    let c = Cluster::start(Options {
        workers: 1,
        ..Options::default()
    })
    .await;
    // The worker runs jobs (so it is polling), then the queues are empty.
    let (status, body) = c.put(0, "idle-poll", json!(1)).await;
    assert_eq!(status, 200, "{body}");
    for p in pending(&body) {
        wait_snapshot_has(
            &c,
            c.index_of(&p),
            &["idle-poll".to_owned()],
            Duration::from_secs(10),
        )
        .await;
    }
    let (before, started) = (fetches(&c, 0).await, Instant::now());
    // Measured over at least two seconds; the check ends as soon as it has.
    let after = wait_for(
        "two seconds of idle polling",
        Duration::from_secs(10),
        || async {
            let n = fetches(&c, 0).await;
            (started.elapsed() >= Duration::from_secs(2)).then_some(n)
        },
    )
    .await;
    let per_s = (after - before) as f64 / started.elapsed().as_secs_f64();
    // 3 queues × 20 polls a second = 60; twice that as a margin.
    assert!(
        per_s <= 120.0,
        "an idle worker fetched {per_s:.0} times a second"
    );
    assert!(
        per_s >= 5.0,
        "an idle worker should still poll ({per_s:.1}/s)"
    );
}
