//! Conditional writes through any node, refereed by the key's primary:
//! create-only, compare-and-set on a version, and 100 concurrent
//! increments of one counter through three nodes, each counted exactly
//! once (the guarantee the README states, without failures). Real
//! redis-server and api processes.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use kv_tests::{Cluster, Options, json};
use serde_json::Value;

async fn put_if(
    c: &Cluster,
    node: usize,
    key: &str,
    value: Value,
    header: (&str, &str),
) -> (u16, Value) {
    let resp = c
        .http
        .put(format!("{}/kv/", c.url(node)))
        .header(header.0, header.1)
        .json(&json!({ "key": key, "value": value }))
        .send()
        .await
        .unwrap();
    kv_tests::read_json(resp).await
}

/// `PUT {path}` on `node` with `headers` and body `{"key", "value"}`.
async fn put_headers(
    c: &Cluster,
    node: usize,
    path: &str,
    headers: &[(&str, &str)],
    key: &str,
    value: Value,
) -> (u16, Value) {
    let mut req = c.http.put(format!("{}{path}", c.url(node)));
    for (name, v) in headers {
        req = req.header(*name, *v);
    }
    let resp = req
        .json(&json!({ "key": key, "value": value }))
        .send()
        .await
        .unwrap();
    kv_tests::read_json(resp).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes_referee_one_key_through_any_node() {
    let c = Cluster::start(Options::default()).await;
    // Create only: the first wins, the second is told what is there.
    let (status, first) = put_if(&c, 0, "cas", json!(1), ("if-none-match", "*")).await;
    assert_eq!(status, 200, "{first}");
    let (status, body) = put_if(&c, 1, "cas", json!(2), ("if-none-match", "*")).await;
    assert_eq!(status, 412, "{body}");
    assert_eq!(body["error"]["code"], "precondition_failed", "{body}");
    assert_eq!(body["error"]["current_version"], first["version"], "{body}");
    // Compare-and-set on the version read.
    let v1 = first["version"].as_str().unwrap().to_owned();
    let (status, second) = put_if(&c, 2, "cas", json!(3), ("if-match", &v1)).await;
    assert_eq!(status, 200, "{second}");
    let (status, body) = put_if(&c, 1, "cas", json!(4), ("if-match", &v1)).await;
    assert_eq!(status, 412, "an old version: {body}");
    // A conditional delete, by query parameter.
    let v2 = second["version"].as_str().unwrap();
    let resp = c
        .http
        .delete(format!(
            "{}/kv/?key=cas&if_version={}",
            c.url(1),
            kv_tests::encode(v2)
        ))
        .send()
        .await
        .unwrap();
    let (status, body) = kv_tests::read_json(resp).await;
    assert_eq!(status, 200, "{body}");
    // Create-only again succeeds on a deleted key; If-Match on it does not.
    let (status, body) = put_if(&c, 0, "cas", json!(5), ("if-match", v2)).await;
    assert_eq!(status, 412, "{body}");
    assert_eq!(body["error"]["deleted"], true, "{body}");
    let (status, body) = put_if(&c, 0, "cas", json!(6), ("if-none-match", "*")).await;
    assert_eq!(status, 200, "{body}");
    // A malformed If-None-Match, an over-long If-Match and a malformed
    // if_version are bad input; an If-Match tag that is not a version
    // matches nothing (as HTTP reads it): 412. None changes anything.
    let long = "7".repeat(201);
    for (name, value, want) in [
        ("if-none-match", "abc", 400),
        ("if-match", long.as_str(), 400),
        ("if-match", "yesterday", 412),
    ] {
        let (status, body) = put_if(&c, 0, "cas", json!(7), (name, value)).await;
        assert_eq!(status, want, "{name}: {body}");
        let code = if want == 400 {
            "bad_condition"
        } else {
            "precondition_failed"
        };
        assert_eq!(body["error"]["code"], code, "{body}");
    }
    let resp = c
        .http
        .put(format!("{}/kv/cas?if_version=yesterday", c.url(2)))
        .json(&json!({ "value": 7 }))
        .send()
        .await
        .unwrap();
    let (status, body) = kv_tests::read_json(resp).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_condition", "{body}");
    // Every condition given must hold: If-Match with If-None-Match: *
    // never can (412, through a node that forwards it too), and two
    // different versions cannot both be current.
    let (_, now) = c.get(0, "cas").await;
    let current = now["version"].as_str().unwrap().to_owned();
    let old_version = format!("/kv/?if_version={}", kv_tests::encode(&v1));
    for node in 0..3 {
        let both = [("if-match", current.as_str()), ("if-none-match", "*")];
        let (status, body) = put_headers(&c, node, "/kv/", &both, "cas", json!(8)).await;
        assert_eq!(status, 412, "node{}: {body}", node + 1);
        assert_eq!(body["error"]["current_version"], current.as_str(), "{body}");
        let header = [("if-match", current.as_str())];
        let (status, body) = put_headers(&c, node, &old_version, &header, "cas", json!(8)).await;
        assert_eq!(status, 412, "node{}: {body}", node + 1);
    }
    let (_, body) = c.get(0, "cas").await;
    assert_eq!(body["value"], 6);
    assert_eq!(body["version"], current.as_str());
    // `If-Match: *`: any value; the same version twice is one condition.
    let (status, body) = put_if(&c, 1, "cas", json!(9), ("if-match", "*")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = put_if(&c, 1, "absent-key", json!(9), ("if-match", "*")).await;
    assert_eq!(status, 412, "{body}");
    let (_, now) = c.get(0, "cas").await;
    let current = now["version"].as_str().unwrap().to_owned();
    let quoted = format!("\"{current}\"");
    let path = format!("/kv/?if_version={}", kv_tests::encode(&current));
    let header = [("if-match", quoted.as_str())];
    let (status, body) = put_headers(&c, 2, &path, &header, "cas", json!(10)).await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = c.get(0, "cas").await;
    assert_eq!(body["value"], 10);

    // 100 increments from 10 clients through the three nodes: read the
    // counter and its version, write +1 if the version is still current,
    // on 412 read again.
    let (status, _) = c.put(0, "counter", json!(0)).await;
    assert_eq!(status, 200);
    let c = Arc::new(c);
    let succeeded = Arc::new(AtomicUsize::new(0));
    let conflicts = Arc::new(AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..10usize {
        let (c, succeeded, conflicts) = (
            Arc::clone(&c),
            Arc::clone(&succeeded),
            Arc::clone(&conflicts),
        );
        clients.spawn(async move {
            let mut mine = 0;
            let mut attempts = 0;
            while mine < 10 {
                attempts += 1;
                assert!(attempts < 2_000, "client {client} made no progress");
                let node = (client + attempts) % 3;
                let (status, current) = c.get(node, "counter").await;
                assert_eq!(status, 200, "{current}");
                let n = current["value"].as_u64().unwrap();
                let version = current["version"].as_str().unwrap().to_owned();
                let (status, body) = put_if(
                    &c,
                    (node + 1) % 3,
                    "counter",
                    json!(n + 1),
                    ("if-match", &version),
                )
                .await;
                match status {
                    200 => {
                        mine += 1;
                        succeeded.fetch_add(1, Ordering::Relaxed);
                    }
                    412 => {
                        conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("client {client}: {other} {body}"),
                }
            }
        });
    }
    while let Some(joined) = clients.join_next().await {
        joined.unwrap();
    }
    let (_, body) = c.get(2, "counter").await;
    eprintln!(
        "100 conditional increments: {} acknowledged, {} refused with 412 and retried, final counter {}",
        succeeded.load(Ordering::Relaxed),
        conflicts.load(Ordering::Relaxed),
        body["value"]
    );
    assert_eq!(succeeded.load(Ordering::Relaxed), 100);
    assert_eq!(
        body["value"], 100,
        "every acknowledged increment counted once"
    );
    assert!(
        conflicts.load(Ordering::Relaxed) > 0,
        "the clients did race"
    );
}
