//! Unit tests of the checkers: each violation caught, each excuse honoured.

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

/// One client's read and its next write in the same millisecond: the
/// history's order (the client's own) puts the read first, so it need not
/// see that write (seed 1209 reported such reads as stale).
#[test]
fn a_read_before_the_same_clients_write_in_the_same_ms_is_not_after_it() {
    let mut h = stale_history(new_write(), 3);
    let read = h.remove(2);
    h[1] = at(new_write(), 3, 3);
    h.insert(
        1,
        Op {
            client: h[1].client,
            ..at(read, 3, 3)
        },
    );
    let verdict = check(&h, &finals_new(), &Context::none());
    assert!(verdict.stale_reads.is_empty(), "{verdict:?}");
    // The same two in the other order: the read comes after the write.
    h.swap(1, 2);
    let verdict = check(&h, &finals_new(), &Context::none());
    assert_eq!(verdict.stale_reads.len(), 1, "{verdict:?}");
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
