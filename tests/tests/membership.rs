#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

//! Elastic membership against real processes: a loaded cluster grows from
//! 3 to 5 nodes and shrinks back to 3 (`POST` / `DELETE /cluster/members`)
//! while clients write and read at quorum, and every acknowledged write is
//! checked on its own: none lost, no delete undone, no quorum read older
//! than a write acknowledged before it began. After each step every key is
//! on exactly its owners in the new ring, and the bytes moved are compared
//! with the share the new ring assigns.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use kv_tests::{Cluster, Options, encode, json, wait_for};
use serde_json::Value;
use shared::core::topology::{Placement, Topology};

/// Keys loaded before the first step (never changed), and their value size.
const LOADED_KEYS: usize = 3_000;
const VALUE_BYTES: usize = 1_000;
const WRITERS: usize = 4;
const KEYS_PER_WRITER: usize = 40;
const READERS: usize = 2;

/// One key's history, written by one writer only (ops in order, seq from 1).
#[derive(Default, Clone)]
struct KeyLog {
    /// `ops[seq - 1]`: whether op `seq` was a delete.
    deletes: Vec<bool>,
    /// The highest acknowledged seq (0: none).
    acked: usize,
    /// The highest seq acknowledged strictly, on its preference list: what
    /// a quorum read must see. A sloppy write (`"sloppy": true`, stored on
    /// a fallback while an owner was marked down, as happens when probes
    /// time out on an overloaded machine) reaches the owners by hinted
    /// handoff, later; the contract promises strict reads only after
    /// strict writes, as the chaos checker holds too.
    acked_strict: usize,
    /// Acknowledged seqs that were sloppy.
    sloppy: Vec<usize>,
}

impl KeyLog {
    /// Whether a read answering `seen` (a value's seq, or `None` for 404)
    /// is allowed once ops up to `floor` were acknowledged.
    fn allows(&self, floor: usize, seen: Option<usize>) -> bool {
        match seen {
            Some(seq) => seq >= floor && seq <= self.deletes.len() && !self.deletes[seq - 1],
            // Missing: nothing acknowledged yet, or a delete at or after the floor.
            None => floor == 0 || self.deletes[floor - 1..].iter().any(|d| *d),
        }
    }
}

/// A client operation's outcome, for error rates and latency per step.
struct Sample {
    at: Instant,
    ms: f64,
    ok: bool,
}

/// What the client tasks share with the test.
struct Load {
    logs: Mutex<BTreeMap<String, KeyLog>>,
    samples: Mutex<Vec<Sample>>,
    violations: Mutex<Vec<String>>,
    /// Nodes clients talk to (members only; a leaving node is drained first).
    targets: RwLock<Vec<String>>,
    stop: AtomicBool,
    /// Held while a step's placement check runs: clients wait.
    pause: tokio::sync::RwLock<()>,
    started: Instant,
}

fn value_seq(body: &Value) -> Option<usize> {
    body["value"]["seq"].as_u64().map(|s| s as usize)
}

async fn writer(load: Arc<Load>, w: usize) {
    let http = kv_tests::client_builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .unwrap();
    let mut n = 0usize;
    while !load.stop.load(Ordering::Relaxed) {
        let _running = load.pause.read().await;
        n += 1;
        let key = format!("w{w}-{}", n % KEYS_PER_WRITER);
        let delete = n.is_multiple_of(7);
        let seq = {
            let mut logs = load.logs.lock().unwrap();
            let log = logs.entry(key.clone()).or_default();
            log.deletes.push(delete);
            log.deletes.len()
        };
        let target = {
            let targets = load.targets.read().unwrap();
            targets[n % targets.len()].clone()
        };
        let url = format!("{target}/kv/?key={}&consistency=quorum", encode(&key));
        let started = Instant::now();
        let sent = if delete {
            http.delete(&url).send().await
        } else {
            http.put(&url)
                .json(&json!({"key": key, "value": {"w": w, "seq": seq}}))
                .send()
                .await
        };
        let ok = matches!(&sent, Ok(r) if r.status().is_success() || (delete && r.status() == 404));
        let body: Value = match sent {
            Ok(r) if ok => r.json().await.unwrap_or(Value::Null),
            _ => Value::Null,
        };
        if ok {
            let mut logs = load.logs.lock().unwrap();
            let log = logs.get_mut(&key).unwrap();
            log.acked = log.acked.max(seq);
            if body["sloppy"] == true {
                log.sloppy.push(seq);
            } else {
                log.acked_strict = log.acked_strict.max(seq);
            }
        }
        load.samples.lock().unwrap().push(Sample {
            at: started,
            ms: started.elapsed().as_secs_f64() * 1e3,
            ok,
        });
    }
}

async fn reader(load: Arc<Load>, r: usize) {
    let http = kv_tests::client_builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .unwrap();
    let mut n = r * 7;
    while !load.stop.load(Ordering::Relaxed) {
        let _running = load.pause.read().await;
        n += 1;
        let key = format!("w{}-{}", n % WRITERS, n % KEYS_PER_WRITER);
        let floor = load
            .logs
            .lock()
            .unwrap()
            .get(&key)
            .map_or(0, |l| l.acked_strict);
        let target = {
            let targets = load.targets.read().unwrap();
            targets[n % targets.len()].clone()
        };
        let url = format!("{target}/kv/?key={}&consistency=quorum", encode(&key));
        let started = Instant::now();
        let answer = match http.get(&url).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                Some((status, body))
            }
            Err(_) => None,
        };
        let ok = matches!(answer, Some((200 | 404, _)));
        load.samples.lock().unwrap().push(Sample {
            at: started,
            ms: started.elapsed().as_secs_f64() * 1e3,
            ok,
        });
        let Some((status @ (200 | 404), body)) = answer else {
            continue;
        };
        let seen = if status == 200 {
            value_seq(&body)
        } else {
            None
        };
        let logs = load.logs.lock().unwrap();
        let log = logs.get(&key).cloned().unwrap_or_default();
        if !log.allows(floor, seen) {
            load.violations.lock().unwrap().push(format!(
                "stale strict read of {key} from {target} at {:.1} s: saw {seen:?}, acknowledged up to {floor} (sloppy acks: {:?}; answer {body})",
                load.started.elapsed().as_secs_f64(),
                log.sloppy
            ));
        }
    }
}

impl Load {
    fn start(c: &Cluster) -> (Arc<Load>, Vec<tokio::task::JoinHandle<()>>) {
        let load = Arc::new(Load {
            logs: Mutex::default(),
            samples: Mutex::default(),
            violations: Mutex::default(),
            targets: RwLock::new((0..c.nodes.len()).map(|i| c.url(i)).collect()),
            stop: AtomicBool::default(),
            pause: tokio::sync::RwLock::default(),
            started: Instant::now(),
        });
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            tasks.push(tokio::spawn(writer(Arc::clone(&load), w)));
        }
        for r in 0..READERS {
            tasks.push(tokio::spawn(reader(Arc::clone(&load), r)));
        }
        (load, tasks)
    }

    /// Error rate and p99 (ms) of the client operations started in `since..until`.
    fn window(&self, since: Instant, until: Instant) -> (usize, f64, f64) {
        let samples = self.samples.lock().unwrap();
        let mut ms: Vec<f64> = Vec::new();
        let mut errors = 0usize;
        for s in samples.iter().filter(|s| s.at >= since && s.at < until) {
            ms.push(s.ms);
            if !s.ok {
                errors += 1;
            }
        }
        ms.sort_by(f64::total_cmp);
        let p99 = ms
            .get((ms.len() * 99 / 100).min(ms.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0);
        let rate = if ms.is_empty() {
            0.0
        } else {
            errors as f64 / ms.len() as f64
        };
        (ms.len(), rate, p99)
    }
}

/// Waits until the change driven by node `via` is done; returns its progress.
async fn change_done(c: &Cluster, via: usize) -> Value {
    let view = c
        .change_finished(via, Duration::from_secs(240))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(view["change"]["state"], "done", "{view}");
    view
}

/// Bytes of a record as the pulls count them (key, version, value).
fn record_bytes(key: &str, value: &Value) -> u64 {
    (key.len() + 32 + value.to_string().len()) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_loaded_cluster_grows_to_five_and_shrinks_to_three_under_load() {
    let mut c = Cluster::start(Options {
        workers: 1,
        ..Options::default()
    })
    .await;
    // The load: keys that never change, through batches.
    let pad = "x".repeat(VALUE_BYTES);
    let mut loaded_bytes = 0u64;
    let mut ops = Vec::new();
    for k in 0..LOADED_KEYS {
        let (key, value) = (format!("load-{k}"), json!({"k": k, "pad": pad}));
        loaded_bytes += record_bytes(&key, &value);
        ops.push(json!({"op": "put", "key": key, "value": value}));
    }
    load_keys(&c, ops).await;
    let (load, tasks) = Load::start(&c);
    // A non-member refuses client requests; a bad join is refused whole.
    let n4 = c.add_node().await;
    let (status, body) = c.get(n4, "load-1").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("not_a_member")),
        "{body}"
    );
    for (bad, code) in [
        (json!({"id": "node4"}), "bad_member"),
        (
            json!({"id": "no de", "url": "http://127.0.0.1:1"}),
            "bad_member",
        ),
        (json!({"id": "node9", "url": "ftp://x"}), "bad_member"),
        (json!({"id": "node1", "url": c.url(0)}), "already_member"),
    ] {
        let (status, body) = c
            .admin(
                reqwest::Method::POST,
                0,
                "/cluster/members",
                Some(bad.clone()),
            )
            .await;
        assert_eq!(body["error"]["code"], code, "{bad}: {status} {body}");
    }
    let (status, _) = c
        .request(
            reqwest::Method::POST,
            0,
            "/cluster/members",
            Some(json!({"id": "node4", "url": c.url(n4)})),
        )
        .await;
    assert_eq!(status, 403, "a join needs the cluster secret");

    let mut report = Vec::new();
    let steps: Vec<(&str, usize)> = vec![("join", 3), ("join", 4), ("leave", 1), ("leave", 3)];
    let mut members: BTreeSet<usize> = [0, 1, 2].into();
    for (step, (kind, index)) in steps.into_iter().enumerate() {
        let index = if kind == "join" && index >= c.nodes.len() {
            c.add_node().await
        } else {
            index
        };
        let id = c.nodes[index].id.clone();
        // The driving node: a member that stays.
        let via = *members.iter().find(|m| **m != index).unwrap();
        if kind == "leave" {
            // Drain client traffic from the leaving node first, as an operator would.
            members.remove(&index);
            *load.targets.write().unwrap() = members.iter().map(|i| c.url(*i)).collect();
        }
        let started = Instant::now();
        eprintln!(
            "step {step} ({kind} {id}) starts at {:.1} s",
            load.started.elapsed().as_secs_f64()
        );
        let (status, body) = if kind == "join" {
            c.admin(
                reqwest::Method::POST,
                via,
                "/cluster/members",
                Some(json!({"id": id, "url": c.url(index)})),
            )
            .await
        } else {
            c.admin(
                reqwest::Method::DELETE,
                via,
                &format!("/cluster/members/{id}"),
                None,
            )
            .await
        };
        assert_eq!(status, 202, "{kind} {id}: {body}");
        let planned: BTreeMap<String, f64> =
            serde_json::from_value(body["planned"].clone()).unwrap();
        // A second change while one runs is refused.
        let (status, again) = c
            .admin(
                reqwest::Method::DELETE,
                via,
                "/cluster/members/node99",
                None,
            )
            .await;
        assert_eq!(
            (status, again["error"]["code"].as_str()),
            (409, Some("change_in_progress")),
            "{again}"
        );
        let done = change_done(&c, via).await;
        let elapsed = started.elapsed();
        let (ops, error_rate, p99) = load.window(started, Instant::now());
        if kind == "join" {
            members.insert(index);
            *load.targets.write().unwrap() = members.iter().map(|i| c.url(*i)).collect();
        }
        // Every node now follows the same stable topology.
        let epoch = done["epoch"].as_u64().unwrap();
        for i in &members {
            let (_, view) = c
                .request(reqwest::Method::GET, *i, "/cluster/members", None)
                .await;
            assert_eq!(
                view["epoch"].as_u64(),
                Some(epoch),
                "node{} epoch: {view}",
                i + 1
            );
            assert_eq!(view["phase"], "stable", "{view}");
            let ids: BTreeSet<String> = view["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_owned())
                .collect();
            let expected: BTreeSet<String> =
                members.iter().map(|m| c.nodes[*m].id.clone()).collect();
            assert_eq!(ids, expected, "{view}");
        }
        // Pause the clients and check placement: every key on exactly its
        // owners (replication jobs may still be landing: poll).
        let guard = load.pause.write().await;
        // A node that left holds nothing any more (its cleanup ran) and
        // answers client requests with 503 `not_a_member`.
        for gone in (0..c.nodes.len()).filter(|i| !members.contains(i) && c.api_running(*i)) {
            let (status, body) = c.get(gone, "load-1").await;
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (503, Some("not_a_member")),
                "{body}"
            );
            wait_for(
                "a node that left to hold no record",
                Duration::from_secs(30),
                || async {
                    let view = c.cluster_view(gone).await;
                    (view["records"] == 0).then_some(())
                },
            )
            .await;
        }
        let all_nodes: Vec<usize> = members.iter().copied().collect();
        let what = format!("every key on exactly its owners after step {step}");
        let held = wait_placed(&c, &all_nodes, via, &what).await;
        let loaded = held.keys().filter(|k| k.starts_with("load-")).count();
        assert_eq!(loaded, LOADED_KEYS, "{what}: loaded keys held");
        drop(guard);
        let moves = &done["change"]["moves"];
        // Every range of the hash space a node had to pull, it pulled whole.
        for (node, m) in moves.as_object().unwrap() {
            assert_eq!(m["ranges_pulled"], m["ranges"], "step {step}: {node}: {m}");
        }
        // A field of the moves summed over the nodes that pulled.
        let total = |field: &str| -> u64 {
            moves
                .as_object()
                .unwrap()
                .values()
                .map(|m| m[field].as_u64().unwrap_or(0))
                .sum()
        };
        let ranges = total("ranges");
        assert!(ranges > 0, "step {step}: no range to pull: {moves}");
        let moved = total("bytes");
        let share: f64 = planned.values().sum();
        let ideal = share * loaded_bytes as f64;
        let line = format!(
            "step {step}: {kind} {id}: {:.1} s, moved {moved} B for an ideal {ideal:.0} B (x{:.2}; planned share {share:.3}), clients: {ops} ops, error rate {:.2}%, p99 {p99:.1} ms",
            elapsed.as_secs_f64(),
            moved as f64 / ideal.max(1.0),
            error_rate * 100.0
        );
        eprintln!("{line}");
        // A leave moves the leaving node's share to the others; a join
        // the new node's. Either way close to the minimum (the changing
        // writes and whole hash-tree leaves add a little).
        assert!(moved as f64 >= ideal * 0.8, "{line}");
        assert!(moved as f64 <= ideal * 1.6 + 200_000.0, "{line}");
        report.push(line);
    }
    load.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    // Every acknowledged write on its own: a quorum read of each key now.
    let logs = load.logs.lock().unwrap().clone();
    let sloppy: usize = logs.values().map(|l| l.sloppy.len()).sum();
    eprintln!("writes acknowledged sloppy (an owner marked down): {sloppy}");
    let via = *members.iter().next().unwrap();
    let mut checked = 0;
    for (key, log) in &logs {
        // Sloppy writes reach their owners by hinted handoff: give it time.
        wait_for(
            &format!("{key} to read as its last acknowledged operation"),
            Duration::from_secs(30),
            || async {
                let (status, body) = c.get_with(via, key, "quorum").await;
                assert!(status == 200 || status == 404, "{key}: {status} {body}");
                let seen = if status == 200 {
                    value_seq(&body)
                } else {
                    None
                };
                if log.allows(log.acked, seen) {
                    return Some(());
                }
                assert!(
                    !log.sloppy.is_empty(),
                    "{key}: lost or resurrected: saw {seen:?}, acknowledged up to {} (all strictly)",
                    log.acked
                );
                None
            },
        )
        .await;
        checked += 1;
    }
    for k in (0..LOADED_KEYS).step_by(7) {
        let (status, body) = c.get_with(via, &format!("load-{k}"), "quorum").await;
        assert_eq!(
            (status, body["value"]["k"].as_u64()),
            (200, Some(k as u64)),
            "load-{k}"
        );
    }
    let violations = load.violations.lock().unwrap().clone();
    let (ops, rate, p99) = load.window(Instant::now() - Duration::from_secs(3600), Instant::now());
    eprintln!(
        "{checked} keys checked; {ops} client ops, error rate {:.2}%, p99 {p99:.1} ms; violations: {}",
        rate * 100.0,
        violations.len()
    );
    for line in &report {
        eprintln!("{line}");
    }
    assert!(violations.is_empty(), "{violations:?}");
}

/// Every key of every running member on exactly its holders in the stable
/// topology node `via` follows (polled: replication jobs may be landing);
/// returns which nodes hold each key.
async fn wait_placed(
    c: &Cluster,
    members: &[usize],
    via: usize,
    what: &str,
) -> BTreeMap<String, BTreeSet<String>> {
    let (_, t) = c
        .admin(reqwest::Method::GET, via, "/internal/topology", None)
        .await;
    let topology: Topology = serde_json::from_value(t).unwrap();
    assert_eq!(
        topology.phase,
        shared::core::topology::Phase::Stable,
        "{what}"
    );
    let placement = Placement::new(&topology, 128, 3);
    wait_for(what, Duration::from_secs(60), || async {
        let mut held: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for i in members {
            for key in c.snapshot(*i).await.keys() {
                held.entry(key.clone())
                    .or_default()
                    .insert(c.nodes[*i].id.clone());
            }
        }
        let wrong: Vec<String> = held
            .iter()
            .filter(|(key, on)| {
                let owners: BTreeSet<String> = placement
                    .holders(key)
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
                **on != owners
            })
            .map(|(key, on)| format!("{key} on {on:?}"))
            .take(5)
            .collect();
        if !wrong.is_empty() {
            eprintln!("{what}: not yet, e.g. {wrong:?}");
        }
        wrong.is_empty().then_some(held)
    })
    .await
}

/// Starts a node, asks node1 to join it, and SIGKILLs and restarts node1's
/// API at once, so no node drives the change; the new node's index and
/// the change's first epoch.
async fn join_and_restart_the_driver(c: &mut Cluster) -> (usize, u64) {
    let new = c.add_node().await;
    let join = json!({"id": c.nodes[new].id, "url": c.url(new)});
    let (status, body) = c
        .admin(reqwest::Method::POST, 0, "/cluster/members", Some(join))
        .await;
    assert_eq!(status, 202, "{body}");
    let epoch = body["epoch"].as_u64().unwrap();
    c.kill_api(0);
    c.restart_api(0).await;
    (new, epoch)
}

/// Writes `k0`..`k{keys-1}`, each its number, through node 0.
async fn load_numbered(c: &Cluster, keys: usize) {
    load_keys(
        c,
        (0..keys)
            .map(|k| json!({"op": "put", "key": format!("k{k}"), "value": k}))
            .collect(),
    )
    .await;
}

/// Every key of [`load_numbered`] reads its number at quorum through `via`.
async fn all_readable(c: &Cluster, via: usize, keys: usize) {
    for k in 0..keys {
        let (status, body) = c.get_with(via, &format!("k{k}"), "quorum").await;
        assert_eq!(
            (status, body["value"].as_u64()),
            (200, Some(k as u64)),
            "k{k}"
        );
    }
}

/// Writes `ops` (batch operations) through node 0, 100 per batch.
async fn load_keys(c: &Cluster, ops: Vec<Value>) {
    for chunk in ops.chunks(100) {
        let (status, body) = c
            .request(
                reqwest::Method::POST,
                0,
                "/kv/batch",
                Some(json!({ "ops": chunk })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_node_is_removed_and_a_change_outlives_its_driver() {
    let mut c = Cluster::start(Options {
        nodes: 4,
        workers: 1,
        ..Options::default()
    })
    .await;
    let keys = 400;
    load_numbered(&c, keys).await;

    // node4 dies for good; the others remove it. Its share is pulled from
    // the other holders, and nobody waits for it to take the epochs.
    c.kill_workers(3);
    c.kill_api(3);
    let (status, body) = c
        .admin(reqwest::Method::DELETE, 0, "/cluster/members/node4", None)
        .await;
    assert_eq!(status, 202, "{body}");
    let done = change_done(&c, 0).await;
    assert_eq!(done["members"].as_array().unwrap().len(), 3, "{done}");
    wait_placed(
        &c,
        &[0, 1, 2],
        0,
        "every key on its 3 holders after node4 was removed",
    )
    .await;
    all_readable(&c, 1, keys).await;

    // node5 joins through node1, whose API crashes at once and restarts:
    // the change stays where it was until node2 drives it on.
    let (n5, epoch) = join_and_restart_the_driver(&mut c).await;
    // node2 learns the epoch node1 adopted (and kept in Redis) from node1's
    // answers to its probes, if node1 had no time to offer it.
    wait_for(
        "node2 to learn the change's epoch",
        Duration::from_secs(30),
        || async {
            let (_, view) = c
                .request(reqwest::Method::GET, 1, "/cluster/members", None)
                .await;
            (view["epoch"].as_u64().unwrap() >= epoch).then_some(())
        },
    )
    .await;
    let (status, body) = c
        .admin(reqwest::Method::POST, 1, "/cluster/change/resume", None)
        .await;
    if status == 409 {
        // node1 had finished the change before it crashed.
        assert_eq!(body["error"]["code"], "nothing_to_resume", "{body}");
    } else {
        assert_eq!(status, 202, "{body}");
        change_done(&c, 1).await;
    }
    let members = [0, 1, 2, n5];
    let epochs: BTreeSet<u64> = {
        let mut epochs = BTreeSet::new();
        for i in members {
            let (_, view) = c
                .request(reqwest::Method::GET, i, "/cluster/members", None)
                .await;
            assert_eq!(view["phase"], "stable", "{view}");
            assert_eq!(view["members"].as_array().unwrap().len(), 4, "{view}");
            epochs.insert(view["epoch"].as_u64().unwrap());
        }
        epochs
    };
    assert_eq!(epochs.len(), 1, "every member at one epoch: {epochs:?}");
    wait_placed(
        &c,
        &members,
        1,
        "every key on its holders after node5 joined",
    )
    .await;
    all_readable(&c, n5, keys).await;
}

/// A change whose driving node restarts mid-way is resumed by the nodes
/// themselves (`KV_CHANGE_RESUME_AFTER_S`), with no operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_whose_driver_restarts_is_resumed_without_an_operator() {
    let mut c = Cluster::start(
        Options::default()
            .env("KV_CHANGE_RESUME_AFTER_S", "2")
            // Slow pulls: node1 is restarted while node4 still pulls.
            .env("KV_MOVE_BYTES_PER_S", "1024"),
    )
    .await;
    let keys = 300;
    load_numbered(&c, keys).await;
    let (n4, epoch) = join_and_restart_the_driver(&mut c).await;
    let members = [0, 1, 2, n4];
    // node4's pull is slow: its live progress is seen on the way.
    let seen_pulling = AtomicBool::new(false);
    wait_for(
        "every member at one stable epoch with 4 members",
        Duration::from_secs(180),
        || async {
            let (_, own) = c
                .request(reqwest::Method::GET, n4, "/cluster/members", None)
                .await;
            let pulling = &own["pulling"];
            if pulling.is_object() {
                let (wanted, pulled) = (
                    pulling["leaves_wanted"].as_u64()?,
                    pulling["leaves_pulled"].as_u64()?,
                );
                assert!(pulled <= wanted, "{pulling}");
                if wanted > 0 {
                    seen_pulling.store(true, Ordering::Relaxed);
                }
            }
            let mut epochs = BTreeSet::new();
            for i in members {
                let (_, view) = c
                    .request(reqwest::Method::GET, i, "/cluster/members", None)
                    .await;
                if view["phase"] != "stable" || view["members"].as_array()?.len() != 4 {
                    return None;
                }
                epochs.insert(view["epoch"].as_u64()?);
            }
            (epochs.len() == 1 && epochs.iter().all(|e| *e > epoch)).then_some(())
        },
    )
    .await;
    let resumed_by: Vec<&str> = members
        .iter()
        .filter(|i| c.api_log(**i).contains("no node drives it: resuming it"))
        .map(|i| c.nodes[*i].id.as_str())
        .collect();
    assert!(!resumed_by.is_empty(), "no node logged resuming the change");
    assert!(
        seen_pulling.load(Ordering::Relaxed),
        "node4's pull in progress was never shown"
    );
    wait_placed(
        &c,
        &members,
        1,
        "every key on its holders after node4 joined",
    )
    .await;
    all_readable(&c, n4, keys).await;
}
