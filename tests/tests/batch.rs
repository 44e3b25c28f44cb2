//! `POST /kv/batch` against three real nodes: results in the batch's
//! order, operations on one key in order, a bad batch refused whole with
//! nothing done, and per-operation failures that leave the others standing.

#![allow(clippy::unwrap_used)]

use kv_tests::{Cluster, Options, json};
use reqwest::Method;
use serde_json::Value;

async fn batch(c: &Cluster, node: usize, query: &str, ops: Value) -> (u16, Value) {
    c.request(
        Method::POST,
        node,
        &format!("/kv/batch{query}"),
        Some(json!({ "ops": ops })),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_runs_each_operation_and_answers_in_order() {
    let mut c = Cluster::start(Options::default()).await;
    let (status, body) = batch(
        &c,
        0,
        "",
        json!([
            {"op": "put", "key": "b1", "value": {"n": 1}},
            {"op": "get", "key": "b1"},
            {"op": "put", "key": "b2", "value": "two"},
            {"op": "delete", "key": "b2"},
            {"op": "get", "key": "b2"},
            {"op": "get", "key": "never"},
            {"op": "put", "key": "b1", "value": {"n": 2}},
        ]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let r = body["results"].as_array().unwrap();
    assert_eq!(r.len(), 7, "{body}");
    let statuses: Vec<u64> = r.iter().map(|x| x["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 404, 404, 200], "{body}");
    let ops: Vec<&str> = r.iter().map(|x| x["op"].as_str().unwrap()).collect();
    assert_eq!(
        ops,
        ["put", "get", "put", "delete", "get", "get", "put"],
        "{body}"
    );
    // One key's operations ran in order: the get saw the put before it.
    assert_eq!(r[1]["value"], json!({"n": 1}), "{body}");
    assert_eq!(r[1]["version"], r[0]["version"], "{body}");
    assert_eq!(r[4]["deleted"], true, "{body}");
    assert_eq!(r[4]["version"], r[3]["version"], "{body}");
    assert!(r[5]["version"].is_null(), "{body}");
    // The writes are the cluster's, read through another node.
    let (status, got) = c.get(2, "b1").await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["value"], json!({"n": 2}));
    assert_eq!(got["version"], r[6]["version"]);
    let (status, _) = c.get(1, "b2").await;
    assert_eq!(status, 404);

    // A bad operation anywhere: 400 naming it, and nothing ran.
    let (status, body) = batch(
        &c,
        1,
        "",
        json!([
            {"op": "put", "key": "b3", "value": 3},
            {"op": "put", "key": "b4"},
        ]),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_batch", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ops[1]"),
        "{body}"
    );
    let (status, _) = c.get(0, "b3").await;
    assert_eq!(status, 404, "a refused batch wrote nothing");
    let many: Vec<Value> = (0..101)
        .map(|i| json!({"op": "get", "key": format!("k{i}")}))
        .collect();
    let (status, body) = batch(&c, 0, "", Value::Array(many)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_batch", "{body}");
    let (status, body) = batch(&c, 0, "?if_absent=true", json!([{"op": "get", "key": "a"}])).await;
    assert_eq!(status, 400, "{body}");

    // 100 operations over 50 keys: every one answered, in order.
    let ops: Vec<Value> = (0..100)
        .map(|i| {
            if i % 2 == 0 {
                json!({"op": "put", "key": format!("m{}", i / 2), "value": i})
            } else {
                json!({"op": "get", "key": format!("m{}", i / 2)})
            }
        })
        .collect();
    let (status, body) = batch(&c, 2, "", Value::Array(ops)).await;
    assert_eq!(status, 200, "{body}");
    for (i, result) in body["results"].as_array().unwrap().iter().enumerate() {
        assert_eq!(result["status"], 200, "ops[{i}]: {result}");
        if i % 2 == 1 {
            assert_eq!(result["value"], json!(i - 1), "ops[{i}]: {result}");
        }
    }

    // One replica down and consistency=all: each write fails on its own
    // (503 naming the node), reads at one still answer, the batch is 200.
    c.kill_api(2);
    let (status, body) = batch(
        &c,
        0,
        "?consistency=all",
        json!([
            {"op": "put", "key": "b5", "value": 5},
            {"op": "get", "key": "b1"},
        ]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let r = body["results"].as_array().unwrap();
    assert_eq!(r[0]["status"], 503, "{body}");
    assert_eq!(r[0]["error"]["code"], "consistency_unreachable", "{body}");
    assert_eq!(r[1]["status"], 503, "all three replicas for a read: {body}");
    let (status, body) = batch(
        &c,
        0,
        "?consistency=one",
        json!([{"op": "get", "key": "b1"}]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["status"], 200, "{body}");
    assert_eq!(body["results"][0]["value"], json!({"n": 2}), "{body}");
}
