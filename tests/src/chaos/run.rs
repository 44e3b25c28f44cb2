//! One chaos run: the cluster, the clients and the schedule, then
//! convergence, the checkers, one node down and the optional restore.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shared::core::ring::Ring;
use tokio::sync::Mutex;

use crate::{Cluster, Options, wait_for};

use super::checkers::{Context, check};
use super::clients::{KeySpace, Shared, client_http, client_loop, send, unix_ms};
use super::faults::{Net, describe, inject, preflight, undo};
use super::history::{FaultEvent, Final, Kind, Op, Outcome};
use super::report::Report;
use super::schedule::{CLOCK_DRIFT_MS_MAX, Rng, Settings, schedule, with_moves};

/// `KV_TOMBSTONE_GRACE_S` of a chaos run: short, so GC runs during it.
pub const TOMBSTONE_GRACE_S: u64 = 5;
/// `KV_HINT_WINDOW_S` of a chaos run (below the grace, as the config demands).
pub const HINT_WINDOW_S: u64 = 2;
/// How long the replicas may take to agree once the faults are healed,
/// before the run reports the keys that still differ.
const CONVERGE_WAIT: Duration = Duration::from_secs(90);

/// Node timings for a chaos run: short, so faults are noticed and healed quickly.
pub fn chaos_options(settings: &Settings) -> Options {
    Options {
        nodes: settings.nodes,
        workers: usize::from(settings.background_sync),
        appendfsync: "everysec",
        subnet: Some(settings.subnet),
        tls: settings.tls,
        ..Options::default()
    }
    .env("KV_PROBE_INTERVAL_MS", "250")
    .env("KV_HEARTBEAT_INTERVAL_S", "0.5")
    .env("KV_HINT_DELIVERY_INTERVAL_MS", "500")
    .env("KV_ANTI_ENTROPY_INTERVAL_S", "2")
    .env("KV_PEER_TIMEOUT_MS", "1000")
    .env("KV_PEER_CONNECT_TIMEOUT_MS", "300")
    .env("KV_JOB_BACKOFF_BASE_MS", "200")
    .env("KV_JOB_BACKOFF_MAX_MS", "2000")
    // Tombstone GC runs during the faults: a grace of a few seconds, rounds
    // every second, and a hint window below the grace (the config refuses
    // grace <= window).
    .env("KV_TOMBSTONE_GRACE_S", &TOMBSTONE_GRACE_S.to_string())
    .env("KV_GC_INTERVAL_S", "1")
    .env("KV_HINT_WINDOW_S", &HINT_WINDOW_S.to_string())
    .env("KV_CLOCK_DRIFT_MS_MAX", &CLOCK_DRIFT_MS_MAX.to_string())
    .env(
        "RUST_LOG",
        &std::env::var("CHAOS_RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
    )
    .env(
        "KV_BACKGROUND_SYNC",
        if settings.background_sync {
            "on"
        } else {
            "off"
        },
    )
}

/// Every replica's record of every key, with versions and tombstones.
async fn snapshots(c: &Cluster) -> Vec<serde_json::Map<String, Value>> {
    let mut all = Vec::new();
    for i in 0..c.nodes.len() {
        all.push(c.snapshot(i).await);
    }
    all
}

fn record_of(r: &Value) -> Option<Final> {
    let version = r["version"].as_str()?.parse().ok()?;
    let value = if r["deleted"].as_bool() == Some(true) {
        None
    } else {
        Some(
            r["value"]
                .as_str()
                .map_or_else(|| r["value"].to_string(), str::to_owned),
        )
    };
    Some(Final { version, value })
}

/// Hints still held anywhere, summed over every node's `/cluster/` view.
async fn hints_held(c: &Cluster) -> u64 {
    let mut total = 0;
    for i in 0..c.nodes.len() {
        let view = c.cluster_view(i).await;
        for n in view["nodes"].as_array().into_iter().flatten() {
            total += n["hints_held_here"].as_u64().unwrap_or(0);
        }
    }
    total
}

/// The converged state: each key's final record, and the keys whose
/// replicas still disagreed (or hints still held) when the wait ended.
struct Converged {
    finals: BTreeMap<String, Option<Final>>,
    diverged: Vec<String>,
}

/// Waits until the replicas of every key agree and no hint is pending;
/// returns the final state per key. Past [`CONVERGE_WAIT`] it returns the
/// newest record of each key and names what still differs, so the run
/// reports it (and checks the history) instead of stopping.
async fn converge(c: &Cluster, routes: &BTreeMap<String, Vec<usize>>) -> Converged {
    let deadline = Instant::now() + CONVERGE_WAIT;
    loop {
        let held = hints_held(c).await;
        let snaps = snapshots(c).await;
        let mut finals = BTreeMap::new();
        let mut diverged = Vec::new();
        for (key, replicas) in routes {
            let records: BTreeSet<Option<Final>> = replicas
                .iter()
                .map(|&r| snaps[r].get(key).and_then(record_of))
                .collect();
            if records.len() != 1 {
                diverged.push(format!(
                    "{key}: replicas {:?} hold {records:?}",
                    replicas
                        .iter()
                        .map(|r| format!("node{}", r + 1))
                        .collect::<Vec<_>>()
                ));
            }
            finals.insert(key.clone(), records.into_iter().flatten().max());
        }
        if diverged.is_empty() && held == 0 {
            return Converged { finals, diverged };
        }
        if Instant::now() > deadline {
            if held > 0 {
                diverged.push(format!("{held} hints still held"));
            }
            return Converged { finals, diverged };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The preference list of each key as node indices. Placement is pure: the
/// same ring the nodes build (default vnodes, N=3).
fn routes_of<'a>(c: &Cluster, keys: impl Iterator<Item = &'a str>) -> BTreeMap<String, Vec<usize>> {
    let ring = Ring::new(c.nodes.iter().map(|n| n.id.clone()), 128);
    keys.map(|key| {
        let replicas = ring
            .preference_list(key, 3)
            .iter()
            .map(|id| c.index_of(id))
            .collect();
        (key.to_owned(), replicas)
    })
    .collect()
}

/// The preference list of `key` as node indices, as node1 answers it.
async fn route_indices(c: &Cluster, key: &str) -> Vec<usize> {
    c.route(0, key)
        .await
        .iter()
        .map(|id| c.index_of(id))
        .collect()
}

/// Runs one seeded chaos run and returns its report (the caller decides
/// what fails). Panics only on harness errors.
pub async fn run(settings: &Settings) -> Report {
    preflight().unwrap_or_else(|e| panic!("{e}"));
    let mut c = Cluster::start(chaos_options(settings)).await;
    if settings.tls {
        let _ = super::clients::CLUSTER_CA.set(c.tls_dir().join("ca.pem"));
    }
    let hosts = c.nodes.iter().map(|n| n.host.clone()).collect();
    let mut net = Net::new(settings.subnet, hosts).unwrap_or_else(|e| panic!("{e}"));
    let mut report = Report {
        seed: settings.seed,
        background_sync: settings.background_sync,
        tls: c.url(0).starts_with("https://"),
        ..Report::default()
    };
    // The ring this harness computes is the one the nodes use.
    for key in (0..settings.hot_keys).map(|k| format!("h{k}")) {
        let asked = route_indices(&c, &key).await;
        assert_eq!(
            routes_of(&c, [key.as_str()].into_iter())[&key],
            asked,
            "{key}"
        );
    }

    // Clients.
    let urls: Arc<Vec<String>> = Arc::new((0..c.nodes.len()).map(|i| c.url(i)).collect());
    let sh = Arc::new(Shared {
        history: Mutex::new(Vec::new()),
        ryw: Mutex::new([(0, 0); 2]),
        ryw_misses: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
        started: Instant::now(),
        epoch_ms: unix_ms(),
    });
    let keys = KeySpace {
        hot: settings.hot_keys,
        hot_percent: settings.hot_percent,
        large: settings.keys,
    };
    let mut clients = tokio::task::JoinSet::new();
    for id in 0..settings.clients {
        clients.spawn(client_loop(
            id,
            urls.clone(),
            keys,
            settings.seed,
            sh.clone(),
        ));
    }

    // Faults. The sleeps are the schedule itself (how long a fault holds),
    // not waits for a condition.
    let mut steps = schedule(settings.seed, settings.duration, settings.nodes);
    if settings.moves {
        steps = with_moves(steps, settings.seed, settings.nodes, 3);
    }
    for step in steps {
        let what = step
            .faults
            .iter()
            .map(|f| describe(f, &net))
            .collect::<Vec<_>>()
            .join(" + ");
        eprintln!("[chaos {}] {what} for {:?}", settings.seed, step.hold);
        // A fault's time is taken when it is in place (after the SIGKILL,
        // after the skewed API is up) and, when undone, while it still is
        // (before the restart): the window between is all fault.
        for fault in &step.faults {
            inject(&mut c, &mut net, fault)
                .await
                .unwrap_or_else(|e| panic!("seed {}: cannot inject {what}: {e}", settings.seed));
            report.timeline.push(FaultEvent {
                at_ms: sh.ms(),
                fault: fault.clone(),
                undone: false,
            });
        }
        tokio::time::sleep(step.hold).await;
        for fault in step.faults.iter().rev() {
            report.timeline.push(FaultEvent {
                at_ms: sh.ms(),
                fault: fault.clone(),
                undone: true,
            });
            undo(&mut c, &mut net, fault)
                .await
                .unwrap_or_else(|e| panic!("seed {}: cannot undo {what}: {e}", settings.seed));
        }
        report.faults.push(what);
        tokio::time::sleep(step.gap).await;
    }
    sh.stop.store(true, Ordering::Relaxed);
    while clients.join_next().await.is_some() {}
    let healed = Instant::now();

    let history = sh.history.lock().await.clone();
    let routes = routes_of(&c, history.iter().map(|o| o.key.as_str()));
    let Converged { finals, diverged } = converge(&c, &routes).await;
    report.converge = healed.elapsed();
    report.keys_checked = finals.len();
    for op in &history {
        *report
            .ops
            .entry(format!("{:?} {:?}", op.kind, op.outcome))
            .or_default() += 1;
        if op.status >= 500 && op.status != 503 {
            report.server_errors += 1;
        }
    }
    let context = Context {
        timeline: &report.timeline,
        epoch_ms: sh.epoch_ms,
        drift_max_ms: CLOCK_DRIFT_MS_MAX,
    };
    report.verdict = check(&history, &finals, &context);
    report.verdict.diverged = diverged;
    dump(&c, &history, &report.timeline, &finals);
    let ryw = *sh.ryw.lock().await;
    report.ryw_strict = ryw[0];
    report.ryw_sloppy = ryw[1];
    report.ryw_misses = sh.ryw_misses.lock().await.clone();

    availability(&mut c, settings, &mut report).await;
    if settings.restore_keys > 0 {
        restore(&mut c, settings, &mut report).await;
    }
    report
}

/// Writes the history, the fault timeline and the final records into the
/// cluster's folder (`history.txt`, next to each node's logs), for replaying
/// a failure by hand; `KV_KEEP_CLUSTER=1` keeps the folder after the run.
fn dump(
    c: &Cluster,
    history: &[Op],
    timeline: &[FaultEvent],
    finals: &BTreeMap<String, Option<Final>>,
) {
    use std::fmt::Write as _;
    let mut text = String::new();
    for e in timeline {
        let _ = writeln!(
            text,
            "fault {} ms undone={} {:?}",
            e.at_ms, e.undone, e.fault
        );
    }
    let mut ops: Vec<&Op> = history.iter().collect();
    ops.sort_by_key(|o| (o.start_ms, o.end_ms));
    for o in ops {
        let _ = writeln!(text, "op {o:?}");
    }
    for (key, f) in finals {
        let _ = writeln!(text, "final {key} {f:?}");
    }
    if let Err(e) = std::fs::write(c.dir.join("history.txt"), text) {
        eprintln!("cannot write history.txt: {e}");
    }
}

/// One node down: detection, quorum writes through the others, then the
/// writes it owns delivered once it returns.
async fn availability(c: &mut Cluster, settings: &Settings, report: &mut Report) {
    let mut rng = Rng::new(settings.seed.rotate_left(17));
    let victim = rng.below(c.nodes.len() as u64) as usize;
    let victim_id = c.nodes[victim].id.clone();
    let others: Vec<usize> = (0..c.nodes.len()).filter(|&j| j != victim).collect();
    c.kill_api(victim);
    let killed = Instant::now();
    wait_for(
        "the others to see the node down",
        Duration::from_secs(20),
        || async {
            for &o in &others {
                let view = c.cluster_view(o).await;
                let seen_down = view["nodes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|n| n["id"] == victim_id.as_str() && n["status"] == "down");
                if !seen_down {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    report.detection = killed.elapsed();

    let http = client_http();
    let mut ok = 0;
    let mut owned = Vec::new();
    for n in 0..settings.availability_writes {
        let key = format!("avail-{n}");
        let node = others[rng.below(others.len() as u64) as usize];
        let (outcome, _, body) = send(
            http.put(format!("{}/kv/", c.url(node)))
                .json(&json!({ "key": key, "value": n })),
            Kind::Write,
        )
        .await;
        if outcome == Outcome::Ok {
            ok += 1;
            if body["replicas"]
                .as_array()
                .is_some_and(|r| r.iter().any(|id| id == victim_id.as_str()))
            {
                owned.push(key);
            }
        }
    }
    report.availability = (ok, settings.availability_writes);

    c.restart_api(victim).await;
    let back = Instant::now();
    // Hints kept within the hint window, restore and anti-entropy for the
    // rest: the returned node gets every write it owns.
    wait_for(
        &format!("{victim_id} to hold the writes it owns, and no hint held"),
        Duration::from_secs(60),
        || async {
            let snap = c.snapshot(victim).await;
            let all = owned.iter().all(|k| snap.contains_key(k));
            (all && hints_held(c).await == 0).then_some(())
        },
    )
    .await;
    report.hints_delivered = Some(back.elapsed());
}

/// Writes `restore_keys` keys that one node replicates, wipes that node and
/// times its restore.
async fn restore(c: &mut Cluster, settings: &Settings, report: &mut Report) {
    let victim = Rng::new(settings.seed.rotate_left(29)).below(c.nodes.len() as u64) as usize;
    // Placement is pure: the same ring the nodes build (default vnodes, N=3).
    let ring = Ring::new(c.nodes.iter().map(|n| n.id.clone()), 128);
    let victim_id = c.nodes[victim].id.clone();
    let keys: Arc<Vec<String>> = Arc::new(
        (0..)
            .map(|n| format!("bulk-{n}"))
            .filter(|k| ring.preference_list(k, 3).contains(&victim_id.as_str()))
            .take(settings.restore_keys)
            .collect(),
    );
    let urls: Arc<Vec<String>> = Arc::new((0..c.nodes.len()).map(|i| c.url(i)).collect());
    let mut writers = tokio::task::JoinSet::new();
    let per = keys.len().div_ceil(16);
    for w in 0..16 {
        let urls = urls.clone();
        let keys = keys.clone();
        writers.spawn(async move {
            let http = client_http();
            for n in (w * per)..((w + 1) * per).min(keys.len()) {
                let url = format!("{}/kv/", urls[n % urls.len()]);
                let body = json!({ "key": keys[n], "value": "x".repeat(100) });
                // Every key must be written; the cluster is healthy here, so
                // a failure is transient (a timeout under load).
                let mut attempts = 0;
                loop {
                    let sent = http.put(&url).json(&body).send().await;
                    if sent.is_ok_and(|r| r.status() == 200) {
                        break;
                    }
                    attempts += 1;
                    assert!(attempts < 20, "cannot write {}", keys[n]);
                }
            }
        });
    }
    while writers.join_next().await.is_some() {}
    // Let replication settle: the node holds every key written for it
    // (each write was retried until acknowledged), and no hint is pending.
    let before = wait_for(
        "the node to hold every key written for it",
        Duration::from_secs(120),
        || async {
            let held = c.cluster_view(victim).await["records"].as_u64()?;
            let idle = hints_held(c).await == 0;
            (idle && held >= keys.len() as u64).then_some(held)
        },
    )
    .await;
    c.wipe_node(victim).await;
    let started = Instant::now();
    c.restart_api(victim).await;
    wait_for(
        "the wiped node to restore",
        Duration::from_secs(120),
        || async {
            let now = c.cluster_view(victim).await["records"].as_u64()?;
            (now >= before).then_some(())
        },
    )
    .await;
    report.restore = Some((before as usize, started.elapsed()));
    report.restore_written = keys.len();
}
