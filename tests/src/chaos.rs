//! Seeded fault injection with a recorded history and checkers afterwards
//! (in the manner of etcd's robustness tests and Jepsen).
//!
//! Five nodes, each on its own loopback address `127.0.<subnet>.1x` with its
//! own Redis (AOF, password) and worker. Clients write unique values, delete
//! and read, each operation with a timeout, and record every operation. A
//! schedule drawn from the seed injects one fault at a time and undoes it:
//! partitions (isolated node, 2|3 split, one-way, bridge) with iptables
//! rules between the nodes' addresses, SIGKILL of a node's API, of its Redis
//! or of a worker, SIGSTOP of an API, a clock offset of ±2 s, and latency
//! with loss through `tc netem`. After the last fault is undone the checkers
//! wait for the replicas to converge and read the history:
//!
//! - every acknowledged write or delete is in the final state or superseded
//!   by a higher version (0 lost, 0 resurrected deletes);
//! - every final record comes from an operation some client attempted;
//! - no read returned a value nobody wrote;
//! - read-your-writes rates, for strict and for sloppy quorums.
//!
//! Then one node is killed: quorum writes through the others must succeed
//! (≥ 99% after the detection window), and its hints must be delivered once
//! it returns. Optionally a wiped node restores a large data set.
//!
//! Needs root (iptables, tc). The same seed replays the same schedule.

#![allow(clippy::print_stderr)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shared::core::record::Version;
use shared::core::ring::Ring;
use tokio::sync::Mutex;

use crate::{Cluster, Options, encode, wait_for};

/// A small deterministic generator (xorshift*), so a seed replays a run.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // SplitMix64 spreads nearby seeds apart; `| 1` avoids xorshift's
        // fixed point at zero.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn range_ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
    /// `k` distinct indices below `n`, in random order.
    pub fn pick(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            all.swap(i, self.below(i as u64 + 1) as usize);
        }
        all.truncate(k);
        all
    }
}

/// What a chaos run does.
#[derive(Clone, Debug)]
pub struct Settings {
    pub seed: u64,
    /// How long faults are injected (clients run during it).
    pub duration: Duration,
    pub nodes: usize,
    pub clients: usize,
    /// Size of the key space the clients contend on.
    pub keys: usize,
    /// Third octet of the nodes' addresses; runs at the same time need different ones.
    pub subnet: u8,
    /// Writes made with one node down (the availability figure).
    pub availability_writes: usize,
    /// Keys written before a node is wiped and restored (0 skips that phase).
    pub restore_keys: usize,
    /// `KV_BACKGROUND_SYNC`: replication through workers (on) or inline (off).
    pub background_sync: bool,
}

impl Settings {
    pub fn new(seed: u64, duration: Duration) -> Settings {
        Settings {
            seed,
            duration,
            nodes: 5,
            clients: 5,
            keys: 40,
            subnet: 77,
            availability_writes: 200,
            restore_keys: 0,
            background_sync: true,
        }
    }
}

/// One injected fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Node `0` cannot reach or be reached by any other node.
    Isolate(usize),
    /// The two groups cannot reach each other.
    Split(Vec<usize>, Vec<usize>),
    /// Packets from the first node to the second are dropped (one direction).
    OneWay(usize, usize),
    /// Two halves that cannot reach each other, both reaching the bridge node.
    Bridge {
        bridge: usize,
        left: Vec<usize>,
        right: Vec<usize>,
    },
    KillApi(usize),
    KillRedis(usize),
    KillWorker(usize),
    /// SIGSTOP of the API, SIGCONT when undone.
    Pause(usize),
    /// The API restarts with its clock shifted by this many ms.
    Skew(usize, i64),
    /// Latency and loss on packets to the node.
    Netem(usize),
}

/// One step of the schedule: one fault, or two at once (the second a
/// process fault on another node), how long they hold, the quiet gap after.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub faults: Vec<Fault>,
    pub hold: Duration,
    pub gap: Duration,
}

/// The fault schedule for `seed`: steps until `duration` is used up.
/// Pure, so the same seed always gives the same schedule.
pub fn schedule(seed: u64, duration: Duration, nodes: usize) -> Vec<Step> {
    let mut rng = Rng::new(seed);
    let mut steps = Vec::new();
    let mut used = Duration::ZERO;
    loop {
        let fault = match rng.below(10) {
            0 => Fault::Isolate(rng.below(nodes as u64) as usize),
            1 => {
                let order = rng.pick(nodes, nodes);
                let (a, b) = order.split_at(nodes / 2);
                Fault::Split(a.to_vec(), b.to_vec())
            }
            2 => {
                let p = rng.pick(nodes, 2);
                Fault::OneWay(p[0], p[1])
            }
            3 => {
                let order = rng.pick(nodes, nodes);
                let rest = &order[1..];
                let (left, right) = rest.split_at(rest.len() / 2);
                Fault::Bridge {
                    bridge: order[0],
                    left: left.to_vec(),
                    right: right.to_vec(),
                }
            }
            4 => Fault::KillApi(rng.below(nodes as u64) as usize),
            5 => Fault::KillRedis(rng.below(nodes as u64) as usize),
            6 => Fault::KillWorker(rng.below(nodes as u64) as usize),
            7 => Fault::Pause(rng.below(nodes as u64) as usize),
            8 => {
                let offset = if rng.below(2) == 0 { 2000 } else { -2000 };
                Fault::Skew(rng.below(nodes as u64) as usize, offset)
            }
            _ => Fault::Netem(rng.below(nodes as u64) as usize),
        };
        let mut faults = vec![fault];
        if rng.below(4) == 0 {
            // A second fault at the same time: a process fault on a node the
            // first one does not already single out.
            let busy = single_node(&faults[0]);
            let node = (0..nodes)
                .cycle()
                .skip(rng.below(nodes as u64) as usize)
                .take(nodes)
                .find(|n| Some(*n) != busy)
                .unwrap_or(0);
            faults.push(match rng.below(3) {
                0 => Fault::KillApi(node),
                1 => Fault::KillRedis(node),
                _ => Fault::Pause(node),
            });
        }
        let step = Step {
            faults,
            hold: rng.range_ms(3000, 8000),
            gap: rng.range_ms(500, 2000),
        };
        used += step.hold + step.gap;
        steps.push(step);
        if used >= duration {
            return steps;
        }
    }
}

/// The node a fault acts on, for faults that act on one node.
fn single_node(fault: &Fault) -> Option<usize> {
    match fault {
        Fault::KillApi(i)
        | Fault::KillRedis(i)
        | Fault::KillWorker(i)
        | Fault::Pause(i)
        | Fault::Skew(i, _)
        | Fault::Netem(i) => Some(*i),
        Fault::Isolate(_) | Fault::Split(..) | Fault::OneWay(..) | Fault::Bridge { .. } => None,
    }
}

fn run_cmd(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Network faults between the nodes' addresses: an iptables chain of DROP
/// rules jumped to from OUTPUT, and a netem queue on `lo` for packets to one
/// address. Everything is removed on drop.
pub struct Net {
    chain: String,
    hosts: Vec<String>,
    netem: bool,
    /// Whether this kernel has the `prio` and `netem` queueing disciplines
    /// (some sandboxed kernels have none); without them a slow link is
    /// packet loss alone, from an iptables `statistic` rule.
    pub netem_supported: bool,
}

impl Net {
    pub fn new(subnet: u8, hosts: Vec<String>) -> Result<Net, String> {
        let chain = format!("KVCHAOS{subnet}");
        // A chain left over from a run that was killed is reused, emptied.
        if run_cmd("iptables", &["-N", &chain]).is_err() {
            run_cmd("iptables", &["-F", &chain])?;
        }
        let _ = run_cmd("iptables", &["-D", "OUTPUT", "-j", &chain]);
        run_cmd("iptables", &["-I", "OUTPUT", "1", "-j", &chain])?;
        let netem_supported = run_cmd(
            "tc",
            &["qdisc", "add", "dev", "lo", "root", "handle", "1:", "prio"],
        )
        .is_ok()
            && run_cmd("tc", &["qdisc", "del", "dev", "lo", "root"]).is_ok()
            && run_cmd(
                "tc",
                &["qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
            )
            .is_ok()
            && run_cmd("tc", &["qdisc", "del", "dev", "lo", "root"]).is_ok();
        Ok(Net {
            chain,
            hosts,
            netem: false,
            netem_supported,
        })
    }

    /// Drops packets from node `from` to node `to`.
    pub fn cut(&self, from: usize, to: usize) -> Result<(), String> {
        run_cmd(
            "iptables",
            &[
                "-A",
                &self.chain,
                "-s",
                &self.hosts[from],
                "-d",
                &self.hosts[to],
                "-j",
                "DROP",
            ],
        )
    }

    /// Cuts every link between the two groups, both ways.
    pub fn cut_between(&self, a: &[usize], b: &[usize]) -> Result<(), String> {
        for &x in a {
            for &y in b {
                self.cut(x, y)?;
                self.cut(y, x)?;
            }
        }
        Ok(())
    }

    /// Removes every cut.
    pub fn heal(&self) -> Result<(), String> {
        run_cmd("iptables", &["-F", &self.chain])
    }

    /// A bad link to node `i`: 30 ms ± 20 ms of delay and 3% loss with
    /// netem, or 10% loss alone where the kernel has no netem.
    pub fn slow(&mut self, i: usize) -> Result<(), String> {
        if self.netem_supported {
            match self.netem_to(i) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    // E.g. another run holds lo's root qdisc: loss alone.
                    eprintln!("netem unavailable ({e}); packet loss instead");
                    let _ = self.clear_slow();
                }
            }
        }
        run_cmd(
            "iptables",
            &[
                "-A",
                &self.chain,
                "-d",
                &self.hosts[i],
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                "0.10",
                "-j",
                "DROP",
            ],
        )
    }

    fn netem_to(&mut self, i: usize) -> Result<(), String> {
        let dst = format!("{}/32", self.hosts[i]);
        // Four bands; the default priomap only uses the first three, so only
        // the filtered packets reach band 4 and its netem.
        let priomap = "1 2 2 2 1 2 0 0 1 1 1 1 1 1 1 1";
        let mut args = vec![
            "qdisc", "add", "dev", "lo", "root", "handle", "1:", "prio", "bands", "4", "priomap",
        ];
        args.extend(priomap.split(' '));
        run_cmd("tc", &args)?;
        self.netem = true;
        run_cmd(
            "tc",
            &[
                "qdisc", "add", "dev", "lo", "parent", "1:4", "handle", "40:", "netem", "delay",
                "30ms", "20ms", "loss", "3%",
            ],
        )?;
        run_cmd(
            "tc",
            &[
                "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
                "match", "ip", "dst", &dst, "flowid", "1:4",
            ],
        )
    }

    pub fn clear_slow(&mut self) -> Result<(), String> {
        if std::mem::take(&mut self.netem) {
            run_cmd("tc", &["qdisc", "del", "dev", "lo", "root"])?;
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = self.clear_slow();
        let _ = self.heal();
        let _ = run_cmd("iptables", &["-D", "OUTPUT", "-j", &self.chain]);
        let _ = run_cmd("iptables", &["-X", &self.chain]);
    }
}

/// Whether the harness can inject network faults here (root, iptables, tc).
pub fn preflight() -> Result<(), String> {
    run_cmd("iptables", &["-L", "OUTPUT", "-n"])
        .map_err(|e| format!("iptables is needed (run as root; apt-get install iptables): {e}"))?;
    run_cmd("tc", &["qdisc", "show", "dev", "lo"])
        .map_err(|e| format!("tc is needed (apt-get install iproute2): {e}"))
}

// ---- history ----------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Write,
    Delete,
    Read,
}

/// How an operation ended, as the client can know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged (or, for a read, answered).
    Ok,
    /// Known not to have taken effect (refused before it was sent, or a 4xx).
    Fail,
    /// May or may not have taken effect (timeout, 503, connection lost).
    Unknown,
}

/// One client operation.
#[derive(Clone, Debug)]
pub struct Op {
    pub client: usize,
    pub kind: Kind,
    pub key: String,
    /// The value written, or the value a read returned (`None`: not found).
    pub value: Option<String>,
    pub outcome: Outcome,
    pub status: u16,
    /// Milliseconds from the start of the run.
    pub start_ms: u64,
    pub end_ms: u64,
    pub version: Option<Version>,
    pub acks: Vec<String>,
    pub sloppy: bool,
    pub node: usize,
}

/// A replica's record at the end: version and value (`None` = tombstone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Final {
    pub version: Version,
    pub value: Option<String>,
}

/// What the checkers found.
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    pub lost_writes: Vec<String>,
    pub resurrections: Vec<String>,
    pub phantoms: Vec<String>,
    pub bad_reads: Vec<String>,
    /// Acknowledged operations whose version is below that of an
    /// acknowledged operation on the same key that had finished before they
    /// started: last-writer-wins then orders them against real time (what a
    /// skewed clock does). Reported, not a violation of the contract.
    pub order_inversions: Vec<String>,
}

impl Verdict {
    pub fn is_clean(&self) -> bool {
        self.lost_writes.is_empty()
            && self.resurrections.is_empty()
            && self.phantoms.is_empty()
            && self.bad_reads.is_empty()
    }
}

/// Checks a history against the converged final state (`None`: no replica
/// holds the key at all).
pub fn check(history: &[Op], finals: &BTreeMap<String, Option<Final>>) -> Verdict {
    let mut v = Verdict::default();
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    for (key, ops) in &by_key {
        let fin = finals.get(*key).cloned().flatten();
        let final_version = fin.as_ref().map(|f| &f.version);
        // Acknowledged writes and deletes are present or superseded.
        for op in ops.iter().filter(|o| o.outcome == Outcome::Ok) {
            let (Some(version), Kind::Write | Kind::Delete) = (&op.version, op.kind) else {
                continue;
            };
            if final_version.is_none_or(|f| f < version) {
                let what = format!(
                    "{key}: acknowledged {:?} {version} (client {}, via node{}, at {} ms) but the final version is {final_version:?}",
                    op.kind,
                    op.client,
                    op.node + 1,
                    op.start_ms
                );
                if op.kind == Kind::Delete {
                    v.resurrections.push(what);
                } else {
                    v.lost_writes.push(what);
                }
            }
        }
        // Real-time order among acknowledged operations.
        let acked: Vec<&&Op> = ops
            .iter()
            .filter(|o| o.outcome == Outcome::Ok && o.kind != Kind::Read && o.version.is_some())
            .collect();
        for later in &acked {
            if let Some(earlier) = acked
                .iter()
                .find(|e| e.end_ms < later.start_ms && e.version > later.version)
            {
                v.order_inversions.push(format!(
                    "{key}: {:?} {:?} via node{} at {} ms is below {:?} acknowledged at {} ms via node{}",
                    later.kind,
                    later.version,
                    later.node + 1,
                    later.start_ms,
                    earlier.version,
                    earlier.end_ms,
                    earlier.node + 1
                ));
            }
        }
        // The final record comes from an operation that was attempted.
        if let Some(f) = &fin {
            let acked = ops
                .iter()
                .any(|o| o.outcome == Outcome::Ok && o.version.as_ref() == Some(&f.version));
            let attempted = ops.iter().any(|o| {
                o.outcome != Outcome::Fail
                    && match (&f.value, o.kind) {
                        (Some(val), Kind::Write) => o.value.as_deref() == Some(val.as_str()),
                        (None, Kind::Delete) => true,
                        _ => false,
                    }
            });
            if !acked && !attempted {
                v.phantoms
                    .push(format!("{key}: final {f:?} matches no operation"));
            }
        }
        // Reads return values somebody wrote (and the version they got).
        let written: BTreeMap<&str, &Op> = ops
            .iter()
            .filter(|o| o.kind == Kind::Write && o.outcome != Outcome::Fail)
            .filter_map(|o| o.value.as_deref().map(|val| (val, *o)))
            .collect();
        for read in ops
            .iter()
            .filter(|o| o.kind == Kind::Read && o.outcome == Outcome::Ok)
        {
            let Some(val) = read.value.as_deref() else {
                continue;
            };
            match written.get(val) {
                None => v
                    .bad_reads
                    .push(format!("{key}: read {val:?} that nobody wrote")),
                Some(w) if w.start_ms > read.end_ms => v
                    .bad_reads
                    .push(format!("{key}: read {val:?} before it was written")),
                Some(w) => {
                    // A write may be stamped again above a newer version it
                    // met (see `Coordinator::write`), so a read can see its
                    // value at an earlier stamp, never at a later one.
                    if w.outcome == Outcome::Ok && w.version.is_some() && read.version > w.version {
                        v.bad_reads.push(format!(
                            "{key}: read {val:?} at version {:?}, above its write's {:?}",
                            read.version, w.version
                        ));
                    }
                }
            }
        }
    }
    v
}

// ---- the run ------------------------------------------------------------

/// Everything a run measured.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub background_sync: bool,
    pub faults: Vec<String>,
    pub ops: BTreeMap<String, usize>,
    pub server_errors: usize,
    pub verdict: Verdict,
    pub keys_checked: usize,
    pub converge: Duration,
    pub ryw_strict: (usize, usize),
    pub ryw_sloppy: (usize, usize),
    /// The first strict-quorum read-your-writes misses, described.
    pub ryw_misses: Vec<String>,
    pub availability: (usize, usize),
    pub detection: Duration,
    pub hints_delivered: Option<Duration>,
    pub restore: Option<(usize, Duration)>,
    pub restore_written: usize,
}

fn rate((a, b): (usize, usize)) -> String {
    if b == 0 {
        "n/a (0 cases)".to_owned()
    } else {
        format!("{:.1}% ({a}/{b})", 100.0 * a as f64 / b as f64)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = &self.verdict;
        writeln!(
            f,
            "chaos seed {} ({} fault steps, background sync {})",
            self.seed,
            self.faults.len(),
            if self.background_sync { "on" } else { "off" }
        )?;
        for fault in &self.faults {
            writeln!(f, "  fault: {fault}")?;
        }
        writeln!(f, "  operations: {:?}", self.ops)?;
        writeln!(f, "  5xx other than 503: {}", self.server_errors)?;
        writeln!(f, "  acknowledged writes lost: {}", v.lost_writes.len())?;
        writeln!(f, "  deletes resurrected: {}", v.resurrections.len())?;
        writeln!(f, "  final records nobody wrote: {}", v.phantoms.len())?;
        writeln!(f, "  reads of values nobody wrote: {}", v.bad_reads.len())?;
        writeln!(
            f,
            "  acknowledged ops ordered below an earlier acknowledged op (clock skew): {}",
            v.order_inversions.len()
        )?;
        for line in v.order_inversions.iter().take(3) {
            writeln!(f, "    e.g. {line}")?;
        }
        writeln!(
            f,
            "  replicas identical {:.2} s after heal ({} keys)",
            self.converge.as_secs_f64(),
            self.keys_checked
        )?;
        writeln!(
            f,
            "  read-your-writes: strict quorum {}, sloppy quorum {}",
            rate(self.ryw_strict),
            rate(self.ryw_sloppy)
        )?;
        for line in self.ryw_misses.iter().take(5) {
            writeln!(f, "    strict miss: {line}")?;
        }
        writeln!(
            f,
            "  one node down (detected in {:.2} s): quorum writes ok {}",
            self.detection.as_secs_f64(),
            rate(self.availability)
        )?;
        if let Some(d) = self.hints_delivered {
            writeln!(
                f,
                "  hints delivered {:.2} s after the owner returned",
                d.as_secs_f64()
            )?;
        }
        if let Some((keys, d)) = self.restore {
            writeln!(
                f,
                "  wiped node restored {keys} records ({} written for it) in {:.2} s",
                self.restore_written,
                d.as_secs_f64()
            )?;
        }
        for line in v
            .lost_writes
            .iter()
            .chain(&v.resurrections)
            .chain(&v.phantoms)
            .chain(&v.bad_reads)
            .take(20)
        {
            writeln!(f, "  VIOLATION {line}")?;
        }
        Ok(())
    }
}

/// Node timings for a chaos run: short, so faults are noticed and healed quickly.
pub fn chaos_options(settings: &Settings) -> Options {
    Options {
        nodes: settings.nodes,
        workers: usize::from(settings.background_sync),
        appendfsync: "everysec",
        subnet: Some(settings.subnet),
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
    .env("RUST_LOG", "warn")
    .env(
        "KV_BACKGROUND_SYNC",
        if settings.background_sync {
            "on"
        } else {
            "off"
        },
    )
}

struct Shared {
    history: Mutex<Vec<Op>>,
    ryw: Mutex<[(usize, usize); 2]>,
    ryw_misses: Mutex<Vec<String>>,
    stop: AtomicBool,
    started: Instant,
}

impl Shared {
    fn ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

fn client_http() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(1000))
        .timeout(Duration::from_secs(3))
        .no_proxy()
        .build()
        .expect("http client")
}

/// Sends one operation and classifies the answer.
async fn send(req: reqwest::RequestBuilder, kind: Kind) -> (Outcome, u16, Value) {
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

fn version_of(body: &Value) -> Option<Version> {
    body["version"].as_str().and_then(|s| s.parse().ok())
}

async fn client_loop(id: usize, urls: Arc<Vec<String>>, keys: usize, seed: u64, sh: Arc<Shared>) {
    let http = client_http();
    let mut rng = Rng::new(seed ^ (id as u64).wrapping_mul(0x1234_5678_9abc_def1));
    let mut n = 0u64;
    while !sh.stop.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("k{}", rng.below(keys as u64));
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
                .put(format!("{base}/kv/"))
                .json(&json!({ "key": key, "value": value })),
            Kind::Delete => http.delete(format!("{base}/kv/?key={}", encode(&key))),
            Kind::Read => http.get(format!("{base}/kv/?key={}", encode(&key))),
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
            acks: body["acks"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            sloppy: body["sloppy"].as_bool().unwrap_or(false),
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

        // Read your write, through another random node.
        if let Some((Some(version), sloppy)) = written {
            let node = rng.below(urls.len() as u64) as usize;
            let req = http.get(format!("{}/kv/?key={}", urls[node], encode(&key)));
            let start_ms = sh.ms();
            let (outcome, status, body) = send(req, Kind::Read).await;
            let seen = version_of(&body);
            if outcome == Outcome::Ok {
                let mut ryw = sh.ryw.lock().await;
                let slot = &mut ryw[usize::from(sloppy)];
                slot.1 += 1;
                if seen.as_ref().is_some_and(|s| *s >= version) {
                    slot.0 += 1;
                } else if !sloppy {
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
                sloppy: false,
                node,
            });
        }
    }
}

/// Applies `fault`; returns a description.
async fn inject(c: &mut Cluster, net: &mut Net, fault: &Fault) -> Result<(), String> {
    match fault {
        Fault::Isolate(i) => {
            let others: Vec<usize> = (0..c.nodes.len()).filter(|j| j != i).collect();
            net.cut_between(&[*i], &others)
        }
        Fault::Split(a, b) => net.cut_between(a, b),
        Fault::OneWay(a, b) => net.cut(*a, *b),
        Fault::Bridge { left, right, .. } => net.cut_between(left, right),
        Fault::KillApi(i) => {
            c.kill_api(*i);
            Ok(())
        }
        Fault::KillRedis(i) => {
            c.kill_redis(*i);
            Ok(())
        }
        Fault::KillWorker(i) => {
            c.kill_workers(*i);
            Ok(())
        }
        Fault::Pause(i) => {
            c.signal_api(*i, "STOP");
            Ok(())
        }
        Fault::Skew(i, offset) => {
            c.kill_api(*i);
            c.nodes[*i].env = vec![("KV_CLOCK_OFFSET_MS".to_owned(), offset.to_string())];
            c.restart_api(*i).await;
            Ok(())
        }
        Fault::Netem(i) => net.slow(*i),
    }
}

/// Undoes `fault`.
async fn undo(c: &mut Cluster, net: &mut Net, fault: &Fault) -> Result<(), String> {
    match fault {
        Fault::Isolate(_) | Fault::Split(..) | Fault::OneWay(..) | Fault::Bridge { .. } => {
            net.heal()
        }
        Fault::KillApi(i) => {
            c.restart_api(*i).await;
            Ok(())
        }
        Fault::KillRedis(i) => {
            c.start_redis(*i).await;
            Ok(())
        }
        Fault::KillWorker(i) => {
            c.restart_workers(*i);
            Ok(())
        }
        Fault::Pause(i) => {
            c.signal_api(*i, "CONT");
            Ok(())
        }
        Fault::Skew(i, _) => {
            c.kill_api(*i);
            c.nodes[*i].env.clear();
            c.restart_api(*i).await;
            Ok(())
        }
        Fault::Netem(_) => net.clear_slow().and_then(|()| net.heal()),
    }
}

fn describe(fault: &Fault, net: &Net) -> String {
    let n = |i: &usize| format!("node{}", i + 1);
    let group = |g: &[usize]| g.iter().map(n).collect::<Vec<_>>().join("+");
    match fault {
        Fault::Isolate(i) => format!("partition: {} isolated", n(i)),
        Fault::Split(a, b) => format!("partition: {} | {}", group(a), group(b)),
        Fault::OneWay(a, b) => format!("partition: one-way {} -> {} dropped", n(a), n(b)),
        Fault::Bridge {
            bridge,
            left,
            right,
        } => format!(
            "partition: {} | {} bridged by {}",
            group(left),
            group(right),
            n(bridge)
        ),
        Fault::KillApi(i) => format!("SIGKILL {} api", n(i)),
        Fault::KillRedis(i) => format!("SIGKILL {} redis", n(i)),
        Fault::KillWorker(i) => format!("SIGKILL {} worker", n(i)),
        Fault::Pause(i) => format!("SIGSTOP {} api", n(i)),
        Fault::Skew(i, o) => format!("clock of {} shifted {o:+} ms", n(i)),
        Fault::Netem(i) if net.netem_supported => format!("netem 30±20 ms, 3% loss to {}", n(i)),
        Fault::Netem(i) => format!("10% packet loss to {} (no netem in this kernel)", n(i)),
    }
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

/// Waits until the replicas of every key agree and no hint is pending;
/// returns the final state per key.
async fn converge(
    c: &Cluster,
    routes: &BTreeMap<String, Vec<usize>>,
) -> BTreeMap<String, Option<Final>> {
    wait_for(
        "replicas to converge after heal",
        Duration::from_secs(90),
        || async {
            if hints_held(c).await > 0 {
                return None;
            }
            let snaps = snapshots(c).await;
            let mut finals = BTreeMap::new();
            for (key, replicas) in routes {
                let held: BTreeSet<Option<Final>> = replicas
                    .iter()
                    .map(|&r| snaps[r].get(key).and_then(record_of))
                    .collect();
                if held.len() != 1 {
                    return None;
                }
                finals.insert(key.clone(), held.into_iter().next().flatten());
            }
            Some(finals)
        },
    )
    .await
}

impl PartialOrd for Final {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Final {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (&self.version, &self.value).cmp(&(&other.version, &other.value))
    }
}

/// The preference list of `key` as node indices.
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
    let hosts = c.nodes.iter().map(|n| n.host.clone()).collect();
    let mut net = Net::new(settings.subnet, hosts).unwrap_or_else(|e| panic!("{e}"));
    let mut report = Report {
        seed: settings.seed,
        background_sync: settings.background_sync,
        ..Report::default()
    };
    let mut routes = BTreeMap::new();
    for k in 0..settings.keys {
        let key = format!("k{k}");
        routes.insert(key.clone(), route_indices(&c, &key).await);
    }

    // Clients.
    let urls: Arc<Vec<String>> = Arc::new((0..c.nodes.len()).map(|i| c.url(i)).collect());
    let sh = Arc::new(Shared {
        history: Mutex::new(Vec::new()),
        ryw: Mutex::new([(0, 0); 2]),
        ryw_misses: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
        started: Instant::now(),
    });
    let mut clients = tokio::task::JoinSet::new();
    for id in 0..settings.clients {
        clients.spawn(client_loop(
            id,
            urls.clone(),
            settings.keys,
            settings.seed,
            sh.clone(),
        ));
    }

    // Faults. The sleeps are the schedule itself (how long a fault holds),
    // not waits for a condition.
    for step in schedule(settings.seed, settings.duration, settings.nodes) {
        let what = step
            .faults
            .iter()
            .map(|f| describe(f, &net))
            .collect::<Vec<_>>()
            .join(" + ");
        eprintln!("[chaos {}] {what} for {:?}", settings.seed, step.hold);
        for fault in &step.faults {
            inject(&mut c, &mut net, fault)
                .await
                .unwrap_or_else(|e| panic!("seed {}: cannot inject {what}: {e}", settings.seed));
        }
        tokio::time::sleep(step.hold).await;
        for fault in step.faults.iter().rev() {
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

    let finals = converge(&c, &routes).await;
    report.converge = healed.elapsed();
    report.keys_checked = finals.len();
    let history = sh.history.lock().await.clone();
    for op in &history {
        *report
            .ops
            .entry(format!("{:?} {:?}", op.kind, op.outcome))
            .or_default() += 1;
        if op.status >= 500 && op.status != 503 {
            report.server_errors += 1;
        }
    }
    report.verdict = check(&history, &finals);
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

/// One node down: detection, quorum writes through the others, then hint
/// delivery once it returns.
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
    wait_for("hints to be delivered", Duration::from_secs(60), || async {
        (hints_held(c).await == 0).then_some(())
    })
    .await;
    let snap = c.snapshot(victim).await;
    let missing: Vec<&String> = owned.iter().filter(|k| !snap.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "seed {}: {victim_id} lacks {} writes it owns after hints were delivered: {missing:?}",
        settings.seed,
        missing.len()
    );
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    fn op(kind: Kind, key: &str, value: Option<&str>, outcome: Outcome, version: &str) -> Op {
        Op {
            client: 0,
            kind,
            key: key.to_owned(),
            value: value.map(str::to_owned),
            outcome,
            status: 200,
            start_ms: 0,
            end_ms: 1,
            version: (!version.is_empty()).then(|| v(version)),
            acks: Vec::new(),
            sloppy: false,
            node: 0,
        }
    }

    fn fin(version: &str, value: Option<&str>) -> Option<Final> {
        Some(Final {
            version: v(version),
            value: value.map(str::to_owned),
        })
    }

    #[test]
    fn same_seed_same_schedule() {
        let a = schedule(7, Duration::from_secs(60), 5);
        assert_eq!(a, schedule(7, Duration::from_secs(60), 5));
        // Neighbouring seeds give different schedules.
        for seed in [2, 3, 6, 8] {
            assert_ne!(a, schedule(seed, Duration::from_secs(60), 5), "seed {seed}");
        }
        assert_ne!(
            schedule(2, Duration::from_secs(60), 5),
            schedule(3, Duration::from_secs(60), 5)
        );
        let total: Duration = a.iter().map(|s| s.hold + s.gap).sum();
        assert!(total >= Duration::from_secs(60));
        // Some steps hold two faults, never two on the same node.
        let long = schedule(7, Duration::from_secs(600), 5);
        assert!(long.iter().any(|s| s.faults.len() == 2));
        for step in &long {
            if let [a, b] = step.faults.as_slice() {
                assert!(
                    single_node(a).is_none() || single_node(a) != single_node(b),
                    "{step:?}"
                );
            }
        }
    }

    #[test]
    fn a_clean_history_passes() {
        let h = vec![
            op(Kind::Write, "a", Some("x"), Outcome::Ok, "10:0:node1"),
            op(Kind::Write, "a", Some("y"), Outcome::Unknown, ""),
            op(Kind::Read, "a", Some("x"), Outcome::Ok, "10:0:node1"),
            // An earlier stamp of the same write (restamped above a newer version).
            op(Kind::Read, "a", Some("x"), Outcome::Ok, "8:0:node1"),
        ];
        let finals = BTreeMap::from([("a".to_owned(), fin("12:0:node2", Some("y")))]);
        assert!(check(&h, &finals).is_clean());
    }

    #[test]
    fn a_lost_write_a_resurrection_a_phantom_and_a_bad_read_are_caught() {
        let h = vec![
            op(Kind::Write, "a", Some("x"), Outcome::Ok, "10:0:node1"),
            op(Kind::Delete, "b", None, Outcome::Ok, "20:0:node1"),
            op(Kind::Write, "b", Some("old"), Outcome::Ok, "15:0:node1"),
            op(Kind::Write, "c", Some("z"), Outcome::Fail, ""),
            op(Kind::Read, "d", Some("never"), Outcome::Ok, "1:0:node1"),
            op(Kind::Write, "e", Some("w"), Outcome::Ok, "5:0:node1"),
            op(Kind::Read, "e", Some("w"), Outcome::Ok, "6:0:node1"),
        ];
        let finals = BTreeMap::from([
            ("a".to_owned(), fin("9:0:node1", Some("older"))),
            ("b".to_owned(), fin("15:0:node1", Some("old"))),
            ("c".to_owned(), fin("30:0:node1", Some("z"))),
            ("e".to_owned(), fin("5:0:node1", Some("w"))),
        ]);
        let verdict = check(&h, &finals);
        assert_eq!(verdict.lost_writes.len(), 1, "{verdict:?}");
        assert_eq!(verdict.resurrections.len(), 1, "{verdict:?}");
        // "older" on a (nobody wrote it) and "z" on c (its write failed).
        assert_eq!(verdict.phantoms.len(), 2, "{verdict:?}");
        // "never" on d, and "w" on e at a version above its write's.
        assert_eq!(verdict.bad_reads.len(), 2, "{verdict:?}");
    }

    #[test]
    fn a_missing_key_with_an_acknowledged_write_is_lost() {
        let h = vec![op(Kind::Write, "a", Some("x"), Outcome::Ok, "10:0:node1")];
        let finals = BTreeMap::from([("a".to_owned(), None)]);
        assert_eq!(check(&h, &finals).lost_writes.len(), 1);
    }
}
