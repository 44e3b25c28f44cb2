//! The seed's test scenarios I, II, V and VII, as functions of a running
//! 3-node cluster: `tests/scenarios.rs` runs them with background sync on
//! and off, `tests/tls.rs` over TLS.

use reqwest::Method;
use serde_json::{Value, json};

use crate::Cluster;

/// I. Basic CRUD, verbatim: POST, GET, DELETE on /kv/.
pub async fn scenario_i(c: &Cluster) {
    let (status, body) = c
        .request(
            Method::POST,
            0,
            "/kv/",
            Some(json!({"key": "username123", "value": "mci_admin"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["key"], "username123");
    assert!(
        body["version"]
            .as_str()
            .is_some_and(|v| v.ends_with(":node1")),
        "{body}"
    );
    assert!(body["acks"].as_array().unwrap().len() >= 2, "{body}");

    let (status, body) = c
        .request(Method::GET, 0, "/kv/?key=username123", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["value"], "mci_admin");

    let (status, body) = c
        .request(Method::DELETE, 0, "/kv/?key=username123", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deleted"], true);

    let (status, body) = c
        .request(Method::GET, 0, "/kv/?key=username123", None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["key"], "username123");
    assert_eq!(body["value"], json!(null));
    // The tombstone's version is named, so a client can tell which delete it saw.
    assert_eq!(body["deleted"], true);
    assert!(body["version"].is_string(), "{body}");

    // Path forms.
    let (status, _) = c
        .request(
            Method::PUT,
            1,
            "/kv/path-key",
            Some(json!({"value": {"a": [1, 2]}})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = c.request(Method::GET, 2, "/kv/path-key", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["value"], json!({"a": [1, 2]}));
    let (status, _) = c.request(Method::DELETE, 0, "/kv/path-key", None).await;
    assert_eq!(status, 200);
    let (status, _) = c.request(Method::GET, 1, "/kv/path-key", None).await;
    assert_eq!(status, 404);

    // Upsert: a second write replaces the value.
    c.put(0, "upsert", json!(1)).await;
    c.put(1, "upsert", json!(2)).await;
    assert_eq!(c.get(2, "upsert").await.1["value"], 2);
}

/// II. Replication: POST backup1 to node1, node2's snapshot shows it (all
/// replicas hold it, N=3); PUT at A, GET at B gives the same value.
pub async fn scenario_ii(c: &Cluster) {
    let (status, _) = c.put(0, "backup1", json!("saved")).await;
    assert_eq!(status, 200);
    // Every node is a replica (N = 3 = cluster size); the write waited for a
    // quorum, so poll the other replicas' own snapshots.
    for i in 0..3 {
        crate::wait_for(
            "backup1 in every snapshot",
            std::time::Duration::from_secs(10),
            || async move {
                let (_, body) = c.request(Method::GET, i, "/snapshot/", None).await;
                (body["data"]["backup1"] == "saved").then_some(())
            },
        )
        .await;
    }
    let (_, body) = c.request(Method::GET, 1, "/snapshot/", None).await;
    assert_eq!(body["node"], "node2");
    assert!(body["count"].as_u64().unwrap() >= 1);

    for (a, b) in [(0, 1), (1, 2), (2, 0)] {
        let key = format!("key-x-{a}{b}");
        let value = json!({"from": a, "n": [true, null, 1.5, "ü"]});
        c.put_with(a, &key, value.clone(), "quorum").await;
        let (status, body) = c.get(b, &key).await;
        assert_eq!(status, 200);
        assert_eq!(body["value"], value);
    }
}

/// V. Format: every route takes and returns JSON, errors included.
pub async fn scenario_v(c: &Cluster) {
    for path in [
        "/snapshot/",
        "/cluster/",
        "/health",
        "/kv/route/?key=a",
        "/kv/?key=absent",
    ] {
        let (status, body) = c.request(Method::GET, 0, path, None).await;
        assert!(status == 200 || status == 404, "{path}: {status}");
        assert!(body.is_object(), "{path}");
    }
    let (status, body) = c.request(Method::POST, 0, "/restore/", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["peers"].is_array());
    // Errors are JSON too.
    let (status, body) = c.request(Method::GET, 0, "/no/such/route", None).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    let (status, body) = c.request(Method::PATCH, 0, "/kv/", None).await;
    assert_eq!(status, 405);
    assert_eq!(body["error"]["code"], "method_not_allowed");
    // Values of every JSON type round-trip.
    for (i, v) in [
        json!(null),
        json!(true),
        json!(-3),
        json!(2.5),
        json!("s"),
        json!([1, [2]]),
        json!({"k": {"n": null}}),
    ]
    .into_iter()
    .enumerate()
    {
        let key = format!("type-{i}");
        assert_eq!(c.put(0, &key, v.clone()).await.0, 200);
        let (status, body) = c.get(1, &key).await;
        assert_eq!(status, 200, "{key}");
        assert_eq!(body["value"], v, "{key}");
    }
}

/// VII. End-to-end chain: PUT at node1, GET at node2, DELETE at node3, GET at
/// node1 → null, and the key is gone from every node's snapshot.
pub async fn scenario_vii(c: &Cluster) {
    assert_eq!(c.put(0, "test1", json!("chain")).await.0, 200);
    let (status, body) = c.get(1, "test1").await;
    assert_eq!((status, body["value"].clone()), (200, json!("chain")));
    assert_eq!(c.delete(2, "test1").await.0, 200);
    let (status, body) = c.get(0, "test1").await;
    assert_eq!(status, 404);
    assert_eq!(body["value"], Value::Null);
    for i in 0..3 {
        crate::wait_for(
            "test1 gone from every snapshot",
            std::time::Duration::from_secs(10),
            || async move {
                let (_, body) = c.request(Method::GET, i, "/snapshot/", None).await;
                body["data"].get("test1").is_none().then_some(())
            },
        )
        .await;
        // What remains is a tombstone, so the delete cannot be undone by an old copy.
        let snap = c.snapshot(i).await;
        if let Some(rec) = snap.get("test1") {
            assert_eq!(rec["deleted"], true, "node{}: {rec}", i + 1);
        }
    }
}
