//! The decisions of a coordinated write and read, as plain data.
//!
//! A [`WritePlan`] says which replicas a write calls first, what replaces
//! each failure (the next untried owner, else a fallback node beyond the
//! preference list that keeps a hint for the missing owner), which replicas
//! get a replication job while the calls run, and, once the answers are in,
//! what each owner's outcome is: acknowledged, hinted on a fallback, hinted
//! on the coordinator, pending on the queue, or unreached. A [`ReadPlan`]
//! does the same for a read, and [`read_repairs`] decides which replicas
//! answered with stale data. The driver (`node::write`, `node::read`) only
//! executes these: it makes the calls and feeds the answers back.
//!
//! Laws (property-tested below):
//! - every preference-list owner ends in exactly one [`OwnerOutcome`];
//! - the write succeeds exactly when at least W replicas acknowledged;
//! - the failures named are exactly the calls that failed, with their kind;
//! - a hint on a fallback is planned for exactly the owners a fallback covered;
//! - no node is called twice as a replica.

use std::collections::VecDeque;

use serde::Serialize;

use crate::core::quorum::{QuorumTally, TallyState};
use crate::core::record::Record;

/// Why a replica call failed, grouped by what it tells the coordinator.
/// The text a client sees is [`FailureKind::message`], never a peer's or
/// Redis's own error text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// No answer within the timeout.
    Timeout,
    /// Connection refused or reset: the node is not there.
    Unreachable,
    /// The node answered with an error status.
    Status,
    /// Too many calls already waiting for this replica.
    Overloaded,
    /// The replica's (or this node's) storage failed.
    Storage,
    /// The replica refused the version (too far ahead of its clock).
    VersionRefused,
    /// The answer could not be read, or did not match the request.
    BadAnswer,
    /// The node is not a member of the cluster.
    UnknownNode,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::Unreachable => "unreachable",
            FailureKind::Status => "status",
            FailureKind::Overloaded => "overloaded",
            FailureKind::Storage => "storage",
            FailureKind::VersionRefused => "version_refused",
            FailureKind::BadAnswer => "bad_answer",
            FailureKind::UnknownNode => "unknown_node",
        }
    }

    /// A short message safe to show a client.
    pub fn message(self) -> &'static str {
        match self {
            FailureKind::Timeout => "did not answer in time",
            FailureKind::Unreachable => "cannot be reached",
            FailureKind::Status => "answered with an error",
            FailureKind::Overloaded => "too many calls waiting",
            FailureKind::Storage => "its storage failed",
            FailureKind::VersionRefused => "refused the version (clock skew)",
            FailureKind::BadAnswer => "sent an unreadable answer",
            FailureKind::UnknownNode => "is not a member of the cluster",
        }
    }
}

/// One replica that did not acknowledge, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicaFailure {
    pub node: String,
    pub kind: FailureKind,
}

/// One call the driver must make: apply the record on `node`, as a replica
/// (`hint_for` = `None`) or as a fallback keeping a hint for an owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub node: String,
    pub hint_for: Option<String>,
}

/// What one apply call answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The record is stored (or the hint kept).
    Stored,
    /// The replica already holds a newer version: the record is stored
    /// nowhere there, and the write is shadowed.
    Newer,
    Failed(FailureKind),
}

/// Where a hint for an unreachable owner is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HintPlacement {
    pub owner: String,
    pub holder: String,
}

/// What the driver knows before the first call.
#[derive(Debug, Clone)]
pub struct WriteInput {
    /// The preference list, primary first.
    pub replicas: Vec<String>,
    /// Live nodes beyond the preference list, in ring order.
    pub fallbacks: Vec<String>,
    /// The coordinating node.
    pub me: String,
    /// Owners believed down (called last, see [`call_order`]).
    pub down: Vec<String>,
    /// W.
    pub required: usize,
    /// Background sync on: call W replicas and queue the others. Off: call
    /// every owner not believed down and wait for each.
    pub background_sync: bool,
}

/// The order in which a request calls replicas: this node first (a local
/// call is cheapest), then the others in ring order, and last those marked
/// down, which are called only when the others cannot make the quorum.
pub fn call_order(replicas: &[String], me: &str, down: &[String]) -> VecDeque<String> {
    let local = replicas.iter().filter(|n| *n == me);
    let up = replicas.iter().filter(|n| *n != me && !down.contains(n));
    let down_last = replicas.iter().filter(|n| *n != me && down.contains(n));
    local.chain(up).chain(down_last).cloned().collect()
}

/// A write in progress: feed it each call's answer, start the calls it returns.
#[derive(Debug, Clone)]
pub struct WritePlan {
    me: String,
    replicas: Vec<String>,
    down: Vec<String>,
    untried: VecDeque<String>,
    fallbacks: VecDeque<String>,
    /// Owners that still need a hint holder.
    missing: VecDeque<String>,
    called: Vec<String>,
    early: Vec<String>,
    first: Vec<Call>,
    tally: QuorumTally<FailureKind>,
    hints: Vec<HintPlacement>,
    shadowed_by: Option<String>,
}

/// Each owner's outcome once the write is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerOutcome {
    Acked,
    /// A fallback keeps its hint.
    HintedRemote,
    /// The coordinator is to keep its hint.
    HintedLocal,
    /// A replication job delivers to it.
    Pending,
    /// Failed, and nothing keeps the record for it (no replica stored it).
    Unreached,
}

/// The decided write: what to tell the client and what is left to do.
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    pub reached: bool,
    pub required: usize,
    pub replicas: Vec<String>,
    pub acks: Vec<String>,
    pub failed: Vec<ReplicaFailure>,
    /// Hints kept by fallbacks that acknowledged.
    pub hints: Vec<HintPlacement>,
    /// Owners for which the coordinator keeps a hint now.
    pub local_hints: Vec<String>,
    /// Owners a replication job delivers to.
    pub pending: Vec<String>,
    /// Of those, the ones not queued early (queue them now).
    pub queue_late: Vec<String>,
    /// A replica that already held a newer version.
    pub shadowed_by: Option<String>,
    pub sloppy: bool,
}

impl WriteOutcome {
    /// The outcome of one preference-list owner.
    pub fn owner_outcome(&self, owner: &str) -> OwnerOutcome {
        if self.acks.iter().any(|a| a == owner) {
            OwnerOutcome::Acked
        } else if self.hints.iter().any(|h| h.owner == owner) {
            OwnerOutcome::HintedRemote
        } else if self.local_hints.iter().any(|o| o == owner) {
            OwnerOutcome::HintedLocal
        } else if self.pending.iter().any(|o| o == owner) {
            OwnerOutcome::Pending
        } else {
            OwnerOutcome::Unreached
        }
    }
}

impl WritePlan {
    pub fn new(input: WriteInput) -> Self {
        let WriteInput {
            replicas,
            fallbacks,
            me,
            down,
            required,
            background_sync,
        } = input;
        // Skipping the owners believed down would leave too few: call them all.
        let down = if replicas.len().saturating_sub(down.len()) < required {
            Vec::new()
        } else {
            down
        };
        let mut untried = call_order(&replicas, &me, &down);
        let fan_out = if background_sync {
            required
        } else {
            replicas.len() - down.len()
        };
        let mut first = Vec::with_capacity(fan_out);
        let mut called = Vec::with_capacity(replicas.len());
        for _ in 0..fan_out {
            if let Some(node) = untried.pop_front() {
                called.push(node.clone());
                first.push(Call {
                    node,
                    hint_for: None,
                });
            }
        }
        // Background sync: the replicas beyond the first W get their job
        // queued while the quorum calls run. One that is later called to
        // replace a failure gets the record twice, which is harmless.
        let early = if background_sync {
            untried
                .iter()
                .filter(|n| !down.contains(n))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let tally = QuorumTally::new(required, replicas.len() + fallbacks.len());
        WritePlan {
            me,
            replicas,
            down,
            untried,
            fallbacks: fallbacks.into(),
            missing: VecDeque::new(),
            called,
            early,
            first,
            tally,
            hints: Vec::new(),
            shadowed_by: None,
        }
    }

    /// The calls to make first (taken once).
    pub fn first_calls(&mut self) -> Vec<Call> {
        std::mem::take(&mut self.first)
    }

    /// Replicas to queue a replication job for while the calls run.
    pub fn queue_early(&self) -> &[String] {
        &self.early
    }

    pub fn required(&self) -> usize {
        self.tally.required()
    }

    /// Records one call's answer; returns the call to start in its place
    /// when it failed and the quorum is still open.
    pub fn answer(&mut self, call: &Call, answer: Answer) -> Option<Call> {
        let failure = match answer {
            Answer::Stored => None,
            // Stored nowhere there, but the replica answered: it counts
            // toward W, and the driver stamps the write again above it.
            Answer::Newer => {
                if call.hint_for.is_none() {
                    self.shadowed_by = Some(call.node.clone());
                }
                None
            }
            Answer::Failed(kind) => Some(kind),
        };
        match (failure, &call.hint_for) {
            (None, None) => {
                self.tally.ack(call.node.clone());
                None
            }
            (None, Some(owner)) => {
                self.hints.push(HintPlacement {
                    owner: owner.clone(),
                    holder: call.node.clone(),
                });
                self.tally.ack(call.node.clone());
                None
            }
            (Some(kind), hint_for) => {
                self.tally.fail(call.node.clone(), kind);
                self.missing
                    .push_back(hint_for.clone().unwrap_or_else(|| call.node.clone()));
                self.replacement()
            }
        }
    }

    fn replacement(&mut self) -> Option<Call> {
        if self.tally.state() != TallyState::Waiting {
            return None;
        }
        if let Some(node) = self.untried.pop_front() {
            self.called.push(node.clone());
            return Some(Call {
                node,
                hint_for: None,
            });
        }
        if !self.missing.is_empty()
            && let Some(fallback) = self.fallbacks.pop_front()
        {
            let owner = self.missing.pop_front()?;
            return Some(Call {
                node: fallback,
                hint_for: Some(owner),
            });
        }
        None
    }

    /// Decides the write once every started call has answered.
    pub fn finish(mut self) -> WriteOutcome {
        let acks = self.tally.acks().to_vec();
        // Owners believed down and never called need a hint too.
        for node in &self.down {
            if !self.called.contains(node) && !self.missing.contains(node) {
                self.missing.push_back(node.clone());
            }
        }
        let covered: Vec<&String> = self.hints.iter().map(|h| &h.owner).collect();
        // A hint is kept only for a record some replica stored.
        let local_hints: Vec<String> = if acks.is_empty() {
            Vec::new()
        } else {
            self.replicas
                .iter()
                .filter(|n| {
                    !acks.contains(n)
                        && !covered.contains(n)
                        && self.missing.contains(n)
                        && **n != self.me
                })
                .cloned()
                .collect()
        };
        let pending: Vec<String> = self
            .replicas
            .iter()
            .filter(|n| !acks.contains(n) && !covered.contains(n) && !self.missing.contains(n))
            .cloned()
            .collect();
        let queue_late = if acks.is_empty() {
            Vec::new()
        } else {
            pending
                .iter()
                .filter(|n| !self.early.contains(n))
                .cloned()
                .collect()
        };
        let sloppy = self
            .hints
            .iter()
            .any(|h| h.holder != self.me && acks.contains(&h.holder));
        let failed = self
            .tally
            .failures()
            .iter()
            .map(|(node, kind)| ReplicaFailure {
                node: node.clone(),
                kind: *kind,
            })
            .collect();
        WriteOutcome {
            reached: self.tally.state() == TallyState::Reached,
            required: self.tally.required(),
            replicas: self.replicas,
            acks,
            failed,
            hints: self.hints,
            local_hints,
            pending,
            queue_late,
            shadowed_by: self.shadowed_by,
            sloppy,
        }
    }
}

/// A read in progress: R replicas first (this node first), each failure
/// replaced by the next untried one, so R + W > N still holds.
#[derive(Debug, Clone)]
pub struct ReadPlan {
    untried: VecDeque<String>,
    first: Vec<String>,
    tally: QuorumTally<FailureKind>,
}

impl ReadPlan {
    pub fn new(replicas: &[String], me: &str, down: &[String], required: usize) -> Self {
        let down: &[String] = if replicas.len().saturating_sub(down.len()) < required {
            &[]
        } else {
            down
        };
        let mut untried = call_order(replicas, me, down);
        let first = (0..required).filter_map(|_| untried.pop_front()).collect();
        ReadPlan {
            untried,
            first,
            tally: QuorumTally::new(required, replicas.len()),
        }
    }

    pub fn first_calls(&mut self) -> Vec<String> {
        std::mem::take(&mut self.first)
    }

    pub fn answered(&mut self, node: &str) {
        self.tally.ack(node.to_owned());
    }

    /// Records a failure; returns the replica to ask in its place.
    pub fn failed(&mut self, node: &str, kind: FailureKind) -> Option<String> {
        self.tally.fail(node.to_owned(), kind);
        if self.tally.state() == TallyState::Waiting {
            self.untried.pop_front()
        } else {
            None
        }
    }

    pub fn reached(&self) -> bool {
        self.tally.state() == TallyState::Reached
    }

    pub fn required(&self) -> usize {
        self.tally.required()
    }

    pub fn answered_nodes(&self) -> Vec<String> {
        self.tally.acks().to_vec()
    }

    pub fn failures(&self) -> Vec<ReplicaFailure> {
        self.tally
            .failures()
            .iter()
            .map(|(node, kind)| ReplicaFailure {
                node: node.clone(),
                kind: *kind,
            })
            .collect()
    }
}

/// The newest record among the answers, and the replicas that answered with
/// something older (or nothing) and should be sent it.
pub fn read_repairs(answers: &[(String, Option<Record>)]) -> (Option<Record>, Vec<String>) {
    let newest = answers.iter().filter_map(|(_, r)| r.clone()).max();
    let stale = match &newest {
        Some(newest) => answers
            .iter()
            .filter(|(_, r)| r.as_ref().is_none_or(|r| r < newest))
            .map(|(n, _)| n.clone())
            .collect(),
        None => Vec::new(),
    };
    (newest, stale)
}

#[cfg(test)]
mod tests {
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
}
