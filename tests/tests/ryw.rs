//! Read-your-writes with the token a write answers (`?min_version=`):
//! a sloppy-quorum write lives on a fallback's hint while its replicas
//! miss it; a read with the token still returns it, and repairs the
//! replica it read from. Real redis-server and api processes.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use kv_tests::{Cluster, Options, encode, wait_for};
use reqwest::Method;
use serde_json::{Value, json};
use shared::core::record::Version;
use shared::core::ring::Ring;

async fn sees_down(c: &Cluster, at: usize, ids: &[&str]) -> Option<()> {
    let view = c.cluster_view(at).await;
    let nodes = view["nodes"].as_array()?;
    ids.iter()
        .all(|id| {
            nodes
                .iter()
                .any(|n| n["id"] == *id && n["status"] == "down")
        })
        .then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_with_the_token_sees_a_sloppy_write_its_replicas_miss() {
    // Four nodes, N=3; no worker, so hints stay where they were kept.
    let mut c = Cluster::start(
        Options {
            nodes: 4,
            ..Options::default()
        }
        .env("KV_RESTORE_ON_START", "off")
        .env("KV_ANTI_ENTROPY_INTERVAL_S", "0"),
    )
    .await;
    let ring = Ring::new(c.nodes.iter().map(|n| n.id.clone()), 128);
    let key = "ryw-key";
    let owners: Vec<usize> = ring
        .preference_list(key, 3)
        .iter()
        .map(|id| c.index_of(id))
        .collect();
    let (a, b, d) = (
        owners[0],
        owners[1],
        (0..4).find(|i| !owners.contains(i)).unwrap(),
    );
    let (status, body) = c.put_with(a, key, json!("v1"), "all").await;
    assert_eq!(status, 200, "{body}");
    // Two replicas down: a write through the third is acknowledged by it
    // and by the fallback, which keeps the value as a hint.
    c.kill_api(owners[1]);
    c.kill_api(owners[2]);
    let down = [c.nodes[owners[1]].id.clone(), c.nodes[owners[2]].id.clone()];
    let down_ids: Vec<&str> = down.iter().map(String::as_str).collect();
    wait_for(
        "the others to see two replicas down",
        Duration::from_secs(20),
        || sees_down(&c, a, &down_ids),
    )
    .await;
    let (status, body) = c.put(a, key, json!("v2")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sloppy"], true, "{body}");
    let fallback = &c.nodes[d].id;
    assert!(
        body["acks"].as_array().unwrap().contains(&json!(fallback)),
        "{body}"
    );
    let token = body["version"].as_str().unwrap().to_owned();
    // The replicas return without it (no restore, no anti-entropy, no worker
    // to deliver hints).
    c.restart_api(owners[1]).await;
    c.restart_api(owners[2]).await;
    c.wait_all_see_all_up().await;
    let (status, body) = c.get_with(b, key, "one").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["value"], "v1",
        "without the token: the replica's own copy"
    );
    // With the token: the write, found on the fallback's hint.
    let path = format!(
        "/kv/?key={}&consistency=one&min_version={}",
        encode(key),
        encode(&token)
    );
    let (status, body) = c.request(Method::GET, b, &path, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["value"], "v2", "{body}");
    assert_eq!(body["version"], token.as_str(), "{body}");
    // ... and the replica read from was repaired on the way.
    wait_for("the replica repaired", Duration::from_secs(10), || async {
        let (_, body) = c.get_with(b, key, "one").await;
        (body["value"] == "v2").then_some(())
    })
    .await;
    let view = c.cluster_view(b).await;
    assert!(
        view["stats"]["min_version_found_beyond_replicas"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "{view}"
    );

    // A version nobody holds: 503 after the wait, saying so.
    let mut beyond: Version = token.parse().unwrap();
    beyond.ts.wall_ms += 5_000;
    let path = format!(
        "/kv/?key={}&min_version={}",
        encode(key),
        encode(&beyond.to_string())
    );
    let (status, body) = c.request(Method::GET, a, &path, None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "min_version_unavailable", "{body}");
    assert_eq!(body["error"]["newest"], token.as_str(), "{body}");
    // A token that is not a version: 400, nothing read.
    let (status, body): (u16, Value) = c
        .request(Method::GET, a, "/kv/?key=x&min_version=yesterday", None)
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_min_version", "{body}");
    // A token beyond the drift bound from now: no write answered it.
    let mut future: Version = token.parse().unwrap();
    future.ts.wall_ms += 3_600_000;
    let path = format!(
        "/kv/?key={}&min_version={}",
        encode(key),
        encode(&future.to_string())
    );
    let (status, body) = c.request(Method::GET, a, &path, None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "future_min_version", "{body}");
    // A token older than the tombstone grace on a key nobody holds: its
    // write may have been a deletion since collected, so "missing" meets
    // it at once (404), where a recent one is waited for (503 above).
    let (status, body): (u16, Value) = c
        .request(
            Method::GET,
            a,
            "/kv/?key=never-written&min_version=1000:0:node1",
            None,
        )
        .await;
    assert_eq!(status, 404, "{body}");
}
