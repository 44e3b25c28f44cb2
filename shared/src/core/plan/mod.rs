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
//! - no node is called twice as a replica;
//! - a write is sloppy exactly when an acknowledgement came from outside
//!   the preference list (the coordinator included, when it is the fallback).

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
    /// The node is at a newer topology epoch (this node adopts it).
    StaleEpoch,
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
            FailureKind::StaleEpoch => "stale_epoch",
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
            FailureKind::StaleEpoch => "is at a newer cluster topology; retry",
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
    /// Whether this write failed and a replica refused its version as too
    /// far ahead of its own clock: evidence that the coordinator's clock is
    /// off. The coordinator then takes its own copy back instead of keeping
    /// it, hinting it or queueing it (a version beyond the bound must never
    /// become visible, nor win later once real time passes it).
    pub fn refused_as_future(&self) -> bool {
        !self.reached
            && self
                .failed
                .iter()
                .any(|f| f.kind == FailureKind::VersionRefused)
    }

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
        // Sloppy: an acknowledgement came from outside the preference list
        // (a fallback holding a hint) — the coordinator itself included,
        // when it is the fallback.
        let sloppy = acks.iter().any(|a| !self.replicas.contains(a));
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
mod tests;
