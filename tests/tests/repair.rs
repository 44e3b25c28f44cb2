//! Repair under conditions the other suites do not create: a restore that
//! cannot reach every peer, a clock that restarts behind its own stamps,
//! answers too large for one message, a corrupt stored record. Real
//! redis-server and api processes.

use std::time::Duration;

use kv_tests::{Cluster, Options, TEST_SECRET, wait_for};
use reqwest::Method;
use serde_json::{Value, json};
use shared::core::merkle::leaf_of;
use shared::core::record::Version;

fn version_of(body: &Value) -> Version {
    body["version"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no version in {body}"))
}

/// A wiped node whose restore cannot reach one peer says `partial` and
/// names it — never `ready` — and becomes `ready` only once that peer
/// returns and is synced too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_that_misses_a_peer_says_partial_until_it_syncs() {
    let mut c = Cluster::start(Options::default().env("KV_BACKGROUND_SYNC", "off")).await;
    for n in 0..200 {
        let (status, body) = c.put_with(n % 3, &format!("p-{n}"), json!(n), "all").await;
        assert_eq!(status, 200, "{body}");
    }
    c.kill_api(2);
    c.wipe_node(1).await;
    c.restart_api(1).await;
    let view = wait_for("node2 to say partial", Duration::from_secs(30), || async {
        let view = c.cluster_view(1).await;
        (view["restore"]["state"] == "partial").then_some(view)
    })
    .await;
    assert_eq!(view["restore"]["missing"], json!(["node3"]), "{view}");
    // What node1 had is restored already; still not ready.
    wait_for(
        "node2 to hold node1's copy",
        Duration::from_secs(30),
        || async {
            let view = c.cluster_view(1).await;
            assert_ne!(view["restore"]["state"], "ready", "{view}");
            (view["records"] == 200).then_some(())
        },
    )
    .await;
    c.restart_api(2).await;
    let view = wait_for("node2 to be ready", Duration::from_secs(60), || async {
        let view = c.cluster_view(1).await;
        (view["restore"]["state"] == "ready").then_some(view)
    })
    .await;
    let report = &view["restore"]["report"];
    assert!(report["peers_synced"].as_u64().unwrap_or(0) >= 2, "{view}");
    assert!(
        view["stats"]["restore_attempts"].as_u64().unwrap_or(0) >= 2,
        "{view}"
    );
}

/// A node restarted with its clock 30 s behind where it was still stamps
/// its writes above every stamp it issued before: its high-water mark was
/// persisted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clock_resumes_above_its_persisted_mark() {
    let mut c = Cluster::start(Options::default()).await;
    c.kill_api(0);
    c.nodes[0].env = vec![("KV_CLOCK_OFFSET_MS".to_owned(), "30000".to_owned())];
    c.restart_api(0).await;
    let (status, body) = c.put(0, "before", json!(1)).await;
    assert_eq!(status, 200, "{body}");
    let before = version_of(&body);
    let redis = c.redis(0).await;
    wait_for("the mark to be persisted", Duration::from_secs(10), || {
        let mut redis = redis.clone();
        async move {
            let mark: Option<u64> = redis::cmd("GET")
                .arg("kv:node1:hlc")
                .query_async(&mut redis)
                .await
                .ok()?;
            (mark? >= before.ts.wall_ms).then_some(())
        }
    })
    .await;
    c.kill_api(0);
    c.nodes[0].env.clear();
    c.restart_api(0).await;
    c.wait_all_see_all_up().await;
    let (status, body) = c.put(0, "after", json!(2)).await;
    assert_eq!(status, 200, "{body}");
    let after = version_of(&body);
    assert!(
        after.ts > before.ts,
        "a write after the restart is stamped {after}, below the earlier {before}"
    );
}

/// Twelve values of about 1 MiB: one internal read answers only as many as
/// fit its byte bound (at least one), and coordinated reads still return
/// every value, asking again for the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_are_read_in_bounded_answers() {
    let c = Cluster::start(Options::default().env("KV_BACKGROUND_SYNC", "off")).await;
    let big = |n: usize| json!(format!("{n}{}", "v".repeat(1_000_000)));
    let keys: Vec<String> = (0..12).map(|n| format!("big-{n}")).collect();
    for (n, key) in keys.iter().enumerate() {
        let (status, body) = c.put_with(0, key, big(n), "all").await;
        assert_eq!(status, 200, "{body}");
    }
    let answer = c
        .http
        .post(format!("{}/internal/read", c.url(1)))
        .header("x-kv-cluster-secret", TEST_SECRET)
        .json(&json!({ "keys": keys }))
        .send()
        .await
        .unwrap();
    let (status, answer) = kv_tests::read_json(answer).await;
    assert_eq!(status, 200, "{answer}");
    let records = answer["records"].as_array().unwrap();
    assert!(
        !records.is_empty() && records.len() < keys.len(),
        "{} of {} records in one answer",
        records.len(),
        keys.len()
    );
    assert_eq!(records[0]["value"], big(0));
    // Concurrent reads share calls to each replica; every one is whole.
    let mut reads = tokio::task::JoinSet::new();
    for (n, key) in keys.iter().enumerate() {
        let (http, url, key) = (c.http.clone(), c.url(2), key.clone());
        reads.spawn(async move {
            let resp = http
                .get(format!("{url}/kv/?key={key}&consistency=all"))
                .send()
                .await
                .unwrap();
            (n, kv_tests::read_json(resp).await)
        });
    }
    while let Some(joined) = reads.join_next().await {
        let (n, (status, body)) = joined.unwrap();
        assert_eq!(status, 200, "read {n}");
        assert_eq!(body["value"], big(n), "read {n}");
    }
}

/// A record that no longer decodes on one replica is skipped and counted,
/// never fails the other keys of a call or a scan, and read repair
/// replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_is_skipped_counted_and_repaired() {
    let c = Cluster::start(Options::default().env("KV_BACKGROUND_SYNC", "off")).await;
    for n in 0..50 {
        let (status, body) = c.put_with(0, &format!("c-{n}"), json!(n), "all").await;
        assert_eq!(status, 200, "{body}");
    }
    let mut redis = c.redis(1).await;
    let _: () = redis::cmd("HSET")
        .arg(shared::keyspace::data_leaf_key("node2", leaf_of("c-7")))
        .arg("c-7")
        .arg("garbage")
        .query_async(&mut redis)
        .await
        .unwrap();
    // Every key reads through node2 at `all`, the corrupt one included
    // (the other replicas hold it).
    for n in 0..50 {
        let (status, body) = c.get_with(1, &format!("c-{n}"), "all").await;
        assert_eq!(status, 200, "c-{n}: {body}");
        assert_eq!(body["value"], n);
    }
    let (status, snap) = c
        .request(Method::GET, 1, "/snapshot/?limit=10000", None)
        .await;
    assert_eq!(status, 200, "{snap}");
    // Read repair gave node2 the record back.
    wait_for("node2 repaired", Duration::from_secs(10), || async {
        let snap = c.snapshot(1).await;
        (snap.get("c-7").map(|r| &r["value"]) == Some(&json!(7))).then_some(())
    })
    .await;
    let view = c.cluster_view(1).await;
    assert!(
        view["stats"]["corrupt_records_skipped"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "{view}"
    );
}

/// A replica holding a version from beyond the drift bound (a timestamp
/// bomb written straight into its Redis): a write of that key cannot be
/// stamped above it, so it answers 503 `write_shadowed` naming where it was
/// stored — not 200 for a write that the bomb would hide once real time
/// passes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_below_a_timestamp_bomb_answers_write_shadowed() {
    use serde_json::value::RawValue;
    use shared::config::Config;
    use shared::core::hlc::Timestamp;
    use shared::core::record::Record;
    use shared::storage::{RedisStore, Store, connect_redis};

    let c = Cluster::start(Options::default().env("KV_BACKGROUND_SYNC", "off")).await;
    let url = c.redis_url(1);
    let cfg = Config::from_lookup(|name| (name == "REDIS_URL").then(|| url.clone())).unwrap();
    let store = Store::Redis(RedisStore::new(connect_redis(&cfg).await.unwrap(), "node2"));
    let ahead_ms = shared::clock::now_ms() + 600_000;
    let bomb = Record::value(
        Version::new(Timestamp::new(ahead_ms, 0), "node2"),
        RawValue::from_string("\"bomb\"".to_owned()).unwrap(),
    );
    store.apply(&[("bombed".to_owned(), bomb)]).await.unwrap();
    let (status, body) = c.put(0, "bombed", json!("mine")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "write_shadowed", "{body}");
    assert!(
        body["error"]["stored_on"]
            .as_array()
            .is_some_and(|s| s.contains(&json!("node1"))),
        "{body}"
    );
    let view = c.cluster_view(0).await;
    assert!(
        view["stats"]["writes_restamped"].as_u64().unwrap_or(0) >= 2,
        "{view}"
    );
    // The bomb itself is never returned by a read.
    for i in 0..3 {
        let (_, body) = c.get(i, "bombed").await;
        assert_ne!(body["value"], "bomb", "via node{}: {body}", i + 1);
    }
}

/// `GET /kv/explain/` shows each node's own view of a key — the replica
/// that lacks it, the job queued for it, the hint kept for a node that is
/// down — and `repair=true` repairs that key there and then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_every_replica_job_and_hint_and_repairs_one_key() {
    // No worker: the replication job for the third replica stays queued.
    // No start-up restore either: a node whose restore runs late (a loaded
    // machine) would pull the key from its peers before the repair below.
    let mut c = Cluster::start(Options::default().env("KV_RESTORE_ON_START", "off")).await;
    let (status, body) = c.put(0, "why", json!("v1")).await;
    assert_eq!(status, 200, "{body}");
    let pending = body["pending"][0].as_str().unwrap().to_owned();
    let (status, view) = c
        .request(Method::GET, 1, "/kv/explain/?key=why", None)
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["agree"], false, "{view}");
    assert_eq!(view["stale"], json!([pending]), "{view}");
    assert_eq!(view["newest"]["value"], "v1", "{view}");
    let node1 = view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == "node1")
        .unwrap()
        .clone();
    assert_eq!(
        node1["view"]["jobs"][0]["target"],
        pending.as_str(),
        "{view}"
    );
    let state = &node1["view"]["jobs"][0]["state"];
    assert!(state == "ready" || state == "scheduled", "{view}");
    // Repair it now.
    let (status, view) = c
        .request(Method::GET, 1, "/kv/explain/?key=why&repair=true", None)
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(
        view["repaired"],
        json!([{"node": pending, "outcome": "stored"}]),
        "{view}"
    );
    let (_, view) = c
        .request(Method::GET, 2, "/kv/explain/?key=why", None)
        .await;
    assert_eq!(view["agree"], true, "{view}");
    // A node down: its error is named, and the hint kept for it is shown.
    c.kill_api(2);
    wait_for(
        "node1 to see node3 down",
        Duration::from_secs(20),
        || async {
            let view = c.cluster_view(0).await;
            view["nodes"]
                .as_array()?
                .iter()
                .any(|n| n["id"] == "node3" && n["status"] == "down")
                .then_some(())
        },
    )
    .await;
    let (status, body) = c.put(0, "why2", json!("v2")).await;
    assert_eq!(status, 200, "{body}");
    let (status, view) = c
        .request(Method::GET, 0, "/kv/explain/?key=why2", None)
        .await;
    assert_eq!(status, 200, "{view}");
    let nodes = view["nodes"].as_array().unwrap();
    let node3 = nodes.iter().find(|n| n["node"] == "node3").unwrap();
    assert_eq!(node3["view"], Value::Null, "{view}");
    assert_eq!(node3["error"], "unreachable", "{view}");
    let held: Vec<&Value> = nodes
        .iter()
        .flat_map(|n| n["view"]["hints"].as_array().into_iter().flatten())
        .collect();
    assert!(
        held.iter()
            .any(|h| h["owner"] == "node3" && h["record"]["value"] == "v2"),
        "{view}"
    );
    // Bad input: a missing key is a 400, not an explanation.
    let (status, body) = c.request(Method::GET, 0, "/kv/explain/", None).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = c
        .request(Method::GET, 0, "/kv/explain/?key=x&repair=maybe", None)
        .await;
    assert_eq!(status, 400, "{body}");
}

/// A persisted clock mark from the future (the node once ran with a clock
/// ahead of its peers') is not resumed above: the restarted node writes
/// with versions its peers accept, instead of refusing every write for as
/// long as its clock was ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_mark_from_the_future_is_not_resumed_above() {
    let mut c = Cluster::start(Options::default()).await;
    c.kill_api(0);
    let mut redis = c.redis(0).await;
    let ahead = shared::clock::now_ms() + 600_000;
    let _: () = redis::cmd("SET")
        .arg("kv:node1:hlc")
        .arg(ahead)
        .query_async(&mut redis)
        .await
        .unwrap();
    c.restart_api(0).await;
    c.wait_all_see_all_up().await;
    let (status, body) = c.put(0, "after-future-mark", json!(1)).await;
    assert_eq!(status, 200, "{body}");
    let version = version_of(&body);
    assert!(
        version.ts.wall_ms < ahead - 500_000,
        "stamped {version}, near the future mark {ahead}"
    );
}

/// A node whose clock is 10 minutes fast, once fenced, judges the records
/// it is sent by its peers' time: a version 5 minutes ahead of real time
/// (within its own fast clock's bound, beyond everyone else's) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_fast_node_refuses_records_from_the_future() {
    let mut c = Cluster::start(Options::default().env("KV_PROBE_INTERVAL_MS", "200")).await;
    c.kill_api(2);
    c.nodes[2].env = vec![("KV_CLOCK_OFFSET_MS".to_owned(), "600000".to_owned())];
    c.restart_api(2).await;
    wait_for("node3 fenced", Duration::from_secs(15), || async {
        let (status, body) = c.put(2, "probe", json!(0)).await;
        (status == 503 && body["error"]["code"] == "clock_skew").then_some(())
    })
    .await;
    let bomb = format!("{}:0:node1", shared::clock::now_ms() + 300_000);
    let answer = c
        .http
        .post(format!("{}/internal/apply", c.url(2)))
        .header("x-kv-cluster-secret", TEST_SECRET)
        .json(&json!({
            "from": "node1",
            "records": [{"key": "ahead", "record": {"version": bomb, "value": "x"}}]
        }))
        .send()
        .await
        .unwrap();
    let (status, answer) = kv_tests::read_json(answer).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"], json!(["refused"]), "{answer}");
}
