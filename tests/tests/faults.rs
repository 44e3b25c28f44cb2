//! Node failures: SIGKILL of a node, consistency levels with a node down,
//! restart and restore (seed scenario III).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use kv_tests::{Cluster, Options, json, key_with_primary, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_survives_a_killed_node_and_all_reports_who_is_missing() {
    let mut c = Cluster::start(Options::default()).await;
    c.put(0, "before", json!("crash")).await;
    c.kill_api(2); // SIGKILL node3

    // Quorum writes and reads through the other two still succeed.
    for i in 0..20 {
        let key = format!("during-{i}");
        let (status, body) = c.put(i % 2, &key, json!(i)).await;
        assert_eq!(status, 200, "{body}");
        let acks: Vec<&str> = body["acks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(!acks.contains(&"node3"), "{body}");
        let (status, body) = c.get((i + 1) % 2, &key).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["value"], i);
    }
    assert_eq!(c.get(1, "before").await.1["value"], "crash");

    // consistency=all cannot be met: 503 naming the nodes that answered and the missing one.
    let (status, body) = c.put_with(0, "strict", json!(1), "all").await;
    assert_eq!(status, 503, "{body}");
    let err = &body["error"];
    assert_eq!(err["code"], "consistency_unreachable");
    assert_eq!(err["required"], 3);
    let answered: Vec<&str> = err["answered"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        answered.contains(&"node1") && answered.contains(&"node2"),
        "{body}"
    );
    assert!(
        err["failed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["node"] == "node3"),
        "{body}"
    );
    assert!(err["message"].as_str().unwrap().contains("node1"));
    let (status, body) = c.get_with(1, "before", "all").await;
    assert_eq!(status, 503, "{body}");

    // consistency=one still works.
    assert_eq!(c.put_with(1, "loose", json!(1), "one").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_down_refuse_quorum_writes() {
    let mut c = Cluster::start(Options::default()).await;
    c.kill_api(1);
    c.kill_api(2);
    let (status, body) = c.put(0, "lonely", json!(1)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["answered"], json!(["node1"]));
    let (status, _) = c.put_with(0, "lonely", json!(1), "one").await;
    assert_eq!(status, 200);
}

/// Seed scenario III: node2 stops; a key whose primary is node2 is written
/// through node1; node2 starts again and restores it from a live node, seen
/// in node2's own snapshot without any client read of the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_restores_what_it_missed() {
    let mut c = Cluster::start(Options::default()).await;
    let key = key_with_primary(&c, "node2", "crash_test").await;
    c.kill_api(1);
    let (status, body) = c.put(0, &key, json!("written while node2 was down")).await;
    assert_eq!(status, 200, "{body}");
    let version = body["version"].as_str().unwrap().to_owned();
    // node2 could not be reached: a hint for it is kept (on node1, the only
    // other node: with 3 nodes and N=3 there is no fallback beyond the list).
    assert_eq!(
        body["hints"],
        json!([{"owner": "node2", "holder": "node1"}]),
        "{body}"
    );
    let (status, body) = c.delete(0, "never-existed").await;
    assert_eq!(status, 200, "{body}");

    c.restart_api(1).await;
    let snap = wait_for("node2 to restore the key", Duration::from_secs(20), || {
        let c = &c;
        let key = key.clone();
        async move {
            let snap = c.snapshot(1).await;
            snap.contains_key(&key).then_some(snap)
        }
    })
    .await;
    assert_eq!(snap[&key]["version"], version.as_str());
    assert_eq!(snap[&key]["value"], "written while node2 was down");
    // Tombstones are restored too, so an old copy cannot resurrect a delete.
    assert_eq!(snap["never-existed"]["deleted"], true);

    // Restoring again moves nothing: everything is already current.
    let (status, report) = c.request(reqwest::Method::POST, 1, "/restore/", None).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["stored"], 0, "{report}");
    assert_eq!(
        report["received"], 0,
        "identical trees move no record: {report}"
    );
    assert_eq!(report["peers_synced"], 2, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_repair_fixes_a_stale_replica() {
    // Restore at start is off, so only read repair can fix node3.
    let mut c = Cluster::start(Options::default().env("KV_RESTORE_ON_START", "off")).await;
    assert_eq!(c.put_with(0, "repair-me", json!("old"), "all").await.0, 200);
    // node3 misses the update while it is down and comes back stale ...
    c.kill_api(2);
    c.put(0, "repair-me", json!("new")).await;
    c.restart_api(2).await;
    assert_eq!(c.snapshot(2).await["repair-me"]["value"], "old");
    // ... a read through any node returns the newest version and repairs node3.
    let (_, body) = c.get_with(2, "repair-me", "all").await;
    assert_eq!(body["value"], "new");
    wait_for("node3 repaired", Duration::from_secs(10), || {
        let c = &c;
        async move {
            let snap = c.snapshot(2).await;
            (snap.get("repair-me").map(|r| r["value"].clone()) == Some(json!("new"))).then_some(())
        }
    })
    .await;
}

/// A coordinator whose clock is behind must not acknowledge a write that an
/// earlier, acknowledged write already shadows: it learns the newer version
/// and stamps its write above it (found by the chaos harness's clock skew).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_slow_clock_still_writes_last() {
    let mut c = Cluster::start(Options::default()).await;
    c.kill_api(0);
    c.nodes[0].env = vec![("KV_CLOCK_OFFSET_MS".to_owned(), "-5000".to_owned())];
    c.restart_api(0).await;

    let (status, first) = c.put(1, "skewed", json!("first, via node2")).await;
    assert_eq!(status, 200, "{first}");
    let (status, second) = c.put(0, "skewed", json!("second, via node1")).await;
    assert_eq!(status, 200, "{second}");
    let v1: shared::core::record::Version = first["version"].as_str().unwrap().parse().unwrap();
    let v2: shared::core::record::Version = second["version"].as_str().unwrap().parse().unwrap();
    assert!(
        v2 > v1,
        "the later write must carry the higher version: {first} vs {second}"
    );
    for i in 0..3 {
        let (_, body) = c.get_with(i, "skewed", "all").await;
        assert_eq!(body["value"], "second, via node1", "{body}");
    }
    assert_eq!(c.cluster_view(0).await["stats"]["writes_restamped"], 1);
}
