//! The checkers: a history read against the converged final state, each
//! acknowledged operation on its own (in the manner of etcd's robustness
//! tests and Jepsen).

use std::collections::BTreeMap;

use shared::core::quorum::Consistency;
use shared::core::record::Version;

use super::history::{FaultEvent, Final, Kind, Op, Outcome};
use super::schedule::Fault;

/// What the checkers found.
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    pub lost_writes: Vec<String>,
    pub resurrections: Vec<String>,
    pub phantoms: Vec<String>,
    pub bad_reads: Vec<String>,
    /// Strict reads (quorum or all) that returned a version older than that
    /// of a strict, not sloppy, write or delete of the same key acknowledged
    /// before the read started: with R + W > N the read must see it.
    pub stale_reads: Vec<String>,
    /// Strict reads that would be stale, but every write they missed was
    /// acknowledged by a node whose Redis was SIGKILLed within
    /// [`EVERYSEC_LOSS_WINDOW_MS`] after: the stated durability window of
    /// `appendfsync everysec`, not a violation. Reported, not failing.
    pub stale_reads_durability: Vec<String>,
    /// Acknowledged operations whose version is below that of an
    /// acknowledged operation on the same key that had finished before they
    /// started: last-writer-wins then orders them against real time (what a
    /// skewed clock does). Reported, not a violation of the contract.
    pub order_inversions: Vec<String>,
    /// Acknowledged writes that a node outside the key's preference list
    /// acknowledged (a sloppy quorum) while the answer said `"sloppy":
    /// false`: a client is promised R + W > N that does not hold.
    pub sloppy_unreported: Vec<String>,
    /// Writes acknowledged through a node while its clock was beyond the
    /// drift bound (it must answer 503 `clock_skew`).
    pub unfenced_writes: Vec<String>,
    /// Versions beyond the drift bound of real time that a client saw (in a
    /// read or a write's answer) or that a replica holds at the end.
    pub future_versions: Vec<String>,
    /// Keys whose replicas still disagreed after the faults were healed
    /// (filled by the run, not by [`check`]).
    pub diverged: Vec<String>,
}

impl Verdict {
    pub fn is_clean(&self) -> bool {
        self.lost_writes.is_empty()
            && self.resurrections.is_empty()
            && self.phantoms.is_empty()
            && self.bad_reads.is_empty()
            && self.stale_reads.is_empty()
            && self.sloppy_unreported.is_empty()
            && self.unfenced_writes.is_empty()
            && self.future_versions.is_empty()
            && self.diverged.is_empty()
    }
}

/// What the checkers know of the run beyond the history.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// Every fault injected and undone, with its time.
    pub timeline: &'a [FaultEvent],
    /// The harness's wall clock (ms since the Unix epoch) at ms 0 of the
    /// history.
    pub epoch_ms: u64,
    /// The nodes' `KV_CLOCK_DRIFT_MS_MAX`.
    pub drift_max_ms: u64,
}

impl Context<'_> {
    /// No faults, no clock limits (for histories checked on their own).
    pub fn none() -> Context<'static> {
        Context {
            timeline: &[],
            epoch_ms: 0,
            drift_max_ms: u64::MAX / 4,
        }
    }

    /// Whether `version` is beyond the drift bound of real time at `at_ms`
    /// (history time).
    fn beyond_bound(&self, version: &Version, at_ms: u64) -> bool {
        version.ts.wall_ms > self.epoch_ms + at_ms + self.drift_max_ms
    }

    /// The windows (history ms, inclusive) in which node `node`'s clock was
    /// beyond the drift bound.
    fn skewed_beyond_bound(&self, node: usize) -> Vec<(u64, u64)> {
        let mut windows = Vec::new();
        for (i, e) in self.timeline.iter().enumerate() {
            let Fault::Skew(n, offset) = e.fault else {
                continue;
            };
            if e.undone || n != node || offset.unsigned_abs() <= self.drift_max_ms {
                continue;
            }
            let end = self.timeline[i + 1..]
                .iter()
                .find(|u| u.undone && u.fault == e.fault)
                .map_or(u64::MAX, |u| u.at_ms);
            windows.push((e.at_ms, end));
        }
        windows
    }
}

/// Whether a write's acknowledgement counted a node outside the key's
/// preference list (as its answer names them), whatever its `sloppy` says.
fn acked_outside(op: &Op) -> Vec<&String> {
    if op.replicas.is_empty() {
        return Vec::new();
    }
    op.acks
        .iter()
        .filter(|a| !op.replicas.contains(a))
        .collect()
}

/// A write is sloppy when it says so or when a node outside the
/// preference list acknowledged it.
fn sloppy(op: &Op) -> bool {
    op.sloppy || !acked_outside(op).is_empty()
}

/// Whether a level meets every other strict level in at least one replica
/// (quorum or all: R + W > N for any pair of them).
fn strict(consistency: Consistency) -> bool {
    matches!(consistency, Consistency::Quorum | Consistency::All)
}

/// Whether a write or delete of the history other than `superseded` made
/// `fin`: an acknowledged one stamped with its version, an attempted
/// (acknowledged or unknown) write of its value (values are unique), or an
/// attempted delete when it is a tombstone. Reads are left out: seeing a
/// version is not making it. `superseded` itself is left out too: a write
/// is acknowledged with the last version it was stamped with, so its own
/// value (or tombstone) above that version was made by nobody.
fn made_by_other(ops: &[&Op], fin: &Final, superseded: &Op) -> bool {
    ops.iter()
        .filter(|o| !std::ptr::eq(**o, superseded))
        .any(|o| {
            let stamped = o.outcome == Outcome::Ok && o.version.as_ref() == Some(&fin.version);
            let attempted = o.outcome != Outcome::Fail
                && match (&fin.value, o.kind) {
                    (Some(val), Kind::Write) => o.value.as_deref() == Some(val.as_str()),
                    (None, Kind::Delete) => true,
                    _ => false,
                };
            o.kind != Kind::Read && (stamped || attempted)
        })
}

/// How long after a write was acknowledged a SIGKILL of the Redis of a
/// replica that acknowledged it may still lose it. Chaos runs use
/// `appendfsync everysec` (see `chaos_options`): Redis writes each command
/// to the append-only file before answering and fsyncs once a second, so a
/// host crash loses about the last second, but a SIGKILL of the process
/// alone loses only what Redis had not yet written when it answered: with
/// everysec it postpones that write while a background fsync is slow (up to
/// about 2 s). Rare and short, but stated; the margin covers the harness's
/// own timing. A stale read it explains is reported, not failing.
pub const EVERYSEC_LOSS_WINDOW_MS: u64 = 1_500;

/// The acknowledged strict writes and deletes of `before` that `read` did
/// not see: versions above the one it returned. A read that found nothing
/// at all (no record, no tombstone) may have met a tombstone GC collected:
/// it missed only the writes above every delete of the history that may
/// have taken effect before it ended (`ops`: every operation on the key,
/// sloppy or not; a delete of unknown version may be above any write).
fn missed_by<'a>(read: &Op, before: &[&'a Op], ops: &[&Op]) -> Vec<&'a Op> {
    let floor = if read.version.is_none() && read.value.is_none() {
        let deletes: Vec<&&Op> = ops
            .iter()
            .filter(|d| d.kind == Kind::Delete && d.outcome != Outcome::Fail)
            .filter(|d| d.start_ms <= read.end_ms)
            .collect();
        if deletes.iter().any(|d| d.version.is_none()) {
            return Vec::new();
        }
        deletes.iter().map(|d| d.version.clone()).max().flatten()
    } else {
        read.version.clone()
    };
    before
        .iter()
        .copied()
        .filter(|w| w.version > floor)
        .collect()
}

/// The durability window that can explain why `read` missed acknowledged
/// write `w`: the Redis of a node that acknowledged `w` was SIGKILLed
/// between the start of `w` and [`EVERYSEC_LOSS_WINDOW_MS`] after its
/// acknowledgement, and before the read ended. Described, or `None`.
fn durability_loss(w: &Op, read: &Op, timeline: &[FaultEvent]) -> Option<String> {
    let window_end_ms = (w.end_ms + EVERYSEC_LOSS_WINDOW_MS).min(read.end_ms);
    timeline.iter().find_map(|e| {
        let Fault::KillRedis(node) = e.fault else {
            return None;
        };
        let id = format!("node{}", node + 1);
        let in_window = !e.undone && (w.start_ms..=window_end_ms).contains(&e.at_ms);
        (in_window && w.acks.contains(&id)).then(|| {
            format!(
                "{id} acknowledged {:?} and its Redis was SIGKILLed at {} ms, {} ms after the acknowledgement",
                w.version,
                e.at_ms,
                e.at_ms.saturating_sub(w.end_ms)
            )
        })
    })
}

/// Whether a delete of the history other than `w` may have superseded it:
/// acknowledged above its version, or attempted with an unknown version.
fn deleted_after(ops: &[&Op], w: &Op) -> bool {
    ops.iter().any(|d| {
        d.kind == Kind::Delete
            && !std::ptr::eq(*d, w)
            && match (&d.outcome, &d.version) {
                (Outcome::Ok, Some(dv)) => Some(dv) > w.version.as_ref(),
                (Outcome::Fail, _) => false,
                _ => true,
            }
    })
}

/// Checks a history against the converged final state (`None`: no replica
/// holds the key at all).
pub fn check(
    history: &[Op],
    finals: &BTreeMap<String, Option<Final>>,
    cx: &Context<'_>,
) -> Verdict {
    let mut v = Verdict::default();
    for op in history.iter().filter(|o| o.outcome == Outcome::Ok) {
        let what = || {
            format!(
                "{}: {:?} {:?} (client {}, via node{}, at {}-{} ms)",
                op.key,
                op.kind,
                op.version,
                op.client,
                op.node + 1,
                op.start_ms,
                op.end_ms
            )
        };
        if op.kind != Kind::Read {
            let outside = acked_outside(op);
            if !op.sloppy && !outside.is_empty() {
                v.sloppy_unreported.push(format!(
                    "{} acknowledged by {outside:?}, outside the preference list {:?}, answered \"sloppy\": false",
                    what(),
                    op.replicas
                ));
            }
            if let Some((from, to)) = cx
                .skewed_beyond_bound(op.node)
                .into_iter()
                .find(|(from, to)| (*from..=*to).contains(&op.start_ms))
            {
                v.unfenced_writes.push(format!(
                    "{} acknowledged while node{}'s clock was beyond the drift bound ({from}-{to} ms)",
                    what(),
                    op.node + 1
                ));
            }
        }
        if let Some(version) = &op.version
            && cx.beyond_bound(version, op.end_ms)
        {
            v.future_versions
                .push(format!("{} is beyond the drift bound of real time", what()));
        }
    }
    let end_ms = history.iter().map(|o| o.end_ms).max().unwrap_or(0);
    for (key, fin) in finals {
        if let Some(f) = fin
            && cx.beyond_bound(&f.version, end_ms)
        {
            v.future_versions.push(format!(
                "{key}: final {f:?} is beyond the drift bound of real time"
            ));
        }
    }
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    for (key, ops) in &by_key {
        let fin = finals.get(*key).cloned().flatten();
        let final_version = fin.as_ref().map(|f| &f.version);
        // Each acknowledged write or delete is in the final state, or
        // superseded by a version that an operation of the history made
        // (a higher version nobody made does not excuse its loss).
        for op in ops.iter().filter(|o| o.outcome == Outcome::Ok) {
            let (Some(version), Kind::Write | Kind::Delete) = (&op.version, op.kind) else {
                continue;
            };
            let what = format!(
                "{key}: acknowledged {:?} {version} (client {}, via node{}, at {} ms)",
                op.kind,
                op.client,
                op.node + 1,
                op.start_ms
            );
            let lost = match &fin {
                Some(f) if &f.version == version => None,
                Some(f) if &f.version > version => (!made_by_other(ops, f, op)).then(|| {
                    format!("{what} superseded only by a version no operation made: final {f:?}")
                }),
                // No replica holds the key: its tombstone was collected (GC
                // runs during chaos). An acknowledged delete is in effect; a
                // write only if another operation's delete superseded it.
                None if op.kind == Kind::Delete => None,
                None => (!deleted_after(ops, op)).then(|| {
                    format!("{what} but no replica holds the key, and no delete of the history is above it")
                }),
                Some(_) => Some(format!("{what} but the final version is {final_version:?}")),
            };
            if let Some(what) = lost {
                if op.kind == Kind::Delete {
                    v.resurrections.push(what);
                } else {
                    v.lost_writes.push(what);
                }
            }
        }
        // A strict read that started after strict, not sloppy, writes or
        // deletes were acknowledged returns their version or a newer one.
        // With their places in the history: one client's operations run one
        // after another and enter the history in that order, which orders
        // two of them that share a millisecond (their times cannot).
        let strict_writes: Vec<(usize, &Op)> = ops
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, o)| matches!(o.kind, Kind::Write | Kind::Delete))
            .filter(|(_, o)| o.outcome == Outcome::Ok && o.version.is_some())
            .filter(|(_, o)| strict(o.consistency) && !sloppy(o))
            .collect();
        for (at, read) in ops.iter().copied().enumerate().filter(|(_, o)| {
            o.kind == Kind::Read && o.outcome == Outcome::Ok && strict(o.consistency) && !o.sloppy
        }) {
            let before: Vec<&Op> = strict_writes
                .iter()
                // Ended before the read started; for the read's own client,
                // in the same ms too when earlier in its sequence.
                .filter(|(w_at, w)| {
                    w.end_ms < read.start_ms
                        || (w.client == read.client && w.end_ms == read.start_ms && *w_at < at)
                })
                .map(|(_, w)| *w)
                .collect();
            let missed = missed_by(read, &before, ops);
            let Some(newest) = missed
                .iter()
                .copied()
                .max_by(|a, b| a.version.cmp(&b.version))
            else {
                continue;
            };
            let what = format!(
                "{key}: {} read via node{} at {}-{} ms returned {:?} at {:?}, below {:?} {:?} (client {}) acknowledged at {} via node{} at {} ms",
                read.consistency,
                read.node + 1,
                read.start_ms,
                read.end_ms,
                read.value,
                read.version,
                newest.kind,
                newest.version,
                newest.client,
                newest.consistency,
                newest.node + 1,
                newest.end_ms
            );
            // Every write the read missed must have been lost by a replica
            // that acknowledged it (R + W > N: the read met one of them).
            let kills: Vec<String> = missed
                .iter()
                .map(|w| durability_loss(w, read, cx.timeline))
                .collect::<Option<_>>()
                .unwrap_or_default();
            if kills.is_empty() {
                v.stale_reads.push(what);
            } else {
                v.stale_reads_durability
                    .push(format!("{what}; {}", kills.join("; ")));
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

#[cfg(test)]
#[path = "checkers_tests.rs"]
mod tests;
