//! Riak's kv679 against real processes (issue 14, finding 4): a write that
//! reaches an owner late — through a hint, or through a replication job
//! that waited in a stopped worker's queue — must not bring back a key
//! whose delete the other replicas have since collected.
//!
//! 5 nodes, N=3, tombstone grace 3 s, GC every 1 s, hint window 1 s, hint
//! delivery every 8 s, restore on start off, anti-entropy every 30 s: all
//! accepted settings, chosen so that GC runs between an owner's return and
//! the late delivery. The sleeps below are the scenario's schedule (the
//! hint window and the grace passing), not waits for a condition; every
//! condition is polled with a deadline.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use kv_tests::{Cluster, Options, tail, wait_for};
use serde_json::{Value, json};
use shared::core::ring::Ring;

const NODES: usize = 5;
const KEYS: usize = 10;
const GRACE: Duration = Duration::from_secs(3);
const HINT_WINDOW: Duration = Duration::from_secs(1);
/// Beyond a bound, so the schedule is past it whatever the rounding.
const MARGIN: Duration = Duration::from_millis(700);

fn options() -> Options {
    Options {
        nodes: NODES,
        workers: 1,
        ..Options::default()
    }
    .env("KV_TOMBSTONE_GRACE_S", &GRACE.as_secs().to_string())
    .env("KV_GC_INTERVAL_S", "1")
    .env("KV_HINT_WINDOW_S", &HINT_WINDOW.as_secs().to_string())
    .env("KV_HINT_DELIVERY_INTERVAL_MS", "8000")
    .env("KV_RESTORE_ON_START", "off")
    .env("KV_ANTI_ENTROPY_INTERVAL_S", "30")
    .env("KV_PROBE_INTERVAL_MS", "200")
}

/// `KEYS` keys whose preference list (the nodes' own ring: default vnodes,
/// N=3) satisfies `pred`.
fn keys_where(c: &Cluster, prefix: &str, pred: impl Fn(&[&str]) -> bool) -> Vec<String> {
    let ring = Ring::new(c.nodes.iter().map(|n| n.id.clone()), 128);
    (0..)
        .map(|n| format!("{prefix}{n}"))
        .filter(|k| pred(&ring.preference_list(k, 3)))
        .take(KEYS)
        .collect()
}

fn stat(view: &Value, name: &str) -> u64 {
    view["stats"][name].as_u64().unwrap_or(0)
}

/// Every node's count of tombstone-collection rounds (node-wide: its
/// workers run GC).
/// Each test runs a 5-node cluster: one at a time, so their timings are not
/// stretched by the other's processes on a small machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn gc_runs(c: &Cluster) -> Vec<u64> {
    let mut runs = Vec::with_capacity(NODES);
    for i in 0..NODES {
        runs.push(stat(&c.cluster_view(i).await, "gc_runs"));
    }
    runs
}

/// Waits until each of `nodes` has run at least `rounds` more GC rounds
/// than now.
async fn wait_gc_rounds(c: &Cluster, nodes: &[usize], rounds: u64) {
    let since = gc_runs(c).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = gc_runs(c).await;
        if nodes.iter().all(|&i| now[i] >= since[i] + rounds) {
            return;
        }
        if Instant::now() >= deadline {
            let stalled: Vec<String> = nodes
                .iter()
                .filter(|&&i| now[i] < since[i] + rounds)
                .map(|&i| {
                    let tail = tail(&c.worker_logs(i), 80);
                    format!("node{}'s workers (last lines):\n{tail}", i + 1)
                })
                .collect();
            panic!(
                "timed out waiting for {rounds} more GC rounds on nodes {nodes:?} than {since:?}: now {now:?}\n{:#?}\n{}",
                late_delivery_stats(c).await,
                stalled.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Hints held anywhere, for any owner.
async fn hints_held(c: &Cluster) -> u64 {
    let mut total = 0;
    for i in 0..NODES {
        let view = c.cluster_view(i).await;
        for n in view["nodes"].as_array().into_iter().flatten() {
            total += n["hints_held_here"].as_u64().unwrap_or(0);
        }
    }
    total
}

/// The deleted keys found again: a read through any node that is not a
/// 404, or a value (not a tombstone) in any node's local data.
async fn resurrected(c: &Cluster, keys: &[String]) -> Vec<String> {
    let mut back = Vec::new();
    for key in keys {
        for i in 0..NODES {
            let (status, body) = c.get(i, key).await;
            if status != 404 {
                back.push(format!("{key} read via node{}: {status} {body}", i + 1));
            }
        }
    }
    for i in 0..NODES {
        let data = c.snapshot(i).await;
        for key in keys {
            if let Some(record) = data.get(key)
                && record["deleted"] != true
            {
                back.push(format!("{key} held by node{}: {record}", i + 1));
            }
        }
    }
    back
}

/// The counters that tell what happened to late deliveries, per node.
async fn late_delivery_stats(c: &Cluster) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..NODES {
        let view = c.cluster_view(i).await;
        let names = [
            "hints_kept",
            "hints_delivered",
            "hints_expired",
            "jobs_expired",
            "tombstones_collected",
            "gc_runs",
        ];
        let figures: Vec<String> = names
            .iter()
            .map(|n| format!("{n}={}", stat(&view, n)))
            .collect();
        out.push(format!("node{}: {}", i + 1, figures.join(" ")));
    }
    out
}

/// node3, a replica of the keys, is down; each key is written through
/// node1 (a replica too), which keeps a hint for node3; past the hint
/// window each key is deleted through node1 (no hint kept: the window is
/// over); past the grace node3 returns, empty for these keys. GC may ask
/// node3 about the tombstones before the hint arrives; the hint, older than
/// the grace, must then never be delivered.
#[tokio::test(flavor = "multi_thread")]
async fn a_hint_older_than_the_grace_does_not_bring_a_deleted_key_back() {
    let _one_cluster_at_a_time = ONE_AT_A_TIME.lock().await;
    let mut c = Cluster::start(options()).await;
    let (coordinator, owner) = (0, 2);
    let owner_id = c.nodes[owner].id.clone();
    let keys = keys_where(&c, "kv679-hint-", |r| {
        r.contains(&"node1") && r.contains(&"node3")
    });
    c.kill_workers(owner);
    c.kill_api(owner);
    wait_for(
        "node1 to see node3 down",
        Duration::from_secs(20),
        || async {
            let view = c.cluster_view(coordinator).await;
            view["nodes"]
                .as_array()?
                .iter()
                .any(|n| n["id"] == owner_id.as_str() && n["status"] == "down")
                .then_some(())
        },
    )
    .await;

    for key in &keys {
        let (status, body) = c.put(coordinator, key, json!("before-delete")).await;
        assert_eq!(status, 200, "write {key}: {body}");
        assert_eq!(body["acks"].as_array().map(Vec::len), Some(2), "{body}");
        let hint = json!({ "owner": owner_id, "holder": "node1" });
        assert!(
            body["hints"].as_array().is_some_and(|h| h.contains(&hint)),
            "write {key}: node1 must keep the hint for node3: {body}"
        );
    }
    tokio::time::sleep(HINT_WINDOW + MARGIN).await;
    for key in &keys {
        let (status, body) = c.delete(coordinator, key).await;
        assert_eq!(status, 200, "delete {key}: {body}");
        let hinted_owner = body["hints"]
            .as_array()
            .is_some_and(|h| h.iter().any(|p| p["owner"] == owner_id.as_str()));
        assert!(
            !hinted_owner,
            "past the hint window no hint is kept for the tombstone: {body}"
        );
    }
    tokio::time::sleep(GRACE + MARGIN).await;

    c.restart_api(owner).await;
    c.restart_workers(owner);
    let all: Vec<usize> = (0..NODES).collect();
    wait_gc_rounds(&c, &all, 1).await;
    wait_for(
        "the hints for node3 to be delivered or dropped",
        Duration::from_secs(30),
        || async { (hints_held(&c).await == 0).then_some(()) },
    )
    .await;
    wait_gc_rounds(&c, &all, 2).await;

    let back = resurrected(&c, &keys).await;
    assert!(
        back.is_empty(),
        "{} deleted keys came back: {back:#?}\n{:#?}",
        back.len(),
        late_delivery_stats(&c).await
    );
}

/// The queued-job path: node1, not a replica of the keys, coordinates the
/// writes with its worker stopped, so the third replica's copy of each
/// write waits in node1's queue past the grace; then the worker starts.
/// Half the keys are deleted through node1 too (their tombstones wait in
/// the same queue: the sequence), half through node2, not a replica
/// either, whose worker delivers the tombstones at once, so GC collects
/// them on every replica before node1's old copies arrive. The jobs, older
/// than the grace, must bring no deleted key back.
#[tokio::test(flavor = "multi_thread")]
async fn a_replication_job_older_than_the_grace_does_not_bring_a_deleted_key_back() {
    let _one_cluster_at_a_time = ONE_AT_A_TIME.lock().await;
    let mut c = Cluster::start(options()).await;
    let (coordinator, deleter) = (0, 1);
    let keys = keys_where(&c, "kv679-job-", |r| {
        !r.contains(&"node1") && !r.contains(&"node2")
    });
    c.kill_workers(coordinator);

    let mut pending = Vec::new();
    for key in &keys {
        let (status, body) = c.put(coordinator, key, json!("before-delete")).await;
        assert_eq!(status, 200, "write {key}: {body}");
        assert_eq!(body["acks"].as_array().map(Vec::len), Some(2), "{body}");
        assert_eq!(
            body["pending"].as_array().map(Vec::len),
            Some(1),
            "write {key}: the third replica's copy is queued: {body}"
        );
        pending.push(body["pending"][0].clone());
    }
    tokio::time::sleep(HINT_WINDOW + MARGIN).await;
    let (through_node1, through_node2) = keys.split_at(KEYS / 2);
    for (n, key) in keys.iter().enumerate() {
        let via = if n < through_node1.len() {
            coordinator
        } else {
            deleter
        };
        let (status, body) = c.delete(via, key).await;
        assert_eq!(status, 200, "delete {key}: {body}");
        assert_eq!(
            body["pending"].as_array(),
            Some(&vec![pending[n].clone()]),
            "delete {key}: the same replica gets the tombstone through a job: {body}"
        );
    }
    tokio::time::sleep(GRACE + MARGIN).await;
    // The tombstones deleted through node2 reached every replica: GC
    // collects them everywhere while node1's queue still holds the values.
    wait_for(
        "the tombstones deleted through node2 to be collected on every node",
        Duration::from_secs(30),
        || async {
            for i in 0..NODES {
                let data = c.snapshot(i).await;
                if through_node2.iter().any(|k| data.contains_key(k)) {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    let others: Vec<usize> = (0..NODES).filter(|&i| i != coordinator).collect();
    wait_gc_rounds(&c, &others, 2).await;

    c.restart_workers(coordinator);
    wait_for(
        "node1's replication queue to drain",
        Duration::from_secs(30),
        || async {
            let view = c.cluster_view(coordinator).await;
            let queues = view["jobs"]["queues"].as_array()?;
            let replicate = queues.iter().find(|q| {
                q["queue"]
                    .as_str()
                    .is_some_and(|n| n.ends_with(":replicate"))
            })?;
            let busy = ["depth", "in_flight", "retrying"]
                .iter()
                .map(|f| replicate[*f].as_u64().unwrap_or(1))
                .sum::<u64>();
            (busy == 0 && replicate["workers"].as_u64() > Some(0)).then_some(())
        },
    )
    .await;
    let all: Vec<usize> = (0..NODES).collect();
    wait_gc_rounds(&c, &all, 2).await;

    let back = resurrected(&c, &keys).await;
    assert!(
        back.is_empty(),
        "{} deleted keys came back: {back:#?}\n{:#?}",
        back.len(),
        late_delivery_stats(&c).await
    );
}
