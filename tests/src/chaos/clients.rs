//! The clients: each writes unique values, deletes and reads, with a
//! timeout, and records every operation in the shared history.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shared::core::quorum::Consistency;
use shared::core::record::Version;
use tokio::sync::Mutex;

use crate::encode;

use super::history::{Kind, Op, Outcome};
use super::schedule::Rng;

/// What the clients share with the run: the history, the read-your-writes
/// tallies, the stop flag and the run's start.
pub(super) struct Shared {
    pub(super) history: Mutex<Vec<Op>>,
    pub(super) ryw: Mutex<[(usize, usize); 2]>,
    pub(super) ryw_misses: Mutex<Vec<String>>,
    pub(super) stop: AtomicBool,
    pub(super) started: Instant,
    /// The wall clock (ms since the Unix epoch) at `started`: versions are
    /// stamped in that clock, so a version far above it came from a node
    /// whose clock was ahead.
    pub(super) epoch_ms: u64,
}

/// Milliseconds since the Unix epoch, by this (the harness's) clock.
pub(super) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Shared {
    pub(super) fn ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

/// The CA of the cluster under test when it runs with TLS (`KV_CHAOS_TLS=1`).
pub(super) static CLUSTER_CA: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

pub(super) fn client_http() -> reqwest::Client {
    let builder = crate::client_builder()
        .connect_timeout(Duration::from_millis(1000))
        .timeout(Duration::from_secs(3))
        .no_proxy();
    match CLUSTER_CA.get() {
        Some(ca) => builder.tls_backend_preconfigured(crate::tls_client_config(ca, None)),
        None => builder,
    }
    .build()
    .expect("http client")
}

/// Sends one operation and classifies the answer.
pub(super) async fn send(req: reqwest::RequestBuilder, kind: Kind) -> (Outcome, u16, Value) {
    match req.send().await {
        Err(e) if e.is_connect() => (Outcome::Fail, 0, Value::Null),
        Err(_) => (Outcome::Unknown, 0, Value::Null),
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            let outcome = match (status, kind) {
                (200, _) | (404, Kind::Read) => Outcome::Ok,
                (400..=499, _) => Outcome::Fail,
                (_, Kind::Read) => Outcome::Fail,
                _ => Outcome::Unknown,
            };
            (outcome, status, body)
        }
    }
}

/// The level every client operation asks for, in the query rather than
/// left to the nodes' default, so the history knows what each one was
/// promised (the checkers hold strict reads to strict writes).
const CONSISTENCY: Consistency = Consistency::Quorum;

fn version_of(body: &Value) -> Option<Version> {
    body["version"].as_str().and_then(|s| s.parse().ok())
}

/// The keys the clients pick from: a few hot ones most operations contend
/// on, and a large space where most keys see one operation or none.
#[derive(Clone, Copy, Debug)]
pub(super) struct KeySpace {
    pub(super) hot: usize,
    pub(super) hot_percent: u64,
    pub(super) large: usize,
}

impl KeySpace {
    fn pick(&self, rng: &mut Rng) -> String {
        if rng.below(100) < self.hot_percent {
            format!("h{}", rng.below(self.hot as u64))
        } else {
            format!("k{}", rng.below(self.large as u64))
        }
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

pub(super) async fn client_loop(
    id: usize,
    urls: Arc<Vec<String>>,
    keys: KeySpace,
    seed: u64,
    sh: Arc<Shared>,
) {
    let http = client_http();
    let mut rng = Rng::new(seed ^ (id as u64).wrapping_mul(0x1234_5678_9abc_def1));
    let mut n = 0u64;
    while !sh.stop.load(Ordering::Relaxed) {
        n += 1;
        let key = keys.pick(&mut rng);
        let node = rng.below(urls.len() as u64) as usize;
        let base = &urls[node];
        let roll = rng.below(100);
        let kind = match roll {
            0..60 => Kind::Write,
            60..72 => Kind::Delete,
            _ => Kind::Read,
        };
        let value = format!("c{id}-{n}");
        let req = match kind {
            Kind::Write => http
                .put(format!("{base}/kv/?consistency={CONSISTENCY}"))
                .json(&json!({ "key": key, "value": value })),
            Kind::Delete => http.delete(format!(
                "{base}/kv/?key={}&consistency={CONSISTENCY}",
                encode(&key)
            )),
            Kind::Read => http.get(format!(
                "{base}/kv/?key={}&consistency={CONSISTENCY}",
                encode(&key)
            )),
        };
        let start_ms = sh.ms();
        let (outcome, status, body) = send(req, kind).await;
        let end_ms = sh.ms();
        let op = Op {
            client: id,
            kind,
            key: key.clone(),
            value: match kind {
                Kind::Write => Some(value),
                Kind::Delete => None,
                Kind::Read => body["value"].as_str().map(str::to_owned),
            },
            outcome,
            status,
            start_ms,
            end_ms,
            version: version_of(&body),
            acks: strings(&body["acks"]),
            replicas: strings(&body["replicas"]),
            sloppy: body["sloppy"].as_bool().unwrap_or(false),
            consistency: CONSISTENCY,
            node,
        };
        let written = (kind == Kind::Write && outcome == Outcome::Ok)
            .then(|| (op.version.clone(), op.sloppy));
        let wrote = format!(
            "write via node{} acks {:?} at {start_ms} ms",
            node + 1,
            op.acks
        );
        sh.history.lock().await.push(op);

        // Read your write, through another random node, with the token the
        // write answered (`min_version`): it must see the write, sloppy or not.
        if let Some((Some(version), sloppy)) = written {
            let node = rng.below(urls.len() as u64) as usize;
            let req = http.get(format!(
                "{}/kv/?key={}&consistency={CONSISTENCY}&min_version={}",
                urls[node],
                encode(&key),
                encode(&version.to_string())
            ));
            let start_ms = sh.ms();
            let (outcome, status, body) = send(req, Kind::Read).await;
            let seen = version_of(&body);
            // The node could not find it in time: a miss, not a lost answer.
            let not_found_in_time = body["error"]["code"] == "min_version_unavailable";
            if outcome == Outcome::Ok || not_found_in_time {
                let mut ryw = sh.ryw.lock().await;
                let slot = &mut ryw[usize::from(sloppy)];
                slot.1 += 1;
                if outcome == Outcome::Ok && seen.as_ref().is_some_and(|s| *s >= version) {
                    slot.0 += 1;
                } else {
                    let mut misses = sh.ryw_misses.lock().await;
                    if misses.len() < 20 {
                        misses.push(format!(
                            "{key} {wrote} version {version}; read via node{} at {start_ms} ms: {status} {body}",
                            node + 1
                        ));
                    }
                }
            }
            sh.history.lock().await.push(Op {
                client: id,
                kind: Kind::Read,
                key,
                value: body["value"].as_str().map(str::to_owned),
                outcome,
                status,
                start_ms,
                end_ms: sh.ms(),
                version: seen,
                acks: Vec::new(),
                replicas: Vec::new(),
                sloppy: false,
                consistency: CONSISTENCY,
                node,
            });
        }
    }
}
