//! Unit and property tests of the write and read plans.
use super::*;
use proptest::prelude::*;

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// Runs a plan to the end, answering each call from `answers` (by
/// node; absent = stored), first in first out.
fn drive(input: WriteInput, answer_of: impl Fn(&Call) -> Answer) -> (WriteOutcome, Vec<Call>) {
    let mut plan = WritePlan::new(input);
    let mut queue: VecDeque<Call> = plan.first_calls().into();
    let mut made = Vec::new();
    while let Some(call) = queue.pop_front() {
        let answer = answer_of(&call);
        made.push(call.clone());
        if let Some(next) = plan.answer(&call, answer) {
            queue.push_back(next);
        }
    }
    (plan.finish(), made)
}

#[test]
fn all_up_background_sync_calls_w_and_queues_the_rest() {
    let input = WriteInput {
        replicas: names("n", 3),
        fallbacks: vec![],
        me: "n1".into(),
        down: vec![],
        required: 2,
        background_sync: true,
    };
    let mut plan = WritePlan::new(input);
    let first = plan.first_calls();
    assert_eq!(
        first.iter().map(|c| c.node.as_str()).collect::<Vec<_>>(),
        ["n1", "n0"]
    );
    assert_eq!(plan.queue_early(), ["n2"]);
    for call in &first {
        assert_eq!(plan.answer(call, Answer::Stored), None);
    }
    let out = plan.finish();
    assert!(out.reached);
    assert_eq!(out.pending, ["n2"]);
    assert!(out.queue_late.is_empty(), "n2 was queued early");
    assert!(out.failed.is_empty());
}

#[test]
fn a_failure_is_replaced_then_covered_by_a_fallback_hint() {
    let input = WriteInput {
        replicas: names("n", 3),
        fallbacks: vec!["f0".into()],
        me: "n0".into(),
        down: vec![],
        required: 3,
        background_sync: true,
    };
    let (out, made) = drive(input, |c| {
        if c.node == "n2" {
            Answer::Failed(FailureKind::Timeout)
        } else {
            Answer::Stored
        }
    });
    assert!(out.reached);
    assert_eq!(
        out.hints,
        [HintPlacement {
            owner: "n2".into(),
            holder: "f0".into()
        }]
    );
    assert!(out.sloppy);
    assert_eq!(made.len(), 4);
    assert_eq!(
        out.failed,
        [ReplicaFailure {
            node: "n2".into(),
            kind: FailureKind::Timeout
        }]
    );
}

#[test]
fn a_refused_version_is_evidence_against_the_coordinator_clock() {
    let input = || WriteInput {
        replicas: names("n", 3),
        fallbacks: vec![],
        me: "n0".into(),
        down: vec![],
        required: 2,
        background_sync: false,
    };
    // The peers refuse the coordinator's stamp: the write fails and says why.
    let (out, _) = drive(input(), |c| {
        if c.node == "n0" {
            Answer::Stored
        } else {
            Answer::Failed(FailureKind::VersionRefused)
        }
    });
    assert!(out.refused_as_future());
    // One peer refusing while another stores it: the write stands.
    let (out, _) = drive(input(), |c| {
        if c.node == "n1" {
            Answer::Failed(FailureKind::VersionRefused)
        } else {
            Answer::Stored
        }
    });
    assert!(out.reached && !out.refused_as_future());
    // A failure that says nothing of clocks.
    let (out, _) = drive(input(), |c| {
        if c.node == "n0" {
            Answer::Stored
        } else {
            Answer::Failed(FailureKind::Timeout)
        }
    });
    assert!(!out.reached && !out.refused_as_future());
}

#[test]
fn too_few_answers_is_unavailable_and_keeps_no_hint() {
    let input = WriteInput {
        replicas: names("n", 3),
        fallbacks: vec![],
        me: "c".into(),
        down: vec![],
        required: 2,
        background_sync: true,
    };
    let (out, _) = drive(input, |_| Answer::Failed(FailureKind::Unreachable));
    assert!(!out.reached);
    assert!(out.acks.is_empty() && out.local_hints.is_empty() && out.pending.is_empty());
    assert_eq!(out.failed.len(), 3);
}

#[test]
fn a_newer_version_on_a_replica_is_reported() {
    let input = WriteInput {
        replicas: names("n", 3),
        fallbacks: vec![],
        me: "n0".into(),
        down: vec![],
        required: 2,
        background_sync: false,
    };
    let (out, made) = drive(input, |c| {
        if c.node == "n1" {
            Answer::Newer
        } else {
            Answer::Stored
        }
    });
    assert_eq!(made.len(), 3, "background sync off calls every owner");
    assert_eq!(out.shadowed_by.as_deref(), Some("n1"));
}

#[test]
fn owners_believed_down_are_called_last_and_hinted_locally() {
    let input = WriteInput {
        replicas: names("n", 3),
        fallbacks: vec![],
        me: "n0".into(),
        down: vec!["n1".into()],
        required: 2,
        background_sync: false,
    };
    let (out, made) = drive(input, |_| Answer::Stored);
    assert_eq!(made.len(), 2, "n1 is skipped");
    assert!(out.reached);
    assert_eq!(out.local_hints, ["n1"]);
}

#[test]
fn read_repairs_names_stale_and_missing_answers() {
    use crate::core::hlc::Timestamp;
    use crate::core::record::Version;
    let rec = |ms| Record {
        version: Version::new(
            Timestamp {
                wall_ms: ms,
                logical: 0,
            },
            "n0",
        ),
        value: None,
        expires_at: None,
    };
    let answers = vec![
        ("a".to_owned(), Some(rec(5))),
        ("b".to_owned(), Some(rec(3))),
        ("c".to_owned(), None),
    ];
    let (newest, stale) = read_repairs(&answers);
    assert_eq!(newest, Some(rec(5)));
    assert_eq!(stale, ["b", "c"]);
    assert_eq!(read_repairs(&[("a".to_owned(), None)]), (None, vec![]));
}

fn answer_strategy() -> impl Strategy<Value = Answer> {
    prop_oneof![
        4 => Just(Answer::Stored),
        1 => Just(Answer::Newer),
        2 => Just(Answer::Failed(FailureKind::Timeout)),
        1 => Just(Answer::Failed(FailureKind::VersionRefused)),
    ]
}

proptest! {
    #[test]
    fn write_plan_laws(
        n in 1usize..6,
        extra in 0usize..4,
        me_index in 0usize..10,
        down_mask in proptest::collection::vec(any::<bool>(), 6),
        answers in proptest::collection::vec(answer_strategy(), 10),
        required_pick in 0usize..6,
        background_sync in any::<bool>(),
    ) {
        let replicas = names("n", n);
        let fallbacks = names("f", extra);
        let all: Vec<String> = replicas.iter().chain(&fallbacks).cloned().collect();
        let me = all.get(me_index).cloned().unwrap_or_else(|| "coordinator".into());
        let down: Vec<String> = replicas
            .iter()
            .zip(&down_mask)
            .filter(|(n, d)| **d && **n != me)
            .map(|(n, _)| n.clone())
            .collect();
        let required = 1 + required_pick % n;
        let answer_of = |c: &Call| {
            let i = all.iter().position(|x| *x == c.node).unwrap_or(0);
            answers[i]
        };
        let input = WriteInput {
            replicas: replicas.clone(),
            fallbacks,
            me: me.clone(),
            down,
            required,
            background_sync,
        };
        let (out, made) = drive(input, answer_of);
        // W acks ⇔ success.
        prop_assert_eq!(out.reached, out.acks.len() >= required);
        // Every owner ends in exactly one outcome, and the classes are disjoint.
        for owner in &replicas {
            let classes = [
                out.acks.contains(owner),
                out.hints.iter().any(|h| &h.owner == owner),
                out.local_hints.contains(owner),
                out.pending.contains(owner),
            ];
            prop_assert!(classes.iter().filter(|c| **c).count() <= 1, "{owner} in two classes");
            if out.owner_outcome(owner) == OwnerOutcome::Unreached {
                let failed = out.failed.iter().any(|f| &f.node == owner);
                let never_called = !made.iter().any(|c| &c.node == owner && c.hint_for.is_none());
                prop_assert!(failed || never_called);
            }
        }
        // The failures named are exactly the calls that failed.
        let failed_calls: Vec<&String> = made
            .iter()
            .filter(|c| matches!(answer_of(c), Answer::Failed(_)))
            .map(|c| &c.node)
            .collect();
        prop_assert_eq!(out.failed.iter().map(|f| &f.node).collect::<Vec<_>>(), failed_calls);
        // A remote hint for exactly the owners a fallback acknowledged.
        let covered: Vec<&String> = made
            .iter()
            .filter(|c| c.hint_for.is_some() && !matches!(answer_of(c), Answer::Failed(_)))
            .filter_map(|c| c.hint_for.as_ref())
            .collect();
        prop_assert_eq!(out.hints.iter().map(|h| &h.owner).collect::<Vec<_>>(), covered);
        // No node is called twice as a replica; hints only go to fallbacks.
        let mut as_replica: Vec<&String> = made.iter().filter(|c| c.hint_for.is_none()).map(|c| &c.node).collect();
        let total = as_replica.len();
        as_replica.sort();
        as_replica.dedup();
        prop_assert_eq!(as_replica.len(), total);
        prop_assert!(made.iter().all(|c| c.hint_for.is_none() || c.node.starts_with('f')));
        // A hint is never planned for a record nobody stored, nor on itself.
        if out.acks.is_empty() {
            prop_assert!(out.local_hints.is_empty() && out.queue_late.is_empty());
        }
        prop_assert!(!out.local_hints.contains(&me));
        // Sloppy exactly when an acknowledgement came from outside the
        // preference list (the coordinator too, when it was the fallback).
        prop_assert_eq!(out.sloppy, out.acks.iter().any(|a| !replicas.contains(a)));
        // A refused version counts against the coordinator's clock only
        // when the write failed and some replica refused it.
        let refused = made.iter().any(|c| answer_of(c) == Answer::Failed(FailureKind::VersionRefused));
        prop_assert_eq!(out.refused_as_future(), !out.reached && refused);
    }

    #[test]
    fn read_plan_asks_r_and_replaces_failures(
        n in 1usize..6,
        required_pick in 0usize..6,
        fails in proptest::collection::vec(any::<bool>(), 6),
    ) {
        let replicas = names("n", n);
        let required = 1 + required_pick % n;
        let mut plan = ReadPlan::new(&replicas, "n0", &[], required);
        let mut queue: VecDeque<String> = plan.first_calls().into();
        prop_assert_eq!(queue.len(), required);
        let mut asked = 0;
        while let Some(node) = queue.pop_front() {
            asked += 1;
            let i = replicas.iter().position(|x| *x == node).unwrap_or(0);
            if fails[i] {
                if let Some(next) = plan.failed(&node, FailureKind::Timeout) {
                    queue.push_back(next);
                }
            } else {
                plan.answered(&node);
            }
        }
        let ok = fails.iter().take(n).filter(|f| !**f).count();
        prop_assert_eq!(plan.reached(), ok >= required);
        prop_assert!(asked <= n);
    }
}
