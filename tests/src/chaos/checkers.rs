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
        let strict_writes: Vec<&Op> = ops
            .iter()
            .copied()
            .filter(|o| matches!(o.kind, Kind::Write | Kind::Delete))
            .filter(|o| o.outcome == Outcome::Ok && o.version.is_some())
            .filter(|o| strict(o.consistency) && !sloppy(o))
            .collect();
        for read in ops.iter().filter(|o| {
            o.kind == Kind::Read && o.outcome == Outcome::Ok && strict(o.consistency) && !o.sloppy
        }) {
            let before: Vec<&Op> = strict_writes
                .iter()
                .copied()
                // Ended before the read started; for one client, whose
                // operations run one after another, in the same ms too.
                .filter(|w| {
                    w.end_ms < read.start_ms
                        || (w.client == read.client && w.end_ms <= read.start_ms)
                })
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
mod tests {
    #![allow(clippy::unwrap_used)]
    use shared::core::record::Version;

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
            replicas: Vec::new(),
            sloppy: false,
            consistency: Consistency::Quorum,
            node: 0,
        }
    }

    /// `op` run from `start_ms` to `end_ms`.
    fn at(op: Op, start_ms: u64, end_ms: u64) -> Op {
        Op {
            start_ms,
            end_ms,
            ..op
        }
    }

    fn fin(version: &str, value: Option<&str>) -> Option<Final> {
        Some(Final {
            version: v(version),
            value: value.map(str::to_owned),
        })
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
        assert!(check(&h, &finals, &Context::none()).is_clean());
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
        let verdict = check(&h, &finals, &Context::none());
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
        assert_eq!(check(&h, &finals, &Context::none()).lost_writes.len(), 1);
    }

    #[test]
    fn a_write_superseded_only_by_a_version_nobody_made_is_lost() {
        let h = vec![op(Kind::Write, "a", Some("x"), Outcome::Ok, "10:0:node1")];
        let finals = BTreeMap::from([("a".to_owned(), fin("12:0:node2", Some("y")))]);
        let verdict = check(&h, &finals, &Context::none());
        assert_eq!(verdict.lost_writes.len(), 1, "{verdict:?}");
        assert!(
            verdict.lost_writes[0].contains("superseded only by a version no operation made"),
            "{verdict:?}"
        );
        assert!(!verdict.is_clean());
        // Its own value above the version it was acknowledged with: nobody
        // made that version either (a write is acknowledged at its last stamp).
        let finals = BTreeMap::from([("a".to_owned(), fin("12:0:node2", Some("x")))]);
        assert_eq!(check(&h, &finals, &Context::none()).lost_writes.len(), 1);
        // The same with an acknowledged delete: a tombstone above it that no
        // other delete made.
        let h = vec![op(Kind::Delete, "a", None, Outcome::Ok, "10:0:node1")];
        let finals = BTreeMap::from([("a".to_owned(), fin("12:0:node2", None))]);
        let verdict = check(&h, &finals, &Context::none());
        assert_eq!(verdict.resurrections.len(), 1, "{verdict:?}");
    }

    #[test]
    fn a_write_superseded_by_a_later_acknowledged_write_is_kept() {
        let h = vec![
            at(
                op(Kind::Write, "a", Some("x"), Outcome::Ok, "10:0:node1"),
                0,
                1,
            ),
            at(
                op(Kind::Write, "a", Some("y"), Outcome::Ok, "12:0:node2"),
                2,
                3,
            ),
        ];
        let finals = BTreeMap::from([("a".to_owned(), fin("12:0:node2", Some("y")))]);
        let verdict = check(&h, &finals, &Context::none());
        assert!(verdict.is_clean(), "{verdict:?}");
    }

    #[test]
    fn a_delete_superseded_by_an_unknown_write_of_the_final_value_is_kept() {
        let h = vec![
            at(op(Kind::Delete, "a", None, Outcome::Ok, "10:0:node1"), 0, 1),
            at(op(Kind::Write, "a", Some("y"), Outcome::Unknown, ""), 2, 3),
        ];
        let finals = BTreeMap::from([("a".to_owned(), fin("12:0:node2", Some("y")))]);
        let verdict = check(&h, &finals, &Context::none());
        assert!(verdict.is_clean(), "{verdict:?}");
        // And a write superseded by an unknown delete (a tombstone nobody
        // acknowledged), likewise.
        let h = vec![
            at(
                op(Kind::Write, "a", Some("x"), Outcome::Ok, "10:0:node1"),
                0,
                1,
            ),
            at(op(Kind::Delete, "a", None, Outcome::Unknown, ""), 2, 3),
        ];
        let finals = BTreeMap::from([("a".to_owned(), fin("12:0:node2", None))]);
        assert!(check(&h, &finals, &Context::none()).is_clean());
    }

    /// Key `a`: "old" written at 5, "new" at 10 (ending at 3 ms), and a read
    /// of "old" at 5 that runs from `start` to `start + 1`.
    fn stale_history(new_write: Op, read_start: u64) -> Vec<Op> {
        vec![
            at(
                op(Kind::Write, "a", Some("old"), Outcome::Ok, "5:0:node1"),
                0,
                1,
            ),
            at(new_write, 2, 3),
            // Another client's read: its order against the write is known
            // only from the times.
            Op {
                client: 1,
                ..at(
                    op(Kind::Read, "a", Some("old"), Outcome::Ok, "5:0:node1"),
                    read_start,
                    read_start + 1,
                )
            },
        ]
    }

    fn new_write() -> Op {
        op(Kind::Write, "a", Some("new"), Outcome::Ok, "10:0:node2")
    }

    fn finals_new() -> BTreeMap<String, Option<Final>> {
        BTreeMap::from([("a".to_owned(), fin("10:0:node2", Some("new")))])
    }

    #[test]
    fn a_strict_read_after_an_acknowledged_strict_write_that_misses_it_is_stale() {
        let verdict = check(
            &stale_history(new_write(), 4),
            &finals_new(),
            &Context::none(),
        );
        assert_eq!(verdict.stale_reads.len(), 1, "{verdict:?}");
        assert!(verdict.lost_writes.is_empty() && verdict.bad_reads.is_empty());
        // Not found at all is older than any write.
        let mut h = stale_history(new_write(), 4);
        h[2] = at(op(Kind::Read, "a", None, Outcome::Ok, ""), 4, 5);
        assert_eq!(
            check(&h, &finals_new(), &Context::none()).stale_reads.len(),
            1
        );
        // After an acknowledged delete, the read must see its tombstone.
        let delete = op(Kind::Delete, "a", None, Outcome::Ok, "10:0:node2");
        let finals = BTreeMap::from([("a".to_owned(), fin("10:0:node2", None))]);
        assert_eq!(
            check(&stale_history(delete, 4), &finals, &Context::none())
                .stale_reads
                .len(),
            1
        );
        // Seeing the write, or a newer version, is fine.
        let mut h = stale_history(new_write(), 4);
        h[2] = at(
            op(Kind::Read, "a", Some("new"), Outcome::Ok, "10:0:node2"),
            4,
            5,
        );
        assert!(check(&h, &finals_new(), &Context::none()).is_clean());
    }

    #[test]
    fn a_read_that_overlaps_the_write_is_not_stale() {
        // Started at 3 ms, when the write ended: not after it.
        let verdict = check(
            &stale_history(new_write(), 3),
            &finals_new(),
            &Context::none(),
        );
        assert!(verdict.is_clean(), "{verdict:?}");
        let verdict = check(
            &stale_history(new_write(), 2),
            &finals_new(),
            &Context::none(),
        );
        assert!(verdict.is_clean(), "{verdict:?}");
    }

    #[test]
    fn sloppy_or_weak_operations_are_not_held_to_strict_reads() {
        let sloppy = Op {
            sloppy: true,
            ..new_write()
        };
        let verdict = check(&stale_history(sloppy, 4), &finals_new(), &Context::none());
        assert!(verdict.is_clean(), "{verdict:?}");
        let weak_write = Op {
            consistency: Consistency::One,
            ..new_write()
        };
        assert!(
            check(
                &stale_history(weak_write, 4),
                &finals_new(),
                &Context::none()
            )
            .is_clean()
        );
        let mut h = stale_history(new_write(), 4);
        h[2].consistency = Consistency::One;
        assert!(check(&h, &finals_new(), &Context::none()).is_clean());
        // At all, both ways, it is checked.
        let mut h = stale_history(
            Op {
                consistency: Consistency::All,
                ..new_write()
            },
            4,
        );
        h[2].consistency = Consistency::All;
        assert_eq!(
            check(&h, &finals_new(), &Context::none()).stale_reads.len(),
            1
        );
    }

    #[test]
    fn a_read_by_the_writing_client_in_the_same_ms_is_after_the_write() {
        let mut h = stale_history(new_write(), 3);
        h[2].client = h[1].client;
        let verdict = check(&h, &finals_new(), &Context::none());
        assert_eq!(verdict.stale_reads.len(), 1, "{verdict:?}");
        assert!(!verdict.is_clean());
    }

    /// The new write of [`stale_history`] acknowledged by node2 and node3,
    /// of preference list node1-node3.
    fn acked_write() -> Op {
        Op {
            acks: vec!["node2".to_owned(), "node3".to_owned()],
            replicas: vec!["node1".to_owned(), "node2".to_owned(), "node3".to_owned()],
            ..new_write()
        }
    }

    /// A SIGKILL of node `node`'s Redis (index from 0) at `at_ms`.
    fn redis_kill(node: usize, at_ms: u64) -> FaultEvent {
        FaultEvent {
            at_ms,
            fault: Fault::KillRedis(node),
            undone: false,
        }
    }

    fn with_timeline(timeline: &[FaultEvent]) -> Context<'_> {
        Context {
            timeline,
            ..Context::none()
        }
    }

    #[test]
    fn a_stale_read_after_a_redis_kill_within_the_everysec_window_is_explained() {
        // The write ends at 3 ms; node2 acknowledged it and its Redis was
        // killed 1 s later; the read at 2 s met node2 and node1.
        let h = stale_history(acked_write(), 2_000);
        let timeline = [redis_kill(1, 1_003)];
        let verdict = check(&h, &finals_new(), &with_timeline(&timeline));
        assert!(verdict.stale_reads.is_empty(), "{verdict:?}");
        assert_eq!(verdict.stale_reads_durability.len(), 1, "{verdict:?}");
        assert!(
            verdict.stale_reads_durability[0].contains("node2"),
            "{verdict:?}"
        );
        assert!(verdict.is_clean(), "{verdict:?}");
        // At the edge of the window, and during the write, likewise.
        for at_ms in [3 + EVERYSEC_LOSS_WINDOW_MS, 2] {
            let timeline = [redis_kill(2, at_ms)];
            let verdict = check(&h, &finals_new(), &with_timeline(&timeline));
            assert_eq!(
                verdict.stale_reads_durability.len(),
                1,
                "{at_ms}: {verdict:?}"
            );
            assert!(verdict.is_clean(), "{at_ms}: {verdict:?}");
        }
    }

    #[test]
    fn a_stale_read_no_redis_kill_explains_fails() {
        let h = stale_history(acked_write(), 2_000);
        let undone = FaultEvent {
            undone: true,
            ..redis_kill(1, 1_003)
        };
        let unexplained: [(&str, Vec<FaultEvent>); 6] = [
            ("no fault", vec![]),
            ("too late", vec![redis_kill(1, 4 + EVERYSEC_LOSS_WINDOW_MS)]),
            ("before the write", vec![redis_kill(1, 1)]),
            ("node1 did not acknowledge", vec![redis_kill(0, 1_003)]),
            ("a Redis restart, not a kill", vec![undone]),
            (
                "an API kill",
                vec![FaultEvent {
                    fault: Fault::KillApi(1),
                    ..redis_kill(1, 1_003)
                }],
            ),
        ];
        for (why, timeline) in &unexplained {
            let verdict = check(&h, &finals_new(), &with_timeline(timeline));
            assert_eq!(verdict.stale_reads.len(), 1, "{why}: {verdict:?}");
            assert!(verdict.stale_reads_durability.is_empty(), "{why}");
            assert!(!verdict.is_clean(), "{why}");
        }
        // A kill after the read ended cannot explain it.
        let h = stale_history(acked_write(), 500);
        let timeline = [redis_kill(1, 1_000)];
        let verdict = check(&h, &finals_new(), &with_timeline(&timeline));
        assert_eq!(verdict.stale_reads.len(), 1, "{verdict:?}");
        // Two writes missed, only the newer one lost by a killed replica:
        // the older one is unexplained.
        let mut h = stale_history(acked_write(), 2_000);
        h.insert(
            1,
            Op {
                acks: vec!["node1".to_owned(), "node3".to_owned()],
                ..at(
                    op(Kind::Write, "a", Some("mid"), Outcome::Ok, "7:0:node1"),
                    1,
                    2,
                )
            },
        );
        let timeline = [redis_kill(1, 1_003)];
        let verdict = check(&h, &finals_new(), &with_timeline(&timeline));
        assert_eq!(verdict.stale_reads.len(), 1, "{verdict:?}");
        assert!(verdict.stale_reads_durability.is_empty(), "{verdict:?}");
    }

    #[test]
    fn a_write_acknowledged_outside_its_preference_list_is_sloppy_whatever_it_says() {
        // node4 is a fallback: the write is sloppy, and a quorum read may
        // miss it; answering "sloppy": false is the violation.
        let unreported = Op {
            acks: vec!["node3".to_owned(), "node4".to_owned()],
            ..acked_write()
        };
        let verdict = check(
            &stale_history(unreported.clone(), 4),
            &finals_new(),
            &Context::none(),
        );
        assert!(verdict.stale_reads.is_empty(), "{verdict:?}");
        assert_eq!(verdict.sloppy_unreported.len(), 1, "{verdict:?}");
        assert!(!verdict.is_clean());
        let reported = Op {
            sloppy: true,
            ..unreported
        };
        let verdict = check(&stale_history(reported, 4), &finals_new(), &Context::none());
        assert!(verdict.is_clean(), "{verdict:?}");
    }

    #[test]
    fn a_write_through_a_node_skewed_beyond_the_bound_is_unfenced() {
        let skew = |offset: i64, at_ms: u64, undone: bool| FaultEvent {
            at_ms,
            fault: Fault::Skew(1, offset),
            undone,
        };
        let timeline = [skew(600_000, 10, false), skew(600_000, 100, true)];
        let cx = Context {
            drift_max_ms: 60_000,
            ..with_timeline(&timeline)
        };
        let write = |node: usize, start_ms: u64| Op {
            node,
            ..at(
                op(Kind::Write, "a", Some("x"), Outcome::Ok, "10:0:node2"),
                start_ms,
                start_ms + 1,
            )
        };
        let finals = BTreeMap::from([("a".to_owned(), fin("10:0:node2", Some("x")))]);
        let verdict = check(&[write(1, 50)], &finals, &cx);
        assert_eq!(verdict.unfenced_writes.len(), 1, "{verdict:?}");
        assert!(!verdict.is_clean());
        // Before or after the skew, through another node, or refused: fine.
        for h in [write(1, 5), write(1, 101), write(0, 50)] {
            let verdict = check(&[h], &finals, &cx);
            assert!(verdict.is_clean(), "{verdict:?}");
        }
        let refused = Op {
            outcome: Outcome::Unknown,
            status: 503,
            ..write(1, 50)
        };
        assert!(check(&[refused], &finals, &cx).unfenced_writes.is_empty());
        // Within the bound, the skewed node may coordinate.
        let timeline = [skew(2_000, 10, false), skew(2_000, 100, true)];
        let cx = Context {
            drift_max_ms: 60_000,
            ..with_timeline(&timeline)
        };
        assert!(check(&[write(1, 50)], &finals, &cx).is_clean());
    }

    #[test]
    fn a_version_beyond_the_drift_bound_of_real_time_is_caught() {
        let cx = Context {
            epoch_ms: 1_000_000,
            drift_max_ms: 60_000,
            ..Context::none()
        };
        // Read at 4-5 ms: real time 1,000,005 ms, bound 1,060,005 ms.
        let h = vec![at(
            op(Kind::Read, "a", None, Outcome::Ok, "1060006:0:node3"),
            4,
            5,
        )];
        let finals = BTreeMap::from([("a".to_owned(), None)]);
        let verdict = check(&h, &finals, &cx);
        assert_eq!(verdict.future_versions.len(), 1, "{verdict:?}");
        assert!(!verdict.is_clean());
        let h = vec![at(
            op(Kind::Read, "a", None, Outcome::Ok, "1060005:0:node3"),
            4,
            5,
        )];
        assert!(check(&h, &finals, &cx).is_clean());
        // A replica holding one at the end.
        let finals = BTreeMap::from([("a".to_owned(), fin("9000000:0:node3", None))]);
        assert_eq!(check(&h, &finals, &cx).future_versions.len(), 1);
    }

    #[test]
    fn a_collected_tombstone_is_a_delete_in_effect_not_a_loss() {
        let h = vec![
            at(
                op(Kind::Write, "a", Some("x"), Outcome::Ok, "5:0:node1"),
                0,
                1,
            ),
            at(op(Kind::Delete, "a", None, Outcome::Ok, "10:0:node2"), 2, 3),
            // A read after GC: no record at all.
            Op {
                client: 1,
                ..at(op(Kind::Read, "a", None, Outcome::Ok, ""), 4, 5)
            },
        ];
        let finals = BTreeMap::from([("a".to_owned(), None)]);
        let verdict = check(&h, &finals, &Context::none());
        assert!(verdict.is_clean(), "{verdict:?}");
        // A write acknowledged after the delete must not read as nothing,
        // nor end as nothing.
        let mut h = h;
        h.insert(
            2,
            at(
                op(Kind::Write, "a", Some("y"), Outcome::Ok, "12:0:node1"),
                3,
                4,
            ),
        );
        h[3] = Op {
            client: 1,
            ..at(op(Kind::Read, "a", None, Outcome::Ok, ""), 5, 6)
        };
        let verdict = check(&h, &finals, &Context::none());
        assert_eq!(verdict.stale_reads.len(), 1, "{verdict:?}");
        assert_eq!(verdict.lost_writes.len(), 1, "{verdict:?}");
        // A delete acknowledged below the write does not excuse it either.
        let h = vec![
            at(
                op(Kind::Write, "a", Some("x"), Outcome::Ok, "10:0:node1"),
                2,
                3,
            ),
            at(op(Kind::Delete, "a", None, Outcome::Ok, "5:0:node2"), 0, 1),
        ];
        assert_eq!(check(&h, &finals, &Context::none()).lost_writes.len(), 1);
    }

    #[test]
    fn a_read_of_nothing_after_a_sloppy_or_unknown_delete_is_not_stale() {
        // "new" acknowledged at 2-3 ms; then a delete above it, which GC
        // collects; a read at 10 ms finds nothing.
        let delete = |outcome: Outcome, version: &str| Op {
            client: 2,
            ..at(op(Kind::Delete, "a", None, outcome, version), 4, 5)
        };
        let read_nothing = Op {
            client: 1,
            ..at(op(Kind::Read, "a", None, Outcome::Ok, ""), 10, 11)
        };
        let finals = BTreeMap::from([("a".to_owned(), None)]);
        let explained = [
            Op {
                sloppy: true,
                ..delete(Outcome::Ok, "12:0:node3")
            },
            delete(Outcome::Unknown, ""),
            delete(Outcome::Ok, "12:0:node3"),
        ];
        for d in explained {
            let h = vec![at(new_write(), 2, 3), d.clone(), read_nothing.clone()];
            let verdict = check(&h, &finals, &Context::none());
            assert!(verdict.stale_reads.is_empty(), "{d:?}: {verdict:?}");
        }
        // A failed delete, a delete below the write, or one that started
        // after the read ended cannot have removed it.
        let unexplained = [
            delete(Outcome::Fail, ""),
            delete(Outcome::Ok, "8:0:node3"),
            at(delete(Outcome::Ok, "12:0:node3"), 12, 13),
        ];
        for d in unexplained {
            let h = vec![at(new_write(), 2, 3), d.clone(), read_nothing.clone()];
            let verdict = check(&h, &finals, &Context::none());
            assert_eq!(verdict.stale_reads.len(), 1, "{d:?}: {verdict:?}");
        }
    }
}
