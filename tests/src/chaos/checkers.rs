//! The checkers: a history read against the converged final state.

use std::collections::BTreeMap;

use super::history::{Final, Kind, Op, Outcome};

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
