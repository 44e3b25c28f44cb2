//! Everything a run measured, and how it is printed.

use std::collections::BTreeMap;
use std::time::Duration;

use super::checkers::Verdict;
use super::history::FaultEvent;
use super::schedule::Fault;

/// Everything a run measured.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub background_sync: bool,
    /// The cluster served HTTPS, with mutual TLS and `rediss://`.
    pub tls: bool,
    pub faults: Vec<String>,
    /// Every fault injected and undone, with its time.
    pub timeline: Vec<FaultEvent>,
    pub ops: BTreeMap<String, usize>,
    pub server_errors: usize,
    pub verdict: Verdict,
    pub keys_checked: usize,
    pub converge: Duration,
    pub ryw_strict: (usize, usize),
    pub ryw_sloppy: (usize, usize),
    /// The first read-your-writes misses (strict or sloppy), described.
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
            "chaos seed {} ({} fault steps, background sync {}{})",
            self.seed,
            self.faults.len(),
            if self.background_sync { "on" } else { "off" },
            if self.tls { ", TLS everywhere" } else { "" }
        )?;
        for fault in &self.faults {
            writeln!(f, "  fault: {fault}")?;
        }
        let redis_kills: Vec<String> = self
            .timeline
            .iter()
            .filter_map(|e| match e.fault {
                Fault::KillRedis(i) if !e.undone => {
                    Some(format!("node{} at {} ms", i + 1, e.at_ms))
                }
                _ => None,
            })
            .collect();
        writeln!(f, "  Redis SIGKILLs: [{}]", redis_kills.join(", "))?;
        writeln!(f, "  operations: {:?}", self.ops)?;
        writeln!(f, "  5xx other than 503: {}", self.server_errors)?;
        writeln!(f, "  acknowledged writes lost: {}", v.lost_writes.len())?;
        writeln!(f, "  deletes resurrected: {}", v.resurrections.len())?;
        writeln!(f, "  final records nobody wrote: {}", v.phantoms.len())?;
        writeln!(f, "  reads of values nobody wrote: {}", v.bad_reads.len())?;
        writeln!(
            f,
            "  strict reads older than a strict write acknowledged before them: {}",
            v.stale_reads.len()
        )?;
        writeln!(
            f,
            "  writes acknowledged outside the preference list, answered not sloppy: {}",
            v.sloppy_unreported.len()
        )?;
        writeln!(
            f,
            "  writes acknowledged through a node beyond the clock drift bound: {}",
            v.unfenced_writes.len()
        )?;
        writeln!(
            f,
            "  versions beyond the drift bound of real time seen or held: {}",
            v.future_versions.len()
        )?;
        writeln!(
            f,
            "  stale reads explained by everysec durability window: {}",
            v.stale_reads_durability.len()
        )?;
        for line in &v.stale_reads_durability {
            writeln!(f, "    explained: {line}")?;
        }
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
            "  replicas identical {:.2} s after heal ({} keys; {} differ)",
            self.converge.as_secs_f64(),
            self.keys_checked,
            v.diverged.len()
        )?;
        writeln!(
            f,
            "  read-your-writes with the min_version token: strict quorum {}, sloppy quorum {}",
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
                "  writes it owns on the returned node {:.2} s after it returned",
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
            .chain(&v.stale_reads)
            .chain(&v.sloppy_unreported)
            .chain(&v.unfenced_writes)
            .chain(&v.future_versions)
            .chain(&v.diverged)
            .take(30)
        {
            writeln!(f, "  VIOLATION {line}")?;
        }
        Ok(())
    }
}
