//! Listing keys in order across the cluster (`GET /kv/?prefix=…`), against
//! three real nodes: every key once, in order, page after page, while
//! writes go on and a node dies mid-way; ranges, keys only, tombstones left
//! out; a key whose owners cannot answer refuses the page; bad input is 400.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use kv_tests::{Cluster, Options, encode, json, wait_for};
use reqwest::Method;
use serde_json::Value;

/// Writes `keys` (value: the key's number) through node `i` in batches.
async fn put_all(c: &Cluster, i: usize, keys: &[String]) {
    for chunk in keys.chunks(100) {
        let ops: Vec<Value> = chunk
            .iter()
            .map(|k| json!({"op": "put", "key": k, "value": {"k": k}}))
            .collect();
        let (status, body) = c
            .request(Method::POST, i, "/kv/batch", Some(json!({ "ops": ops })))
            .await;
        assert_eq!(status, 200, "{body}");
        let bad: Vec<&Value> = body["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["status"] != 200)
            .collect();
        assert!(bad.is_empty(), "{bad:?}");
    }
}

async fn list(c: &Cluster, i: usize, query: &str) -> (u16, Value) {
    c.request(Method::GET, i, &format!("/kv/?{query}"), None)
        .await
}

/// Every page of `query` through node `i`, `limit` keys at a time; calls
/// `between(page number)` after each page. Returns the items in order.
async fn list_all<F, Fut>(c: &Cluster, i: usize, query: &str, mut between: F) -> Vec<Value>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0.. {
        let q = match &cursor {
            None => query.to_owned(),
            Some(c) => format!("{query}&cursor={c}"),
        };
        let (status, body) = list(c, i, &q).await;
        assert_eq!(status, 200, "page {page}: {body}");
        let got = body["items"].as_array().unwrap();
        assert_eq!(body["count"].as_u64().unwrap() as usize, got.len());
        items.extend(got.iter().cloned());
        match body["next_cursor"].as_str() {
            None => break,
            Some(next) => cursor = Some(next.to_owned()),
        }
        between(page).await;
        assert!(page < 100_000, "listing does not end");
    }
    items
}

fn keys_of(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|v| v["key"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_keys_in_pages_of_100_while_writes_go_on_and_a_node_dies() {
    let c = Cluster::start(Options::default()).await;
    let keys: Vec<String> = (0..10_000).map(|n| format!("item:{n:05}")).collect();
    put_all(&c, 0, &keys).await;
    // Other prefixes on either side, and deleted keys inside the prefix.
    put_all(
        &c,
        1,
        &["iteL".to_owned(), "iten".to_owned(), "item".to_owned()],
    )
    .await;
    let deleted: Vec<String> = keys.iter().step_by(20).cloned().collect();
    for k in &deleted {
        let (status, body) = c.delete(2, k).await;
        assert_eq!(status, 200, "{body}");
    }
    let live: BTreeSet<String> = keys
        .iter()
        .filter(|k| !deleted.contains(k))
        .cloned()
        .collect();

    // Writes go on while the listing runs: updates of listed keys and new
    // keys, some inside the prefix (they may or may not be listed).
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let http = c.http.clone();
        let url = c.url(1);
        let stop = Arc::clone(&stop);
        let written = Arc::clone(&written);
        tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let key = if n.is_multiple_of(2) {
                    format!("item:{:05}", ((n * 37) % 10_000) | 1)
                } else {
                    format!("item:new:{n}")
                };
                let ok = http
                    .put(format!("{url}/kv/{}", encode(&key)))
                    .json(&json!({"value": {"k": key, "update": n}}))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    written.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
        })
    };

    let started = std::time::Instant::now();
    let killed = std::cell::Cell::new(false);
    let items = {
        let c_ref: &Cluster = &c;
        list_all(c_ref, 0, "prefix=item%3A&limit=100", |page| {
            let kill = page == 40 && !killed.get();
            if kill {
                killed.set(true);
            }
            async move {
                if kill {
                    // node3's API dies (SIGKILL) between two pages.
                    let (pid, _) = c_ref.pids(2);
                    let pid = pid.expect("node3 runs");
                    let status = std::process::Command::new("kill")
                        .args(["-9", &pid.to_string()])
                        .status()
                        .unwrap();
                    assert!(status.success());
                }
            }
        })
        .await
    };
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    assert!(killed.get(), "node3 was killed mid-listing");
    let listed = keys_of(&items);
    eprintln!(
        "listed {} keys in {:?} while {} writes were acknowledged; node3 killed after page 40",
        listed.len(),
        started.elapsed(),
        written.load(Ordering::Relaxed)
    );
    assert!(written.load(Ordering::Relaxed) > 0, "writes went on");
    // In order, none repeated.
    assert!(
        listed.windows(2).all(|w| w[0] < w[1]),
        "not strictly increasing"
    );
    let set: BTreeSet<String> = listed.iter().cloned().collect();
    // Every key live for the whole listing is there; deleted ones are not;
    // nothing outside the prefix.
    let missing: Vec<&String> = live.difference(&set).collect();
    assert!(
        missing.is_empty(),
        "{} missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    for k in &deleted {
        assert!(!set.contains(k), "deleted {k} listed");
    }
    assert!(listed.iter().all(|k| k.starts_with("item:")));
    for item in items.iter().take(50) {
        assert_eq!(item["value"]["k"], item["key"], "{item}");
        assert!(item["version"].is_string(), "{item}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_keys_only_and_bad_input() {
    let mut c = Cluster::start(Options::default()).await;
    let keys: Vec<String> = ["a", "b", "b/1", "b/2", "b/3", "c", "d"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    put_all(&c, 0, &keys).await;
    let (status, _) = c.delete(1, "b/2").await;
    assert_eq!(status, 200);

    let all = keys_of(&list_all(&c, 1, "limit=2", |_| async {}).await);
    assert_eq!(all, ["a", "b", "b/1", "b/3", "c", "d"]);
    let prefixed = keys_of(&list_all(&c, 2, "prefix=b%2F&limit=1", |_| async {}).await);
    assert_eq!(prefixed, ["b/1", "b/3"]);
    let ranged = keys_of(&list_all(&c, 0, "start=b&end=c&limit=10", |_| async {}).await);
    assert_eq!(ranged, ["b", "b/1", "b/3"]);

    let (status, body) = list(&c, 0, "prefix=b&keys_only=true").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["count"], 3, "{body}");
    assert!(body["items"][0].get("value").is_none(), "{body}");
    assert!(body["items"][0]["version"].is_string(), "{body}");
    assert!(body["next_cursor"].is_null(), "{body}");
    let (status, body) = list(&c, 0, "prefix=zzz").await;
    assert_eq!((status, body["count"].clone()), (200, json!(0)), "{body}");

    for (query, code) in [
        ("limit=0", "bad_limit"),
        ("limit=1001", "bad_limit"),
        ("limit=x", "bad_limit"),
        ("cursor=zz", "bad_cursor"),
        ("cursor=", "bad_cursor"),
        ("start=", "bad_key"),
        ("prefix=a&keys_only=yes", "bad_query"),
        ("prefix=a&value=1", "bad_query"),
        ("prefix=a&consistency=most", "bad_consistency"),
    ] {
        let (status, body) = list(&c, 0, query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], code, "{query}: {body}");
    }

    // With one node down: quorum lists, all is refused naming the node.
    c.kill_api(2);
    let all = keys_of(&list_all(&c, 0, "limit=3", |_| async {}).await);
    assert_eq!(all, ["a", "b", "b/1", "b/3", "c", "d"]);
    let (status, body) = wait_for("a 503 at consistency all", Duration::from_secs(10), || {
        let c = &c;
        async move {
            let (status, body) = list(c, 0, "prefix=b&consistency=all").await;
            (status == 503).then_some((status, body))
        }
    })
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "consistency_unreachable", "{body}");
    assert!(body.to_string().contains("node3"), "{body}");
}
