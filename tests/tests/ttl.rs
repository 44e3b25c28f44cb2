//! Time to live against three real nodes (issue 17): a value written with
//! `ttl_s` reads the same through every node until its `expires_at`, and
//! as missing through every node from then on — including a node that was
//! down when it was written and got it later. A write after the expiry
//! creates the key again (`If-None-Match: *` passes); listing leaves the
//! expired keys out; GC then collects them on every node like tombstones.
//! Bad TTLs are refused with 400 and change nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kv_tests::{Cluster, Options, wait_for};
use reqwest::Method;
use serde_json::{Value, json};

const TTL_S: u64 = 3;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn options() -> Options {
    Options {
        workers: 1,
        ..Options::default()
    }
    .env("KV_TOMBSTONE_GRACE_S", "2")
    .env("KV_GC_INTERVAL_S", "1")
    .env("KV_HINT_WINDOW_S", "1")
    .env("KV_HINT_DELIVERY_INTERVAL_MS", "200")
    .env("KV_PROBE_INTERVAL_MS", "200")
}

/// The wall time in a version (`wall_ms:logical:node`).
fn version_wall(body: &Value) -> u64 {
    let version = body["version"].as_str().expect("version");
    version.split(':').next().unwrap().parse().unwrap()
}

/// The keys of one listing page of `prefix` through node `i`.
async fn listed_keys(c: &Cluster, i: usize, prefix: &str) -> Vec<String> {
    let (status, page) = c
        .request(Method::GET, i, &format!("/kv/?prefix={prefix}"), None)
        .await;
    assert_eq!(status, 200, "{page}");
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["key"].as_str().unwrap().to_owned())
        .collect()
}

/// A batch of one put of `key` with `ttl_s`, through node1.
async fn batch_put(c: &Cluster, key: &str, ttl_s: u64) -> (u16, Value) {
    let op = json!({"op": "put", "key": key, "value": 1, "ttl_s": ttl_s});
    c.request(Method::POST, 0, "/kv/batch", Some(json!({ "ops": [op] })))
        .await
}

async fn get(c: &Cluster, i: usize, key: &str) -> (u16, Value) {
    c.request(Method::GET, i, &format!("/kv/{key}"), None).await
}

/// Reads each of `keys` through every node until every node answers 404,
/// checking each answer against the time it was asked: 200 (with the
/// same `expires_at`) only from a read that began before `expires_at` +
/// `margin_ms`, 404 (`expired`) only from one that ended at or after
/// `expires_at` − `margin_ms`. Returns how many of each.
async fn reads_across_expiry(c: &Cluster, keys: &[(&str, u64)], margin_ms: u64) -> (usize, usize) {
    let (live, expired) = (AtomicUsize::new(0), AtomicUsize::new(0));
    for &(key, expires) in keys {
        wait_for(
            &format!("every node reads {key} as expired"),
            Duration::from_secs(30),
            || async {
                let mut gone = 0;
                for node in 0..c.nodes.len() {
                    let began = now_ms();
                    let (status, body) = get(c, node, key).await;
                    let ended = now_ms();
                    match status {
                        200 => {
                            assert!(
                                began < expires + margin_ms,
                                "node{} returned {key} after expiry: {body}",
                                node + 1
                            );
                            assert_eq!(body["expires_at"].as_u64(), Some(expires), "{body}");
                            live.fetch_add(1, Ordering::Relaxed);
                        }
                        404 => {
                            assert!(
                                ended + margin_ms >= expires,
                                "node{} lost {key} before expiry: {body}",
                                node + 1
                            );
                            assert_eq!(body["expired"], true, "{body}");
                            assert_eq!(body["expires_at"].as_u64(), Some(expires), "{body}");
                            assert!(body["value"].is_null(), "{body}");
                            expired.fetch_add(1, Ordering::Relaxed);
                            gone += 1;
                        }
                        other => panic!("node{} answered {other} for {key}: {body}", node + 1),
                    }
                }
                (gone == c.nodes.len()).then_some(())
            },
        )
        .await;
    }
    (live.into_inner(), expired.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_is_seen_identically_through_every_node_then_collected() {
    let mut c = Cluster::start(options()).await;
    c.wait_all_see_all_up().await;

    // Body form through node1, path form (`?ttl_s=`) through node2.
    let (status, a) = c
        .request(
            Method::PUT,
            0,
            "/kv/",
            Some(json!({"key": "ttl-a", "value": {"n": 1}, "ttl_s": TTL_S})),
        )
        .await;
    assert_eq!(status, 200, "{a}");
    let expires_a = a["expires_at"].as_u64().expect("expires_at in the answer");
    assert_eq!(expires_a, version_wall(&a) + TTL_S * 1000, "{a}");
    let (status, b) = c
        .request(
            Method::PUT,
            1,
            &format!("/kv/ttl-b?ttl_s={TTL_S}"),
            Some(json!({"value": "b"})),
        )
        .await;
    assert_eq!(status, 200, "{b}");
    let (status, forever) = c
        .request(
            Method::PUT,
            0,
            "/kv/",
            Some(json!({"key": "ttl-forever", "value": 0})),
        )
        .await;
    assert_eq!(status, 200, "{forever}");
    assert!(forever.get("expires_at").is_none(), "{forever}");

    // Node3 is down while ttl-c is written; it gets the record after.
    c.kill_api(2);
    let (status, cc) = c
        .request(
            Method::PUT,
            0,
            "/kv/",
            Some(json!({"key": "ttl-c", "value": [3], "ttl_s": TTL_S})),
        )
        .await;
    assert_eq!(status, 200, "{cc}");
    let expires_c = cc["expires_at"].as_u64().unwrap();
    c.restart_api(2).await;
    wait_for(
        "node3 holds ttl-c with its expiry",
        Duration::from_secs(30),
        || async {
            let snap = c.snapshot(2).await;
            (snap.get("ttl-c").and_then(|r| r["expires_at"].as_u64()) == Some(expires_c))
                .then_some(())
        },
    )
    .await;

    // Until the expiry every node returns the value with the same
    // expires_at; listing shows it.
    let keys = [
        ("ttl-a", expires_a),
        ("ttl-b", b["expires_at"].as_u64().unwrap()),
        ("ttl-c", expires_c),
    ];
    let listed = listed_keys(&c, 2, "ttl-").await;
    // A key may already have expired on a slow machine; never one too many.
    let asked_at = now_ms();
    for (key, expires) in keys {
        if expires > asked_at + 500 {
            assert!(
                listed.iter().any(|k| k == key),
                "{key} missing from {listed:?}"
            );
        }
    }
    assert!(listed.iter().any(|k| k == "ttl-forever"), "{listed:?}");

    // Reads through every node, again and again, across the expiry: a value
    // is only ever returned by a read that began before `expires_at`, and a
    // 404 only by one that ended at or after it.
    let (live, expired) = reads_across_expiry(&c, &keys, 0).await;
    eprintln!(
        "reads across the expiry: {live} returned the value before it, {expired} answered 404 after it"
    );
    assert!(expired >= 9);

    // A create-only write succeeds on the expired key and replaces it.
    let resp = c
        .http
        .put(format!("{}/kv/ttl-b", c.url(2)))
        .header("if-none-match", "*")
        .json(&json!({"value": "again"}))
        .send()
        .await
        .unwrap();
    let (status, again) = kv_tests::read_json(resp).await;
    assert_eq!(status, 200, "{again}");
    assert!(again.get("expires_at").is_none(), "{again}");
    for node in 0..3 {
        let (status, body) = get(&c, node, "ttl-b").await;
        assert_eq!((status, &body["value"]), (200, &json!("again")), "{body}");
    }
    assert_eq!(listed_keys(&c, 0, "ttl-").await, ["ttl-b", "ttl-forever"]);

    // GC collects the expired records on every node, like tombstones; the
    // live ones stay.
    for node in 0..3 {
        wait_for(
            &format!("node{} collects ttl-a and ttl-c", node + 1),
            Duration::from_secs(60),
            || async {
                let snap = c.snapshot(node).await;
                (!snap.contains_key("ttl-a") && !snap.contains_key("ttl-c")).then_some(snap)
            },
        )
        .await;
        let snap = c.snapshot(node).await;
        assert!(
            snap.contains_key("ttl-b") && snap.contains_key("ttl-forever"),
            "{snap:?}"
        );
    }
    // Whichever owner ran the round counts it (counters flush every second).
    wait_for(
        "the collections are counted",
        Duration::from_secs(10),
        || async {
            let mut collected = 0;
            for node in 0..3 {
                collected += c.cluster_view(node).await["stats"]["tombstones_collected"]
                    .as_u64()
                    .unwrap_or(0);
            }
            (collected >= 2).then_some(())
        },
    )
    .await;
}

/// node3's clock 10 minutes ahead: it is fenced, and decides expiry by its
/// peers' time (its clock corrected by their median offset), not its own —
/// which would expire every value at once. Its reads agree with the
/// others' to within 250 ms (the offset is measured over loopback).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_with_a_bad_clock_expires_values_at_the_cluster_time() {
    let mut c = Cluster::start(options()).await;
    c.wait_all_see_all_up().await;
    c.kill_api(2);
    c.nodes[2].env = vec![("KV_CLOCK_OFFSET_MS".to_owned(), "600000".to_owned())];
    c.restart_api(2).await;
    wait_for("node3 fenced", Duration::from_secs(15), || async {
        let (status, body) = c.put(2, "fence-probe", json!("x")).await;
        (status == 503 && body["error"]["code"] == "clock_skew").then_some(())
    })
    .await;
    let (status, w) = c
        .request(
            Method::PUT,
            0,
            "/kv/",
            Some(json!({"key": "skewed", "value": 1, "ttl_s": TTL_S})),
        )
        .await;
    assert_eq!(status, 200, "{w}");
    let expires = w["expires_at"].as_u64().unwrap();
    let (live, expired) = reads_across_expiry(&c, &[("skewed", expires)], 250).await;
    eprintln!(
        "with node3 10 min ahead: {live} reads returned the value before expiry, {expired} 404 after"
    );
    assert!(
        live >= 3,
        "node3 must have returned the value before expiry ({live})"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_ttls_are_refused_and_change_nothing() {
    let c = Cluster::start(Options::default().env("KV_BACKGROUND_SYNC", "off")).await;
    c.wait_all_see_all_up().await;
    let bodies = [
        json!({"key": "bad", "value": 1, "ttl_s": 0}),
        json!({"key": "bad", "value": 1, "ttl_s": -1}),
        json!({"key": "bad", "value": 1, "ttl_s": 1.5}),
        json!({"key": "bad", "value": 1, "ttl_s": "5"}),
        json!({"key": "bad", "value": 1, "ttl_s": null}),
        json!({"key": "bad", "value": 1, "ttl_s": 315_360_001u64}),
    ];
    for body in bodies {
        let (status, answer) = c.request(Method::PUT, 0, "/kv/", Some(body.clone())).await;
        assert_eq!(status, 400, "{body} → {answer}");
        assert_eq!(answer["error"]["code"], "bad_ttl", "{answer}");
    }
    for path in [
        "/kv/bad?ttl_s=0",
        "/kv/bad?ttl_s=abc",
        "/kv/bad?ttl_s=%2B5",
        "/kv/?ttl_s=9",
    ] {
        let body = if path == "/kv/?ttl_s=9" {
            json!({"key": "bad", "value": 1, "ttl_s": 8})
        } else {
            json!({"value": 1})
        };
        let (status, answer) = c.request(Method::PUT, 1, path, Some(body)).await;
        assert_eq!(status, 400, "{path} → {answer}");
        assert_eq!(answer["error"]["code"], "bad_ttl", "{answer}");
    }
    let (status, answer) = c.request(Method::DELETE, 2, "/kv/bad?ttl_s=5", None).await;
    assert_eq!((status, &answer["error"]["code"]), (400, &json!("bad_ttl")));
    let (status, answer) = batch_put(&c, "bad", 0).await;
    assert_eq!(status, 400, "{answer}");
    for node in 0..3 {
        let (status, body) = get(&c, node, "bad").await;
        assert_eq!(status, 404, "a refused write changed something: {body}");
        assert!(body.get("version").is_none(), "{body}");
    }
    // A batch put carries a TTL too.
    let (status, answer) = batch_put(&c, "batched", 60).await;
    assert_eq!(status, 200, "{answer}");
    let expires = answer["results"][0]["expires_at"]
        .as_u64()
        .expect("expires_at");
    let (status, body) = get(&c, 1, "batched").await;
    assert_eq!((status, body["expires_at"].as_u64()), (200, Some(expires)));
    // One place per form: the body on /kv/, the query on /kv/{key}; the
    // other place is refused even when it agrees.
    for (path, body) in [
        (
            "/kv/?ttl_s=60",
            json!({"key": "both", "value": 1, "ttl_s": 60}),
        ),
        ("/kv/both?ttl_s=60", json!({"value": 1, "ttl_s": 60})),
        ("/kv/both", json!({"value": 1, "ttl_s": 60})),
    ] {
        let (status, answer) = c.request(Method::PUT, 2, path, Some(body)).await;
        assert_eq!(status, 400, "{path}: {answer}");
        assert_eq!(answer["error"]["code"], "bad_ttl", "{answer}");
    }
    let (status, body) = get(&c, 0, "both").await;
    assert_eq!(status, 404, "{body}");
}
