//! The promises that broke when tried from outside the usual test
//! conditions: a node with a bad clock, tombstones at volume, counters of
//! work done by workers. Real redis-server and api processes.

use std::time::Duration;

use kv_tests::{Cluster, Options, wait_for};
use serde_json::{Value, json};

/// Node `id` in a `GET /cluster/` view.
fn node_in<'a>(view: &'a Value, id: &str) -> Option<&'a Value> {
    view["nodes"].as_array()?.iter().find(|n| n["id"] == id)
}

/// A node whose start-up probe waits on a peer that accepts connections
/// and never answers still serves `/health` at once (nodes started together
/// probe each other: each must answer while its own probes wait), and holds
/// client requests until that probe round ends, then serves them.
#[tokio::test(flavor = "multi_thread")]
async fn a_starting_node_answers_probes_while_its_own_wait() {
    let mut c = Cluster::start(Options {
        nodes: 1,
        ..Options::default()
    })
    .await;
    // Never accepted: the kernel completes the handshakes, nobody answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let ghost = silent.local_addr().expect("address");
    // A fresh Redis: KV_PEERS is the topology (a kept one would win).
    c.wipe_node(0).await;
    let url = c.url(0);
    c.nodes[0].env = vec![
        (
            "KV_PEERS".to_owned(),
            format!("node1={url},ghost=http://{ghost}"),
        ),
        ("KV_PEER_TIMEOUT_MS".to_owned(), "120000".to_owned()),
    ];
    // Waits for /health (60 s at most): served while the probe waits.
    c.restart_api(0).await;
    // Every call bounded (15 s), the held one too (60 s).
    let http = kv_tests::http_client(None);
    let health = |c: &Cluster| {
        let http = http.clone();
        let url = format!("{}/health", c.url(0));
        async move {
            let response = http.get(url).send().await.expect("/health");
            response.json::<Value>().await.expect("/health JSON")
        }
    };
    let body = health(&c).await;
    assert_eq!(body["clock_measured"], false, "{body}");
    let held = tokio::spawn({
        let request = http
            .get(format!("{url}/cluster/"))
            .timeout(Duration::from_secs(60));
        async move {
            let response = request.send().await?;
            Ok::<_, reqwest::Error>((response.status().as_u16(), response.json::<Value>().await?))
        }
    });
    // Held, not answered: in flight beside the scrape that counts it.
    wait_for(
        "the client request held in flight",
        Duration::from_secs(10),
        || async {
            let text = http
                .get(format!("{url}/metrics"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            let in_flight = text
                .lines()
                .find_map(|l| l.strip_prefix("kv_http_requests_in_flight "))?
                .trim()
                .parse::<f64>()
                .ok()?;
            (in_flight >= 2.0).then_some(())
        },
    )
    .await;
    assert!(
        !held.is_finished(),
        "a client request was served before the probes"
    );
    let body = health(&c).await;
    assert_eq!(body["clock_measured"], false, "{body}");
    // The peer goes away: its call fails, the round ends, the request is
    // served, and what it shows was measured after the round: the peer's
    // failed probe (a request served before would show it `unknown`).
    drop(silent);
    let (status, view) = held.await.expect("join").expect("the held request");
    assert_eq!(status, 200, "{view}");
    let ghost = node_in(&view, "ghost").unwrap_or_else(|| panic!("ghost in {view}"));
    assert!(
        ghost["status"] == "suspect" || ghost["status"] == "down",
        "served before the start-up probe ended: {ghost}"
    );
    let body = health(&c).await;
    assert_eq!(body["clock_measured"], true, "{body}");
}

/// Another node serving a peer's address (ports swapped or reused, a peer
/// list gone wrong) does not make that peer up: node1 is told node2 lives
/// at node3's address, and sees node2 down while node3 answers there.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_answering_at_a_peers_address_is_not_that_peer() {
    let mut c = Cluster::start(Options::default()).await;
    // A fresh Redis: KV_PEERS is the topology (a kept one would win).
    c.wipe_node(0).await;
    let (own, third) = (c.url(0), c.url(2));
    c.nodes[0].env = vec![(
        "KV_PEERS".to_owned(),
        format!("node1={own},node2={third},node3={third}"),
    )];
    c.restart_api(0).await;
    let view = wait_for(
        "node1 to see node2 down",
        Duration::from_secs(20),
        || async {
            let view = c.cluster_view(0).await;
            (node_in(&view, "node2")?["status"] == "down").then_some(view)
        },
    )
    .await;
    let node3 = node_in(&view, "node3").unwrap_or_else(|| panic!("node3 in {view}"));
    assert_eq!(node3["status"], "up", "{view}");
}

/// node3's clock 10 minutes ahead (drift bound 60 s): it refuses to
/// coordinate writes (503 `clock_skew`), and no read through any node
/// returns a version it made; writes through the others go on.
#[tokio::test(flavor = "multi_thread")]
async fn a_fast_node_is_fenced_and_loses_no_acknowledged_write() {
    let mut c = Cluster::start(Options::default().env("KV_PROBE_INTERVAL_MS", "200")).await;
    c.wait_all_see_all_up().await;
    c.kill_api(2);
    c.nodes[2].env = vec![("KV_CLOCK_OFFSET_MS".to_owned(), "600000".to_owned())];
    c.restart_api(2).await;
    // Fenced before its first write: client requests wait for the start-up
    // probes, which measure the peers' clocks.
    let (status, body) = c.put(2, "fence-probe", json!("x")).await;
    assert_eq!(status, 503, "the first write through the fast node: {body}");
    assert_eq!(body["error"]["code"], "clock_skew", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("clock")),
        "{body}"
    );
    let keys: Vec<String> = (0..20).map(|i| format!("skew-{i}")).collect();
    for key in &keys {
        let (status, body) = c.put(2, key, json!("a")).await;
        assert_eq!(status, 503, "a write through the fast node: {body}");
        assert_eq!(body["error"]["code"], "clock_skew", "{body}");
        let (status, body) = c.put(0, key, json!("b")).await;
        assert_eq!(status, 200, "a write through node1: {body}");
    }
    let mut stale = Vec::new();
    for key in &keys {
        for node in 0..3 {
            let (status, body) = c.get(node, key).await;
            if status != 200 || body["value"] != "b" {
                stale.push(format!("{key} via node{}: {status} {body}", node + 1));
            }
        }
    }
    assert!(stale.is_empty(), "{} of 60 reads: {stale:?}", stale.len());
    // The fast node never stored its refused writes.
    let data = c.snapshot(2).await;
    for key in &keys {
        assert_ne!(
            data.get(key).map(|r| &r["value"]),
            Some(&json!("a")),
            "{key} on node3"
        );
    }
}

/// Far more tombstones than one internal read may carry are collected in a
/// few rounds, with background sync on; GC runs in the workers, and their
/// counters show in the API's `/cluster/` and `/metrics`.
#[tokio::test(flavor = "multi_thread")]
async fn tombstones_are_collected_at_volume_and_workers_counters_show() {
    let c = Cluster::start(
        Options {
            workers: 1,
            ..Options::default()
        }
        .env("KV_TOMBSTONE_GRACE_S", "2")
        .env("KV_HINT_WINDOW_S", "1")
        .env("KV_GC_INTERVAL_S", "1"),
    )
    .await;
    c.wait_all_see_all_up().await;
    // 1,500 keys written then deleted, 1,000 deletes of keys never written:
    // 2,500 tombstones per node, past the 1,000-key bound of /internal/read
    // (`GC_TEST_TOMBSTONES` scales it: 60% written then deleted, 40% never
    // written).
    let total: usize = std::env::var("GC_TEST_TOMBSTONES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_500);
    let written = total * 3 / 5;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8usize {
        let urls: Vec<String> = (0..3).map(|i| c.url(i)).collect();
        let http = c.http.clone();
        tasks.spawn(async move {
            for i in (worker..total).step_by(8) {
                let key = format!("gc-{i}");
                let url = &urls[i % 3];
                if i < written {
                    let put = http
                        .post(format!("{url}/kv/"))
                        .json(&json!({ "key": key, "value": i }))
                        .send()
                        .await
                        .map(|r| r.status().as_u16());
                    assert_eq!(put.ok(), Some(200), "put {key}");
                }
                let del = http
                    .delete(format!("{url}/kv/?key={key}&consistency=all"))
                    .send()
                    .await
                    .map(|r| r.status().as_u16());
                assert_eq!(del.ok(), Some(200), "delete {key}");
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("client task");
    }
    // Every delete was acknowledged by all three replicas (consistency=all),
    // so each node held `total` tombstones (collection may already have begun).
    let runs_before = c.cluster_view(0).await["stats"]["gc_runs"]
        .as_u64()
        .unwrap_or(0);
    let deleted_at = std::time::Instant::now();
    for node in 0..3 {
        wait_for(
            &format!("node{} collects every tombstone", node + 1),
            Duration::from_secs(120),
            || async { c.snapshot(node).await.is_empty().then_some(()) },
        )
        .await;
    }
    let runs = c.cluster_view(0).await["stats"]["gc_runs"]
        .as_u64()
        .unwrap_or(0);
    eprintln!(
        "{total} tombstones per node collected on every node {:?} after the last delete, node1's GC rounds meanwhile: {}",
        deleted_at.elapsed(),
        runs.saturating_sub(runs_before)
    );
    // The workers did the collecting; the API's views count it.
    let view: Value = wait_for("node1 counts the GC", Duration::from_secs(10), || async {
        let view = c.cluster_view(0).await;
        let collected = view["stats"]["tombstones_collected"].as_u64().unwrap_or(0);
        (collected >= total as u64 && view["stats"]["gc_runs"].as_u64().unwrap_or(0) > 0)
            .then_some(view)
    })
    .await;
    assert!(view["stats"]["writes"].as_u64().unwrap_or(0) > 0, "{view}");
    let metrics = c
        .http
        .get(format!("{}/metrics", c.url(0)))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    let line = metrics
        .lines()
        .find(|l| l.starts_with("kv_tombstones_collected_total"))
        .unwrap_or_default();
    let value: u64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(value >= total as u64, "metrics line {line:?}");
}
